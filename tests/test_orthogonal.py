"""OFT's and BOFT's two forms of one size (bench/methods/orthogonal.py, Method.one_nonzero): a block size, or a number
of blocks (OFT's `r`, BOFT's `boft_block_num`) with the block size 0, since block size × blocks = the layer's input
features. peft takes exactly one of them nonzero; before the fix the number-of-blocks form was refused ("must be
positive", the block size kept its positive default's sign), and both given reached peft's ValueError in the cell."""

import re

import pytest

from bench.cli import main
from bench.errors import BadInput
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.tiny import DEPTH, WIDTH
from bench.tools.estimate import estimate
from tests import closed_forms

# (method, the number-of-blocks form on the tiny encoder (64 wide), on roberta-base (768), the per-projection closed
# form of `blocks` blocks over `fan_in` inputs)
BLOCK_COUNTS = [
    ("oft", {"r": 4, "oft_block_size": 0}, {"r": 16, "oft_block_size": 0},
     lambda fan_in, blocks: closed_forms.oft(fan_in, blocks=blocks)),
    ("boft", {"boft_block_num": 4, "boft_block_size": 0}, {"boft_block_num": 8, "boft_block_size": 0},
     lambda fan_in, blocks: closed_forms.boft(fan_in, fan_in, block_num=blocks)),
]


def blocks_of(settings: dict) -> int:
    return settings.get("r") or settings["boft_block_num"]


def suite_of(method: str, settings: dict) -> str:
    overrides = ", ".join(f"{key}: {value}" for key, value in settings.items())
    return (f"name: orthogonal\nmethods:\n  - {{name: {method}, overrides: {{{overrides}}}}}\n"
            "models: [tiny-encoder]\ntasks: [synth-polarity]\nseeds: [1]\n"
            "train: {batch_size: 4, max_steps: 1, max_length: 16, max_eval_samples: 8}\n")


@pytest.mark.parametrize("method,tiny,base,closed_form", BLOCK_COUNTS)
def test_the_number_of_blocks_form_is_priced_and_trained_as_its_closed_form(write_suite, method, tiny, base,
                                                                           closed_form):
    """The method's parameters on q and v of every layer: on roberta-base (meta, `estimate`) 12 layers of 768 → 768,
    on the tiny encoder the estimate's and a real CPU cell's, DEPTH layers of WIDTH → WIDTH."""
    from bench.cell.recipe import run_cell

    assert estimate("roberta-base", method, batch_size=2, seq_len=8, settings=base)["params"]["method"] \
        == 2 * 12 * closed_form(768, blocks_of(base))
    expected = 2 * DEPTH * closed_form(WIDTH, blocks_of(tiny))
    assert estimate("tiny-encoder", method, batch_size=2, seq_len=8, settings=tiny)["params"]["method"] == expected
    (cell,) = grid.expand(load_suite(str(write_suite(suite_of(method, tiny)))))
    record = run_cell(cell, quiet=True)
    assert record["status"] == "ok", record["error"]
    assert {key: record["cell"]["config"]["method"]["config"][key] for key in tiny} == tiny
    assert record["params"]["method"] == expected


@pytest.mark.parametrize("method,settings,given", [
    ("oft", {"r": 4}, "r"),  # oft_block_size keeps its default 32: both nonzero
    ("oft", {"oft_block_size": 0}, "oft_block_size"),  # r keeps its default 0: neither
    ("oft", {"r": 0, "oft_block_size": 0}, "oft_block_size"),
    ("boft", {"boft_block_num": 8}, "boft_block_num"),  # boft_block_size keeps its default 4
    ("boft", {"boft_block_size": 0}, "boft_block_size"),
    ("boft", {"boft_block_size": 8, "boft_block_num": 8}, "boft_block_num"),
])
def test_both_or_neither_form_is_one_bad_input_naming_both_keys_before_any_work(write_suite, tmp_path, capsys,
                                                                                method, settings, given):
    pair = {"oft": ("oft_block_size", "r"), "boft": ("boft_block_size", "boft_block_num")}[method]
    merged = {**{"oft": {"oft_block_size": 32, "r": 0}, "boft": {"boft_block_size": 4, "boft_block_num": 0}}[method],
              **settings}
    which = "both" if all(merged[key] for key in pair) else "neither"
    path = write_suite(suite_of(method, settings))
    with pytest.raises(BadInput) as refused:
        grid.expand(load_suite(str(path)))
    message = refused.value.message
    # each value as it came: set, or the default (marked so, since the user did not write it)
    got = ", ".join(f"{key} = {merged[key]!r}{'' if key in settings else ' (its default)'}" for key in pair)
    assert f"'{pair[0]}' and '{pair[1]}' give one size two ways" in message
    assert message.endswith(f"; got {got}, {which} nonzero")
    assert f"(e.g. `{pair[1]}: N, {pair[0]}: 0` in the method's overrides)" in message  # YAML, as in the suite
    assert refused.value.where.startswith(f"{path}:")
    results = tmp_path / "results"
    assert main(["run", "--suite", str(path), "--results", str(results), "--quiet"]) == 2
    assert f"{which} nonzero" in capsys.readouterr().err and not results.exists()
    flags = [part for key, value in settings.items() for part in ("--set", f"{key}={value}")]
    assert main(["estimate", "--model", "tiny-encoder", "--method", method, *flags]) == 2
    said = capsys.readouterr().err
    assert f"--set {given}: '{pair[0]}' and '{pair[1]}'" in said and f"; got {got}, {which} nonzero" in said
    # spelled as the flags it came from; before the fix as YAML (`r: N with oft_block_size: 0`)
    assert f"(e.g. --set {pair[1]}=N --set {pair[0]}=0)" in said


@pytest.mark.parametrize("defaults,declared", [
    ({"block_size": 4}, "{'block_size': 4, 'blocks': '(absent)'}"),  # before the fix: a KeyError in resolve
    ({"block_size": 4, "blocks": 2}, "{'block_size': 4, 'blocks': 2}"),
    ({"block_size": 0, "blocks": 0}, "{'block_size': 0, 'blocks': 0}"),
])
def test_a_pair_is_checked_where_its_method_is_declared(defaults, declared):
    from bench.methods.base import Method

    def declare(defaults: dict) -> Method:
        return Method("paired", "reparameterized", "d", "p", lambda *args: None, defaults=defaults,
                      one_nonzero=(("block_size", "blocks"),))

    with pytest.raises(ValueError, match=f"method 'paired': one_nonzero pair \\('block_size', 'blocks'\\) needs "
                                         f"both keys in its defaults, exactly one of them nonzero; its defaults "
                                         f"give {re.escape(declared)}"):
        declare(defaults)
    assert declare({"block_size": 0, "blocks": 2}).resolve({}, "roberta", str)["blocks"] == 2


@pytest.mark.parametrize("method,settings,key", [
    ("oft", {"r": 3, "oft_block_size": 0}, "r"),  # before the fix: trained r = 2 (3,968 parameters), recorded r = 3
    ("oft", {"oft_block_size": 3}, "oft_block_size"),  # trained a block size of 4
    ("boft", {"boft_block_num": 3, "boft_block_size": 0}, "boft_block_num"),  # peft's ValueError in the cell
    ("boft", {"boft_block_size": 3}, "boft_block_size"),
])
def test_a_size_that_does_not_divide_a_layer_is_refused_naming_it_before_any_work(write_suite, capsys, method,
                                                                                  settings, key):
    """WIDTH = 64 input features of each adapted layer: 3 divides none. `estimate` (the meta device) refuses it,
    and a cell is `unsupported` with the same reason, not a record of another size or a peft ValueError."""
    from bench.cell.recipe import run_cell

    assert WIDTH == 64
    reason = (f"{key} = 3 does not divide the 64 input features of layer 'roberta.encoder.layer.0.attention.self."
              "query' (block size × blocks = its input features; peft ")
    valid = "): valid values there are the divisors of 64: 1, 2, 4, 8, 16, 32, 64"
    flags = [part for k, value in settings.items() for part in ("--set", f"{k}={value}")]
    assert main(["estimate", "--model", "tiny-encoder", "--method", method, *flags]) == 2
    said = capsys.readouterr().err
    assert f"--method: method '{method}' does not apply to tiny-encoder: {reason}" in said and valid in said
    (cell,) = grid.expand(load_suite(str(write_suite(suite_of(method, settings)))))
    record = run_cell(cell, quiet=True)
    assert record["status"] == "unsupported"
    assert reason in record["error"]["message"] and valid in record["error"]["message"]
