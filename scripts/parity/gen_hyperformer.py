"""Fixture from the authors' HyperFormer++ (rabeehk/hyperformer): their whole T5 model on a small T5 shape.

Their code (a snapshot of the repository at HYPERFORMER_COMMIT: PARITY_HYPERFORMER_DIR names a checkout, else one is
made in .cache/parity/ from PARITY_HYPERFORMER_MIRROR, a git dir holding the commit, or by cloning HYPERFORMER_REPO)
runs on the transformers it was written for, 3.5.1, in its own environment (`make parity-hyperformer` makes
.venv-hyperformer: transformers 3.5.1 without its dependencies, none of which the model needs, beside this
torch). Their settings are read from configs/hyperformer++.json with their own argument classes (its
`task_embedding_dim` is given twice; the last, 64, is the one read), their adapter config is filled in as their
finetune_t5_trainer.py fills it, their T5ForConditionalGeneration is built with it, and their freezing_params
decides what trains. The hypernetwork widths and the reduction factor are then made smaller (OVERRIDES) so the
fixture stays small; the test builds ours with the same.

The fixture, hyperformer-t5: the base weights (int8 multiples of 2^-6, exact in fp32), a batch of two rows (the
second padded), and under OUR parameter names (the name map says whose they were; the two tasks' embeddings, a
ParameterDict there, are the rows of one tensor here): the trained tensors as used (their init, perturbed so the
generated adapters move the logits), logits of the batch under each task, encoder states and loss under task 0,
every trained tensor's gradient under task 0, and the tensors after SGD_STEPS plain SGD steps at SGD_LR (the first
on task 0's loss, the next on task 1's: the reference's batches hold one task each).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import reference_checkout, save  # noqa: E402

HYPERFORMER_REPO = "https://github.com/rabeehk/hyperformer"
HYPERFORMER_COMMIT = "56b0f993eeec62f5a8c962704739912b5f039a9b"
# transformers 3.5.1's trainer imports a name torch has since removed; the model never reads it
torch.optim.lr_scheduler.SAVE_STATE_WARNING = ""

# T5 v1.0's shape at toy size, as our tiny T5 (ReLU FFN, head tied to the shared embeddings); inner attention
# width (heads × d_kv = 16) unlike d_model (32) and d_ff (48), so a transposed or misplaced tensor cannot fit.
CONFIG = dict(vocab_size=32, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=2,
              relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0)
# Ours are task_embedding_dim, projected_task_embedding_dim, task_hidden_dim and reduction_factor; the bottleneck
# (d_model // 8 = 4) and the widths 8, 8, 16 keep the fixture small and every tensor's two sides unequal.
OVERRIDES = {"task_embedding_dim": 8, "projected_task_embedding_dim": 8, "task_hidden_dim": 16,
             "reduction_factor": 8}
TASKS = ["t0", "t1"]
SCALE_LOG2 = -6
SEED = 0
SGD_LR, SGD_STEPS = 0.5, 2
NOISE = 0.2  # added to every trained tensor (the init's N(0, 0.01²) generators make adapters of little effect)


# importing the authors' code (transformers 3.5.1) leaves an empty `.lock` in the working directory: not ours
os.chdir(tempfile.mkdtemp(prefix="parity-hyperformer-"))
CHECKOUT = reference_checkout("HYPERFORMER", HYPERFORMER_REPO, HYPERFORMER_COMMIT, ["hyperformer"],
                              "hyperformer/adapters/adapter_modeling.py")
sys.path.insert(0, str(CHECKOUT))
# hyperformer/utils/utils.py (freezing_params) imports their data package for its task table, which needs the
# `datasets` library; nothing here reads it
sys.modules["hyperformer.data"] = types.SimpleNamespace(TASK_MAPPING={})
from hyperformer.adapters import AutoAdapterConfig  # noqa: E402
from hyperformer.third_party.models import T5Config, T5ForConditionalGeneration  # noqa: E402
from hyperformer.training_args import AdapterTrainingArguments, ModelArguments  # noqa: E402
from hyperformer.utils.utils import freezing_params  # noqa: E402

CONFIG_JSON = CHECKOUT / "hyperformer" / "configs" / "hyperformer++.json"
# the adapter settings finetune_t5_trainer.py copies from its arguments into the adapter config (lines 101-118)
EXTRA_ADAPTER_PARAMS = ("task_embedding_dim", "add_layer_norm_before_adapter", "add_layer_norm_after_adapter",
                        "reduction_factor", "hidden_dim", "non_linearity", "train_task_embeddings",
                        "projected_task_embedding_dim", "task_hidden_dim", "conditional_layer_norm",
                        "train_adapters_blocks", "unique_hyper_net", "unique_hyper_net_layer_norm",
                        "efficient_unique_hyper_net")
# Their parameter names -> ours (bench/layers/hyperformer.py), per stack.
STACK_NAMES = [(r"layer_id_embeddings\.weight", "layer_embeddings.weight"),
               (r"adapters_block_type\.weight", "block_embeddings.weight"),
               (r"task_hypernet\.task_embeding_generator\.(0|2)\.", r"code.\1."),
               (r"LayerNorm\.", "code_norm."),
               (r"down_sampler_hyper_net\.weight_generator\.0\.", "generators.down_weight."),
               (r"down_sampler_hyper_net\.bias_generator\.0\.", "generators.down_bias."),
               (r"up_sampler_hyper_net\.weight_generator\.0\.", "generators.up_weight."),
               (r"up_sampler_hyper_net\.bias_generator\.0\.", "generators.up_bias."),
               (r"post_layernorm_hypernet\.weight_generator\.", "generators.norm_weight."),
               (r"post_layernorm_hypernet\.bias_generator\.", "generators.norm_bias.")]
TASK_EMBEDDINGS = "hyperformer_tasks.embeddings"
# transformers 3.5.1's T5 gives the first decoder block's cross-attention a relative position bias of its own, which
# T5 does not have (transformers 4 dropped it; checkpoints' copies of it are never read): zero, it adds nothing
CROSS_ATTENTION_BIAS = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"


def settings() -> tuple[object, object, dict]:
    """Their adapter and model arguments read from hyperformer++.json as transformers 3.5.1's
    HfArgumentParser.parse_json_file reads it (whose constructor fails on Python 3.11's typing before it gets
    there), and the adapter settings as read (before ours)."""
    data = json.loads(CONFIG_JSON.read_text())
    adapter_args, model_args = (kind(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(
        kind)}}) for kind in (AdapterTrainingArguments, ModelArguments))
    return adapter_args, model_args, dataclasses.asdict(adapter_args)


def adapter_config(adapter_args):
    """finetune_t5_trainer.py lines 93-121, with OVERRIDES applied to the arguments first."""
    for key, value in OVERRIDES.items():
        setattr(adapter_args, key, value)
    config = AutoAdapterConfig.get(adapter_args.adapter_config_name)
    config.input_dim = CONFIG["d_model"]
    config.tasks = TASKS
    config.task_to_adapter = None
    config.task_to_embeddings = None
    for p in EXTRA_ADAPTER_PARAMS:
        assert hasattr(adapter_args, p) and hasattr(config, p), p
        setattr(config, p, getattr(adapter_args, p))
    config.device = "cpu"
    return config


def ours(name: str) -> str:
    if name.startswith("task_embedding_controller."):
        return TASK_EMBEDDINGS
    found = re.match(r"(encoder|decoder)\.adapter_layers_hyper_net\.(.*)$", name)
    if found is None:
        return name  # the model's layer norms keep their names
    for pattern, replacement in STACK_NAMES:
        if re.match(pattern, found[2]):
            return f"{found[1]}.hyperformer." + re.sub(pattern, replacement, found[2], count=1)
    raise KeyError(name)


def quantised(tensor: torch.Tensor) -> torch.Tensor:
    return torch.round(tensor * 2.0 ** -SCALE_LOG2).clamp(-127, 127).to(torch.int8)


def batch() -> dict[str, torch.Tensor]:
    """Two rows, the second padded in its input and its target (pad 0), as a seq2seq collator prepares them."""
    input_ids = torch.tensor([[5, 9, 17, 3, 22, 1], [12, 30, 7, 1, 0, 0]])
    target_ids = torch.tensor([[8, 14, 2, 1], [25, 1, 0, 0]])
    return {"input_ids": input_ids, "target_ids": target_ids}


def forward(model, inputs: dict, task: str):
    input_ids, target_ids = inputs["input_ids"], inputs["target_ids"]
    decoder_input_ids = torch.cat([torch.zeros_like(target_ids[:, :1]), target_ids[:, :-1]], dim=1)
    return model(input_ids=input_ids, attention_mask=(input_ids != 0).long(), decoder_input_ids=decoder_input_ids,
                 decoder_attention_mask=torch.ones_like(decoder_input_ids),
                 labels=target_ids.masked_fill(target_ids == 0, -100), return_dict=True, task=task)


def stacked(params: dict, trained: list[str], of) -> dict[str, torch.Tensor]:
    """`of(name, parameter)` per trained tensor under our names; the tasks' embeddings as the rows of one."""
    tensors = {ours(n): of(n, params[n]) for n in trained if not n.startswith("task_embedding_controller.")}
    tensors[TASK_EMBEDDINGS] = torch.stack([of(n, params[n]) for n in (
        f"task_embedding_controller.task_to_embeddings.{t}" for t in TASKS)])
    return tensors


def main() -> None:
    adapter_args, model_args, as_read = settings()
    config = adapter_config(adapter_args)
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(T5Config(**CONFIG, train_adapters=True), adapter_config=config).eval()
    freezing_params(model, types.SimpleNamespace(train_adapters=True), model_args, adapter_args)
    params = dict(model.named_parameters())
    trained = sorted(n for n, p in params.items() if p.requires_grad)
    hypernet = [n for n in trained if n.startswith("task_embedding_controller.") or "adapter_layers_hyper_net" in n]
    init_std = {n: float(t.std()) for n, t in stacked(params, hypernet, lambda n, p: p.detach()).items()}
    init_zero = sorted(n for n, t in stacked(params, hypernet, lambda n, p: p.detach()).items() if not t.any())
    stored, generator = {}, torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in hypernet or name.startswith(("encoder.embed_tokens", "decoder.embed_tokens", "lm_head")):
                continue  # the embeddings and the head are `shared.weight`, tied
            if name == CROSS_ATTENTION_BIAS:
                tensor.zero_()
                continue
            if "layer_norm" in name:  # T5's norms (which train too) moved off 1
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
            stored[f"base.{name}"] = quantised(tensor)
            tensor.copy_(stored[f"base.{name}"].float() * 2.0 ** SCALE_LOG2)
        for name in hypernet:
            params[name].add_(NOISE * torch.randn(params[name].shape, generator=generator))
    inputs = batch()
    tensors = {**stored, **inputs}
    tensors.update({f"used.{n}": t for n, t in stacked(params, trained, lambda n, p: p.detach().clone()).items()})
    outputs = {t: forward(model, inputs, t) for t in TASKS}
    for t, output in outputs.items():
        tensors[f"logits.{t}"] = output.logits.detach()
    tensors["encoder_states"] = outputs[TASKS[0]].encoder_last_hidden_state.detach()
    tensors["loss"] = outputs[TASKS[0]].loss.detach().reshape(1)
    optimizer = torch.optim.SGD([params[n] for n in trained], lr=SGD_LR)
    optimizer.zero_grad()
    losses = []
    for step in range(SGD_STEPS):
        output = forward(model, inputs, TASKS[step % len(TASKS)])
        output.loss.backward()
        if step == 0:
            tensors.update({f"grad.{n}": t for n, t in stacked(params, trained, lambda n, p: (
                p.grad if p.grad is not None else torch.zeros_like(p)).clone()).items()})
        optimizer.step()
        optimizer.zero_grad()
        losses.append(output.loss.detach())
    tensors["step_losses"] = torch.stack(losses)
    tensors.update({f"after.{n}": t for n, t in stacked(params, trained, lambda n, p: p.detach().clone()).items()})
    name_map = {n: ours(n) for n in trained}
    save("hyperformer-t5", tensors, {
        "what": "HyperFormer++ in the authors' T5 (their third_party/models/modeling_t5.py on transformers 3.5.1), "
                "configs/hyperformer++.json with the widths made smaller (overrides); tensors under our names",
        "reference": HYPERFORMER_REPO, "commit": HYPERFORMER_COMMIT, "config": CONFIG, "scale_log2": SCALE_LOG2,
        "tasks": TASKS, "settings_as_read": as_read, "overrides": OVERRIDES,
        "unfreeze_layer_norms": model_args.unfreeze_layer_norms, "unfreeze_lm_head": model_args.unfreeze_lm_head,
        "trained": sorted(set(name_map.values())), "trained_count": sum(params[n].numel() for n in trained),
        "name_map": name_map, "noise": NOISE, "init_std": init_std, "init_zero": init_zero,
        "optimizer": {"name": "sgd", "lr": SGD_LR, "steps": SGD_STEPS, "tasks": [
            TASKS[s % len(TASKS)] for s in range(SGD_STEPS)]},
        "batch": "attention_mask = input_ids != pad; labels = target with -100 at pads; decoder_input_ids = "
                 "[0] + target[:-1], decoder_attention_mask all ones; loss = the model's LM loss",
        "cross_attention_bias": f"{CROSS_ATTENTION_BIAS} (transformers 3.5.1's only) is zero, not stored",
        "layer_norms": "T5's layer norms train (unfreeze_layer_norms): used.* holds them as base.* does"})


if __name__ == "__main__":
    main()
