"""(IA)³: learned vectors that rescale keys, values and the FFN's intermediate activations (peft)."""

from __future__ import annotations

from bench.methods.base import Method, register
from bench.methods.peft_common import peft_build

# Regular expressions (full match) so "output.dense" names the FFN output of each layer only, not
# the attention output, which a suffix match would also catch on BERT-style models. GPT-2 fuses
# queries, keys and values into one Conv1D (c_attn), so there the queries are rescaled too.
_BERT_FFN = r".*layer\.\d+\.output\.dense"
IA3_TARGETS = {
    "roberta": {"target_modules": rf".*layer\.\d+\.attention\.self\.(key|value)|{_BERT_FFN}",
                "feedforward_modules": _BERT_FFN},
    "bert": {"target_modules": rf".*layer\.\d+\.attention\.self\.(key|value)|{_BERT_FFN}",
             "feedforward_modules": _BERT_FFN},
    "t5": {"target_modules": r".*\.(k|v|wo)", "feedforward_modules": r".*\.wo"},
    "gpt2": {"target_modules": r".*\.(attn\.c_attn|mlp\.c_proj)", "feedforward_modules": r".*\.mlp\.c_proj"},
    "llama": {"target_modules": r".*\.(k_proj|v_proj|down_proj)", "feedforward_modules": r".*\.down_proj"},
}

register(
    Method("ia3", "additive", "(IA)³: learned rescaling of keys, values and FFN intermediate activations",
           "Liu et al. 2022, T-Few", peft_build("IA3Config"), targets=IA3_TARGETS,
           train={"lr": 3e-3}, mergeable=True),
)
