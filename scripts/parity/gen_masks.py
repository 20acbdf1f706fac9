"""Fixtures from the authors' code for the mask-based methods (tests/test_parity_masks.py compares
bench/methods/propetl.py and bench/methods/fisher.py with them).

None of the references is a package, and none can be imported here whole, so each is read from a checkout at
its pinned commit (env var, else .cache/parity/<name>, cloned when missing) and the classes and functions it
names are compiled from its files as they are (scripts/parity/masks_reference.py):
- ProPETL (ChaosCodes/ProPETL, propetl-roberta): the shared Pfeiffer adapter and LoRA with their per-layer masks,
  wired into transformers' RoBERTa as the authors' fork wires them (scripts/parity/masks_propetl.py).
- FISH (varunnair18/FISH) and Child-Tuning_D (PKUnlp-icler/ChildTuning): their Fisher scores, masks and masked
  training steps on a small BERT (scripts/parity/masks_fisher.py).
Dropout is 0 (calculate_fisher switches to train mode, as its authors run it), so all is deterministic. The
model weights and inputs of each architecture go into one base fixture (`<family>-base-<arch>`) that the method
fixtures share.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py and the masks_* modules beside this file
from masks_fisher import CHILD, FISH, bert_rows, child_tuning_fixture, fishmask_fixture, padded  # noqa: E402
from masks_propetl import PROPETL, propetl_classes, propetl_fixture  # noqa: E402
from masks_reference import SEED, build_model, save_base  # noqa: E402


def main() -> None:
    ids = torch.tensor([[0, 5, 9, 13, 17, 21, 25, 2], [0, 6, 10, 14, 18, 2, 1, 1],
                        [0, 7, 11, 15, 19, 23, 27, 2], [0, 8, 12, 16, 2, 1, 1, 1]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 1).long(), "labels": torch.tensor([0, 1, 1, 0])}
    save_base("propetl-base-roberta", "roberta", build_model("roberta"), inputs, "propetl")
    ref = propetl_classes()
    for method in PROPETL:
        propetl_fixture(method, ref, "propetl-base-roberta", inputs)
    rows = bert_rows(max(FISH["examples"], CHILD["examples"]), SEED)
    save_base("fisher-base-bert", "bert", build_model("bert"), padded(rows, with_idx=False), "fish")
    fishmask_fixture("fisher-base-bert", rows[:FISH["examples"]])
    child_tuning_fixture("fisher-base-bert", rows[:CHILD["examples"]])


if __name__ == "__main__":
    main()
