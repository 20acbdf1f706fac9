"""MAD-X end to end (bench/methods/madx.py): language adapters trained by masked-LM in stages
(bench/tasks/masked_lm.py), a task adapter trained on top of the training language's, and the target languages'
adapters swapped in to score them."""

import random

from bench.tasks.features import IGNORE
from bench.tasks.masked_lm import mask_tokens


def test_masking_follows_bert_s_recipe_by_hand():
    """20 ordinary tokens between two specials: round(0.15 × 20) = 3 are chosen, labelled with their ids; each
    becomes the mask (roll < 0.8), a random token (< 0.9) or stays, as the generator's draws say."""
    ids = [0] + list(range(10, 30)) + [2]
    out = mask_tokens(ids, {0, 2}, mask_id=4, vocab=50, draw=random.Random(7))
    draw = random.Random(7)
    chosen = sorted(draw.sample(list(range(1, 21)), 3))
    expected = list(ids)
    for i in chosen:
        roll = draw.random()
        expected[i] = 4 if roll < 0.8 else draw.randrange(50) if roll < 0.9 else ids[i]
    assert out["input_ids"] == expected
    assert out["labels"] == [ids[i] if i in chosen else IGNORE for i in range(len(ids))]
    assert mask_tokens([0, 2], {0, 2}, 4, 50, random.Random(0))["labels"] == [IGNORE, IGNORE]
    assert sum(v != IGNORE for v in mask_tokens([0, 11, 2], {0, 2}, 4, 50, random.Random(0))["labels"]) == 1
