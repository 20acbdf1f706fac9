"""FISH mask and Child-Tuning_D fixtures from their authors' code, for scripts/parity/gen_masks.py:
- FISH (varunnair18/FISH, run_glue_sparse_update.py): calculate_the_importance_label and create_mask_gradient,
  called as they are; SparseUpdateTrainer.training_step's masking (gradient times mask after backward, before
  the trainer clips) is the one loop in `fishmask_fixture` that multiplies gradients by the masks.
- Child-Tuning (PKUnlp-icler/ChildTuning): ChildTuningDtrainer.calculate_fisher from ChildTuningD.py, called on a
  stand-in trainer; ChildTuningAdamW from ChildTuningOptimizer.py (mode ChildTuning-D), imported.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import save  # scripts/parity, on sys.path (gen_masks.py)
from masks_reference import DIMS, SEED, build_model, compile_from, meta_of, reference_file

FISH = dict(examples=12, keep_ratio=0.02, lr=1e-3, max_grad_norm=1.0, steps=2)
# max_grad_norm small enough that calculate_fisher's per-tensor clipping binds on this model; eps so small that
# ChildTuningAdamW (eps on the uncorrected √v) and torch's AdamW (eps on the corrected one) agree
CHILD = dict(examples=16, batch_size=4, reserve_p=0.3, lr=1e-3, max_grad_norm=0.01, eps=1e-20, steps=2)


def bert_rows(count: int, seed: int) -> list[dict]:
    """Examples of varying length (4 to 12 tokens) and their labels, as a dataset's rows."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        length = 4 + (i * 5) % 9
        ids = torch.randint(3, DIMS["vocab_size"], (length,), generator=generator)
        rows.append({"input_ids": ids, "labels": torch.tensor(i % 2), "idx": i})
    return rows


def padded(rows: list[dict], with_idx: bool = True) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])], mask[i, :len(r["input_ids"])] = r["input_ids"], 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([r["labels"] for r in rows])}
    return {**batch, "idx": torch.tensor([r["idx"] for r in rows])} if with_idx else batch


def recording_collator(order: list[list[int]]):
    def collate(rows):
        order.append([r["idx"] for r in rows])
        return padded(rows)
    return collate


def selected(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return tensor.detach().flatten()[mask.flatten().bool()]


def fishmask_fixture(base: str, rows: list[dict]) -> None:
    namespace = compile_from(
        reference_file("fish", "transformers/examples/text-classification/run_glue_sparse_update.py"),
        ["calculate_the_importance_label", "create_mask_gradient"], {"torch": torch, "DataLoader": DataLoader})
    model = build_model("bert")
    order: list[list[int]] = []
    torch.manual_seed(SEED + 3)
    masks = namespace["create_mask_gradient"](model, rows, recording_collator(order), FISH["examples"],
                                              FISH["keep_ratio"], "label", "square")
    torch.manual_seed(SEED + 3)  # the same shuffled order again, for the importance itself
    again: list[list[int]] = []
    loader = DataLoader(rows, batch_size=1, collate_fn=recording_collator(again), shuffle=True)
    fisher = namespace["calculate_the_importance_label"](model, loader, FISH["examples"], "cpu", "square")
    assert again == order, "the importance must be computed on the examples the mask was"
    params = dict(model.named_parameters())
    body = [n for n in params if "classifier" not in n]
    tensors = {f"fisher.{n}": fisher[n] for n in body}
    tensors.update({f"mask.{n}": masks[n].bool() for n in body})
    kept = int(sum(masks[n].sum() for n in body))
    batch = padded(rows, with_idx=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=FISH["lr"], weight_decay=0.0)
    for step in range(FISH["steps"]):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        for n, p in params.items():  # SparseUpdateTrainer.training_step: grad * mask, every parameter
            p.grad.data.copy_(p.grad.data * masks[n].data)
        torch.nn.utils.clip_grad_norm_(model.parameters(), FISH["max_grad_norm"])  # then the trainer clips
        if step == 0:
            tensors.update({f"grad.{n}": selected(p.grad, masks[n]) for n, p in params.items()})
        optimizer.step()
    tensors.update({f"step.{n}": selected(p, masks[n]) for n, p in params.items()})
    total = sum(p.numel() for p in params.values())
    head = sum(p.numel() for n, p in params.items() if "classifier" in n)
    save("fishmask-bert", tensors, {
        **meta_of("bert", base, "fish"), "method": "fishmask", "settings": FISH, "order": order,
        "kept": kept, "total": total, "head": head, "body": total - head,
        "mask_method": "label-square (run_sparse_updates.sh), batch size 1, all examples",
        "optimizer": f"torch AdamW (lr {FISH['lr']}, eps 1e-8, weight decay 0) on all examples padded as one batch, "
                     f"gradients masked then clipped to {FISH['max_grad_norm']}, {FISH['steps']} steps"})


class PercentileRecorder:
    """numpy for calculate_fisher, recording what np.percentile is given (the Fisher of every layer entry)."""

    def __init__(self):
        self.seen = None

    def __getattr__(self, name):
        return getattr(np, name)

    def percentile(self, values, q):
        self.seen = values.copy()
        self.polar = np.percentile(values, q)
        return self.polar


def child_tuning_fixture(base: str, rows: list[dict]) -> None:
    from tqdm import tqdm

    numpy = PercentileRecorder()
    calculate_fisher = compile_from(reference_file("childtuning", "ChildTuningD.py"),
                                    ["ChildTuningDtrainer.calculate_fisher"],
                                    {"torch": torch, "np": numpy, "DataLoader": DataLoader, "tqdm": tqdm})
    optimizer_file = reference_file("childtuning", "ChildTuningOptimizer.py")
    sys.path.insert(0, str(optimizer_file.parent))
    from ChildTuningOptimizer import ChildTuningAdamW

    model = build_model("bert")
    order: list[list[int]] = []
    trainer = SimpleNamespace(
        model=model, train_dataset=rows, data_collator=recording_collator(order), reserve_p=CHILD["reserve_p"],
        _prepare_inputs=lambda inputs: inputs,
        args=SimpleNamespace(per_device_train_batch_size=CHILD["batch_size"], dataloader_drop_last=False,
                             dataloader_num_workers=0, dataloader_pin_memory=False,
                             max_grad_norm=CHILD["max_grad_norm"]))
    torch.manual_seed(SEED + 4)
    by_param = calculate_fisher["calculate_fisher"](trainer)
    model.eval()
    params = dict(model.named_parameters())
    name_of = {id(p): n for n, p in params.items()}
    masks = {name_of[id(p)]: m for p, m in by_param.items()}
    layer_names = list(masks)
    sizes = [params[n].numel() for n in layer_names]
    fisher = torch.from_numpy(numpy.seen).split(sizes)
    tensors = {f"fisher.{n}": f.view_as(params[n]) for n, f in zip(layer_names, fisher)}
    tensors.update({f"mask.{n}": m for n, m in masks.items()})
    clipped = 0  # (batch, tensor) gradients calculate_fisher clipped: their norm exceeds max_grad_norm
    for batch in order:
        model.zero_grad()
        model(**padded([rows[i] for i in batch], with_idx=False)).loss.backward()
        clipped += sum(int(params[n].grad.norm() > CHILD["max_grad_norm"]) for n in layer_names)
    no_decay = ["bias", "LayerNorm.weight"]  # the authors' create_optimizer_and_scheduler; weight decay 0 here
    optimizer = ChildTuningAdamW(
        [{"params": [p for n, p in params.items() if not any(nd in n for nd in no_decay)], "weight_decay": 0.0},
         {"params": [p for n, p in params.items() if any(nd in n for nd in no_decay)], "weight_decay": 0.0}],
        mode="ChildTuning-D", lr=CHILD["lr"], eps=CHILD["eps"])
    optimizer.set_gradient_mask(by_param)
    batch = padded(rows, with_idx=False)
    model.train()
    for step in range(CHILD["steps"]):
        model.zero_grad()
        model(**batch).loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CHILD["max_grad_norm"])  # the trainer's clip
        optimizer.step()  # masks the layers' gradients in place, then AdamW
        if step == 0:
            full_norm = float(norm)
            tensors.update({f"grad.{n}": selected(p.grad, masks[n]) if n in masks else p.grad
                            for n, p in params.items()})
    tensors.update({f"step.{n}": selected(p, masks[n]) if n in masks else p for n, p in params.items()})
    kept = int(sum(m.sum() for m in masks.values()))
    save("child-tuning-bert", tensors, {
        **meta_of("bert", base, "childtuning"), "method": "child-tuning", "settings": CHILD, "order": order,
        "kept": kept, "layer_entries": sum(sizes), "polar": float(numpy.polar), "layer_params": layer_names,
        "clipped_in_fisher": {"clipped": clipped, "of": len(order) * len(layer_names)},
        "gradient_norm_step0": full_norm,
        "optimizer": f"ChildTuningAdamW (mode ChildTuning-D, lr {CHILD['lr']}, eps {CHILD['eps']}, weight decay 0) "
                     f"on all examples padded as one batch, after the trainer's clip of the whole gradient to "
                     f"{CHILD['max_grad_norm']}, {CHILD['steps']} steps"})

