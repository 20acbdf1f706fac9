"""MAD-X's zero-shot transfer at test time (Pfeiffer et al. 2020, §3.3): each target language of a cross-lingual
task is scored with that language's adapters swapped in, the task adapter kept.

A cell whose method entry names `language_stages` ({language: masked-LM stage}, bench/plan/stages.py) holds the
stage cells' ids (`Cell.language_stages`); their saved states lie beside the one it started from (`init_dir`).
Before a split is scored its language's state is loaded (`load_language`), the training language's own for the
main split and for languages without a stage; the cell ends with its own back in place (what it saves). The stages'
states are what the fine-tuned model reads of other cells' beside its own (Adapted.composed: params.composed, sized
as they are loaded), as AdapterFusion's task adapters are; its training language's are in its own stored state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.methods.base import composed_size
from bench.methods.external import saved_state
from bench.methods.madx import language_state, load_language
from bench.plan.cellspec import Cell


def language_swaps(cell: Cell, adapted, device) -> Callable[[str], None] | None:
    """`before(split)`: puts the split's language adapters into the `adapted` model, whose `composed` becomes their
    sizes; None for a cell without language_stages. A stage's missing state raises before any scoring (the grid checked
    that each language is a target one)."""
    if not cell.language_stages:
        return None
    model = adapted.model
    folder = Path(cell.init_dir).parent if cell.init_dir else None  # the stages' folder
    states = {language: saved_state(str(folder / stage) if folder else None, stage, device)
              for language, stage in cell.language_stages.items()}
    own = {k: v.clone() for k, v in language_state(model).items()}
    adapted.composed = composed_size(list(states.values()))

    def before(split: str) -> None:
        load_language(model, states.get(split, own))

    return before
