"""Fixtures from T-Few (r-three/t-few): (IA)³, BitFit, Compacter++ and prompt tuning on a small T5 v1.1-shaped model.

T-Few's own modules are imported from a snapshot of its repository at TFEW_COMMIT (its Config, which reads the
method's configs/*.json; its modify_transformer; its get_optimizer, which decides what trains and builds the SGD
optimiser): PARITY_TFEW_DIR names a checkout, else one is made in .cache/parity/ from PARITY_TFEW_MIRROR (a git
dir holding the commit) or by cloning TFEW_REPO. Its EncoderDecoder (pytorch-lightning, deepspeed) does not import
here: the batch is prepared as its training_step does without mc/unlikely losses (src/models/EncoderDecoder.py
lines 97-111: mask from the pad, labels -100 at pads, decoder input = 0 then the target shifted right, all-ones
decoder mask, loss = the model's LM loss).

One shared fixture, tfew-t5-base: the model's config, its base weights (quantised to multiples of 2^-6 and stored
as int8, so they are exact in fp32 and the fixture stays small), and the batch. Then per method, tfew-<method>:
the trained tensors at init and as used (perturbed where the init is trivial), logits, encoder states, loss, the
gradient of every trained tensor, the tensors after SGD_STEPS plain SGD steps at SGD_LR, the trained names and
the count as T-Few configures the method, and the name map from T-Few's names to ours.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import reference_checkout, save  # noqa: E402

from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

TFEW_REPO = "https://github.com/r-three/t-few"
TFEW_COMMIT = "114deced63ae722a368e06cb08ea956b20c393a6"

# T5 v1.1 / T0's shape at toy size: gated-GELU FFN (wi_0, wi_1, wo), untied LM head; inner attention width
# (heads × d_kv = 16) unlike d_model (32) and d_ff (48), so a transposed or misplaced vector cannot fit.
CONFIG = dict(vocab_size=32, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=2,
              relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False, use_cache=False,
              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
SCALE_LOG2 = -6
SEED = 0
SGD_LR, SGD_STEPS = 0.5, 2
PROMPT_SEED = SEED + 3  # before T-Few draws its prompts' vocabulary rows
# Shared by encoder and decoder: the duplicates of `shared.weight` are not stored.
TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


CHECKOUT = reference_checkout("TFEW", TFEW_REPO, TFEW_COMMIT, ["src", "configs"], "src/models/lora.py")
sys.path.insert(0, str(CHECKOUT))
from src.models import prompt_tuning as tfew_prompt_tuning  # noqa: E402
from src.models.modify_model import modify_transformer  # noqa: E402
from src.utils.Config import Config  # noqa: E402
from src.utils.get_optimizer import get_optimizer  # noqa: E402


def tfew_config(json_name: str, overrides: dict) -> Config:
    """T-Few's Config read from its configs/<json_name>, as its pl_train does, then our overrides; SGD at SGD_LR."""
    os.environ["CONFIG_PATH"] = str(CHECKOUT / "configs")
    os.environ["OUTPUT_PATH"] = tempfile.mkdtemp(prefix="tfew-config-")  # Config writes its config.json there
    config = Config(json_name)
    for key, value in {**overrides, "optimizer": "sgd", "lr": SGD_LR}.items():
        assert hasattr(config, key), key
        setattr(config, key, value)
    return config


def quantised(tensor: torch.Tensor) -> torch.Tensor:
    return torch.round(tensor * 2.0 ** -SCALE_LOG2).clamp(-127, 127).to(torch.int8)


def base_model() -> tuple[T5ForConditionalGeneration, dict[str, torch.Tensor]]:
    """T5's own init, layer norms moved off 1, every weight rounded to a multiple of 2^SCALE_LOG2."""
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(T5Config(**CONFIG)).eval()
    stored = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in TIED:
                continue
            if "layer_norm" in name:
                tensor.add_(0.1 * torch.randn_like(tensor))
            stored[name] = quantised(tensor)
            tensor.copy_(stored[name].float() * 2.0 ** SCALE_LOG2)
    return model, stored


def batch() -> dict[str, torch.Tensor]:
    """Two rows: the second padded in both its input and its target (pad 0), so masks and -100 labels matter."""
    return {"input_ids": torch.tensor([[5, 9, 17, 3, 22, 1], [12, 30, 7, 1, 0, 0]]),
            "target_ids": torch.tensor([[8, 14, 2, 1], [25, 1, 0, 0]])}


def tfew_forward(model, inputs: dict) -> object:
    """EncoderDecoder.training_step without mc/unlikely losses (src/models/EncoderDecoder.py lines 97-111)."""
    input_ids, target_ids, pad = inputs["input_ids"], inputs["target_ids"], CONFIG["pad_token_id"]
    attention_mask = (input_ids != pad).float()
    lm_labels = target_ids + -100 * (target_ids == pad).long()
    decoder_input_ids = torch.cat([torch.zeros_like(lm_labels[:, :1]), target_ids[:, :-1]], dim=1)
    decoder_attention_mask = (decoder_input_ids == decoder_input_ids).float()
    return model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                 decoder_attention_mask=decoder_attention_mask, labels=lm_labels)


def run(model, config: Config, inputs: dict, perturb) -> tuple[dict[str, torch.Tensor], list[str]]:
    """What trains (T-Few's get_optimizer), those tensors at init and as used, the outputs, the gradients, and the
    tensors after SGD_STEPS steps of T-Few's SGD optimiser."""
    optimizer, trained = get_optimizer(model, config)
    trained = sorted(trained)
    params = dict(model.named_parameters())
    tensors = {f"init.{n}": params[n].detach().clone() for n in trained}
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name in trained:
            perturb(name, params[name], generator)
    tensors.update({f"used.{n}": params[n].detach().clone() for n in trained})
    output = tfew_forward(model, inputs)
    output.loss.backward()
    tensors.update({"logits": output.logits, "encoder_states": output.encoder_last_hidden_state,
                    "loss": output.loss.reshape(1)})
    # a tensor T-Few's optimiser holds but the forward never reads (the decoder prompt when prompts are the
    # encoder's only) has no gradient
    tensors.update({f"grad.{n}": params[n].grad.clone() for n in trained if params[n].grad is not None})
    optimizer.step()
    losses = [output.loss.detach()]
    for _ in range(SGD_STEPS - 1):
        optimizer.zero_grad()
        step = tfew_forward(model, inputs)
        step.loss.backward()
        optimizer.step()
        losses.append(step.loss.detach())
    tensors["step_losses"] = torch.stack(losses)
    tensors.update({f"after.{n}": params[n].detach().clone() for n in trained})
    for name in trained:
        if f"grad.{name}" in tensors:
            assert not torch.equal(tensors[f"after.{name}"], tensors[f"used.{name}"]), f"{name} did not move"
    return tensors, trained


def add_noise(scale: float, only: str = ""):
    def perturb(name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        if only in name:
            tensor.add_(scale * torch.randn(tensor.shape, generator=generator))

    return perturb


def leave(name, tensor, generator) -> None:
    """The init is used as it is (it already moves the model off its base)."""


def ia3_names(trained: list[str]) -> dict[str, str]:
    """T-Few scales wi_1's output where peft's (IA)³ scales wo's input: the same vector, for
    gelu(wi_0 x) · (l ⊙ wi_1 x) = l ⊙ (gelu(wi_0 x) · wi_1 x), and dropout (elementwise) commutes with it."""
    return {n: "base_model.model." + re.sub(r"(wi_1|k|v)\.multi_lora_b$", lambda m: (
        "wo" if m[1] == "wi_1" else m[1]) + ".ia3_l.default", n) for n in trained}


COMPACTER_LEAVES = {"phm_rule": "rule.a", "W_left": "s", "W_right": "t", "b": "bias"}


def compacter_names(trained: list[str]) -> dict[str, str]:
    """T-Few's adapter wraps the FFN sublayer; ours hooks the FFN's output projection (the layer norms keep
    their names)."""
    return {n: re.sub(r"\.adapter\.(down|up)_sampler\.(\w+)$", lambda m: (
        f".DenseReluDense.wo.compacter.{m[1]}.{COMPACTER_LEAVES[m[2]]}"), n) for n in trained}


def generate_base(stored: dict, inputs: dict) -> None:
    save("tfew-t5-base", {**{f"base.{n}": t for n, t in stored.items()}, **inputs},
         {"what": "T-Few parity: a small T5 v1.1-shaped model's base weights (int8 k: weight = k * 2^scale_log2) "
                  "and the batch (input_ids, target_ids; pad 0)",
          "config": CONFIG, "model_class": "T5ForConditionalGeneration", "scale_log2": SCALE_LOG2,
          "tied_to_shared": list(TIED), "seed": SEED, "reference": TFEW_REPO, "commit": TFEW_COMMIT,
          "batch": "as T-Few's EncoderDecoder.training_step (src/models/EncoderDecoder.py lines 97-111): "
                   "attention_mask = input_ids != pad; labels = target with -100 at pads; decoder_input_ids = "
                   "[0] + target[:-1]; decoder_attention_mask all ones; loss = the model's LM loss"})


def method_meta(method: str, json_name: str, overrides: dict, trained: list, name_map: dict, tensors: dict,
                **extra) -> dict:
    counts = sum(tensors[f"init.{n}"].numel() for n in trained)
    configured = json.loads((CHECKOUT / "configs" / json_name).read_text())
    return {"method": method, "reference": TFEW_REPO, "commit": TFEW_COMMIT, "base": "tfew-t5-base",
            "tfew_config": f"configs/{json_name}", "tfew_settings": configured, "tfew_overrides": overrides,
            "optimizer": {"name": "sgd", "lr": SGD_LR, "steps": SGD_STEPS, "weight_decay": 0.0},
            "trained": trained, "trained_count": counts, "name_map": name_map, **extra}


def generate_ia3(base, inputs) -> None:
    model = modify_transformer(copy.deepcopy(base), config := tfew_config("ia3.json", {}))
    tensors, trained = run(model, config, inputs, add_noise(0.3))
    save("tfew-ia3", tensors, method_meta(
        "ia3", "ia3.json", {}, trained, ia3_names(trained), tensors,
        what="(IA)³ as T-Few configures it (src/models/lora.py LoRALinear, scaling_rank 1, rank 0, init ones; "
             "only multi_lora_b trains, which scales the outputs of k, v and wi_1); used = init + N(0, 0.3²)",
        reshape="T-Few's vectors are [out, 1]; peft's are [out, 1] for k and v and [1, d_ff] for wo: "
                "compare after reshaping to ours",
        ungated="on T5 v1.0's FFN (wi, wo: no wi_1) T-Few's lora_layers 'k|v|wi_1.*' match no FFN module; ours "
                "scales wo's input there (d_ff more per block); T-Few ran T0 (gated), as this model is"))


def generate_bitfit(base, inputs) -> None:
    configured = tfew_config("bitfit.json", {})
    model = modify_transformer(copy.deepcopy(base), configured)
    as_configured = sorted(n for n, _ in model.named_parameters()
                           if re.fullmatch(configured.trainable_param_names, n))
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    # ours trains the biases alone (docs/tasks.md: T-Few's BitFit also trains every layer norm): the parity run
    # is T-Few's BitFit with its trainable_param_names narrowed to the biases, so the steps compare too
    overrides = {"trainable_param_names": ".*bias"}
    model = modify_transformer(copy.deepcopy(base), config := tfew_config("bitfit.json", overrides))
    tensors, trained = run(model, config, inputs, add_noise(0.1))
    save("tfew-bitfit", tensors, method_meta(
        "bitfit", "bitfit.json", overrides, trained, {n: n for n in trained}, tensors,
        what="BitFit as T-Few adds it to T5 (src/models/bitfit.py: zero biases on q, k, v, o, wi_0, wi_1; its "
             "`w_o` names no module); used = init + N(0, 0.1²)",
        as_configured={"trained": as_configured, "count": sum(sizes[n] for n in as_configured),
                       "trainable_param_names": configured.trainable_param_names}))


def generate_compacter_pp(base, inputs) -> None:
    # configs/compacter_pp.json's reduction factor 32 leaves d_model 32 a bottleneck of 1, which T-Few's
    # PHMLinear refuses (not divisible by n = 4): 4 gives 8, two features per axis of the rule
    overrides = {"adapter_reduction_factor": 4}
    torch.manual_seed(SEED + 2)
    model = modify_transformer(copy.deepcopy(base), config := tfew_config("compacter_pp.json", overrides))
    # the init (the rules from N(0, 0.02²)) moves the logits by little; rules 10x larger make the adapters count
    tensors, trained = run(model, config, inputs, add_noise(0.2, only="phm_rule"))
    rules = torch.cat([tensors[f"init.{n}"].flatten() for n in trained if n.endswith("phm_rule")])
    save("tfew-compacter-pp", tensors, method_meta(
        "compacter-pp", "compacter_pp.json", overrides, trained, compacter_names(trained), tensors,
        what="Compacter++ as T-Few runs it (src/models/adapters.py T5LayerFFWithAdapter: h + x + up(relu(down(x))) "
             "with x = FFN(LN(h)); AdapterVariants/VariantLayers.py PHMLinear: W = sum_i rule_i (x) W_left_i "
             "W_right_i); used = init with N(0, 0.2²) added to the rules",
        init="PHMLinear.reset_parameters (VariantLayers.py lines 246-270): W_left/W_right per axis Glorot-uniform "
             "gain sqrt(2); with compacter_factorized_phm_rule false and c_init normal the rule is N(0, 0.02²) "
             "(compacter_phm_init_range only reaches factorised rules)",
        rule_init_std=float(rules.std())))


@contextlib.contextmanager
def vocabulary_sized_prompts():
    """T-Few's sample_embed draws rows 3..5002 of the vocabulary, past this one's 32 rows: rows 3..31 instead."""
    sample = tfew_prompt_tuning.sample_embed
    tfew_prompt_tuning.sample_embed = lambda embed, sample_size, start_idx, end_idx: sample(
        embed, sample_size, start_idx, min(end_idx, CONFIG["vocab_size"]))
    try:
        yield
    finally:
        tfew_prompt_tuning.sample_embed = sample


@vocabulary_sized_prompts()
def generate_prompt_tuning(base, inputs) -> None:
    """The part that corresponds to ours (peft, encoder prompts only) is T-Few's wrapper with its decoder prompt
    off; its default (prompts in encoder and decoder) is run on the same encoder prompt to measure the gap."""
    torch.manual_seed(PROMPT_SEED)
    overrides = {"prompt_tuning_decoder": False}
    model = modify_transformer(copy.deepcopy(base), config := tfew_config("prompt_tuning-10_prompts.json", overrides))
    tensors, trained = run(model, config, inputs, leave)
    prompts = {"encoder.prompt_embedding": "prompt_encoder.default.embedding.weight"}

    default_config = tfew_config("prompt_tuning-10_prompts.json", {})
    both = modify_transformer(copy.deepcopy(base), default_config)
    with torch.no_grad():
        both.encoder.prompt_embedding.copy_(tensors["used.encoder.prompt_embedding"])
        both.decoder.prompt_embedding.copy_(tensors["used.decoder.prompt_embedding"])
        default = tfew_forward(both, inputs)
    tensors.update({"default.logits": default.logits, "default.loss": default.loss.reshape(1)})
    shared = base.shared.weight
    from_vocab = all(any(torch.equal(row, v) for v in shared) for row in tensors["init.encoder.prompt_embedding"])
    save("tfew-prompt-tuning", tensors, method_meta(
        "prompt-tuning", "prompt_tuning-10_prompts.json", overrides, trained, prompts, tensors,
        what="prompt tuning as T-Few's src/models/prompt_tuning.py wraps T5, with prompt_tuning_decoder off (the "
             "encoder prompt: what ours, peft's with num_transformer_submodules 1, has); default.*: T-Few's "
             "default (Config: prompt_tuning_encoder and _decoder true) on the same prompts",
        receives_gradient=sorted(n[len("grad."):] for n in tensors if n.startswith("grad.")),
        num_prefix_emb=config.prompt_tuning_num_prefix_emb, init_rows_from_vocabulary=from_vocab,
        tfew_defaults={k: getattr(default_config, k) for k in ("prompt_tuning_encoder", "prompt_tuning_decoder")},
        init="T-Few: rows of the input embedding drawn uniformly from ids 3..5002 (here 3..31), encoder and "
             "decoder each; ours: peft's RANDOM init, N(0, 1)"))


@vocabulary_sized_prompts()
def generate_prompt_tuning_tfew(base, inputs) -> None:
    """T-Few's prompt tuning as its Config has it by default (prompt_tuning_encoder and _decoder true): ours,
    prompt-tuning-tfew. Seeded as generate_prompt_tuning: the same draws give the same prompts."""
    torch.manual_seed(PROMPT_SEED)
    model = modify_transformer(copy.deepcopy(base), config := tfew_config("prompt_tuning-10_prompts.json", {}))
    assert config.prompt_tuning_encoder and config.prompt_tuning_decoder
    tensors, trained = run(model, config, inputs, leave)
    # the ids sample_embed drew: replaying its two torch.randint calls from the same seed
    torch.manual_seed(PROMPT_SEED)
    drawn = [torch.randint(3, CONFIG["vocab_size"], (config.prompt_tuning_num_prefix_emb,)) for _ in range(2)]
    for stack, rows in zip(("encoder", "decoder"), drawn):
        assert torch.equal(tensors[f"init.{stack}.prompt_embedding"], base.shared.weight[rows])
    save("tfew-prompt-tuning-tfew", tensors, method_meta(
        "prompt-tuning-tfew", "prompt_tuning-10_prompts.json", {}, trained,
        {f"{stack}.prompt_embedding": f"{stack}.bench_prompt.weight" for stack in ("encoder", "decoder")}, tensors,
        what="prompt tuning as T-Few's src/models/prompt_tuning.py wraps T5 by default: prompts prepended to the "
             "encoder input (attention mask opened to them) and to the decoder input (decoder mask opened, the "
             "encoder mask opened for cross-attention, the prompt positions cut from the decoder's output)",
        seed=PROMPT_SEED, num_prefix_emb=config.prompt_tuning_num_prefix_emb,
        drawn_ids={stack: rows.tolist() for stack, rows in zip(("encoder", "decoder"), drawn)},
        receives_gradient=sorted(n[len("grad."):] for n in tensors if n.startswith("grad.")),
        init="rows of the input embedding at ids torch.randint(3, 5003) (here 3..31), the encoder's drawn first"))


def main() -> None:
    torch.set_grad_enabled(True)
    base, stored = base_model()
    inputs = batch()
    generate_base(stored, inputs)
    for generate in (generate_ia3, generate_bitfit, generate_compacter_pp, generate_prompt_tuning,
                     generate_prompt_tuning_tfew):
        generate(base, inputs)
        print(f"  {generate.__name__.removeprefix('generate_')}: written", flush=True)


if __name__ == "__main__":
    main()
