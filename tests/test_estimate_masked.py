"""`estimate` of the Fisher-masked methods (fishmask, child-tuning) without weights: their meta-device twins
(bench/methods/fisher.py) against closed forms, real CPU cells, real steps and a real Fisher selection."""

import pytest
import torch
from torch.utils import flop_counter

from bench import methods
from bench.cell.measure import weight_bytes
from bench.cell.probe import ATTENTION_FLOPS, LiveBytes, instrumented_step
from bench.cell.train import autocast_for
from bench.config import TrainConfig
from bench.errors import BadInput
from bench.methods.base import ApplyContext
from bench.tasks.registry import builtin_tasks
from bench.tools import estimate as estimating
from bench.tools.estimate import estimate
from bench.tools.fake_pass import fake_step
from tests import closed_forms
from tests.adapting import build_bundle, calibration_of

ROWS, LENGTH = 4, 16
# settings that keep the real selections short: 2 batches (child-tuning), 2 batches of 4 rows scored one by one
FAST = {"child-tuning": {"fisher_batches": 2}, "fishmask": {"fisher_samples": 8}}
SCORED_ROWS = {"child-tuning": 2 * ROWS, "fishmask": 8}


def real_selection(method: str, settings: dict | None = None, precision: str = "fp32", checkpointing: bool = False):
    """The tiny encoder's bundle, its calibration batches (unpadded: ROWS rows of LENGTH tokens, no attention mask,
    as the fake pass's) and a call applying the method (FAST, then `settings`) for real on the CPU with them, under
    the autocast a CPU cell of `precision` has, in a cell with gradient `checkpointing` or without."""
    bundle = build_bundle("tiny-encoder")
    chosen = methods.get(method)
    generator = torch.Generator().manual_seed(0)
    made = [{"input_ids": torch.randint(5, 100, (ROWS, LENGTH), generator=generator),
             "labels": torch.arange(ROWS) % 2} for _ in range(SCORED_ROWS[method] // ROWS)]

    def apply():
        return chosen.apply(bundle.model, chosen.resolve({**FAST[method], **(settings or {})}, bundle.arch, str),
                            ApplyContext(bundle, TrainConfig(batch_size=ROWS, max_length=LENGTH,
                                                             gradient_checkpointing=checkpointing), 1,
                                         calibration_of(lambda n: made[:n]), autocast=autocast_for("cpu", precision)))
    return bundle, made, apply


@pytest.mark.slow
@pytest.mark.parametrize("method", ["child-tuning", "fishmask"])
def test_tiny_twin_counts_are_the_closed_forms_and_a_real_cells(method, tmp_path):
    """The twin selects round(share·N) entries, as top_share_masks does; the cell records the same counts."""
    from bench.cell.recipe import run_cell
    from bench.plan import grid
    from bench.plan.suite import load_suite

    task = builtin_tasks()["synth-polarity"]
    params = estimate("tiny-encoder", method, ROWS, LENGTH, settings=FAST[method], task=task,
                      step_device="cpu")["params"]
    vocab = len(build_bundle("tiny-encoder").tokenizer)
    assert params["trainable"] == closed_forms.tiny_trainable(method, "roberta", vocab) + closed_forms.TINY_HEAD
    assert params["method"] == closed_forms.tiny_trainable(method, "roberta", vocab)
    suite = tmp_path / "s.yaml"
    overrides = ", ".join(f"{k}: {v}" for k, v in FAST[method].items())
    suite.write_text(f"name: s\nmethods: [{{name: {method}, overrides: {{{overrides}}}}}]\nmodels: [tiny-encoder]\n"
                     f"tasks: [synth-polarity]\nseeds: [1]\ntrain: {{max_steps: 1, batch_size: {ROWS}, "
                     f"max_length: {LENGTH}, max_eval_samples: 8}}\n")
    (cell,) = grid.expand(load_suite(str(suite)))
    record = run_cell(cell, quiet=True)
    assert record["status"] == "ok", record["error"]
    assert {k: record["params"][k] for k in params} == params


@pytest.mark.slow
@pytest.mark.parametrize("method", ["child-tuning", "fishmask"])
def test_roberta_base_twin_counts_are_the_closed_forms(method):
    """roberta-base on the meta device: child-tuning trains 30 % of the 12 layers' entries and everything outside
    them (the embeddings), fishmask 0.5 % of every entry but the head's; the 2-label head trains in full."""
    result = estimate("roberta-base", method, batch_size=1, seq_len=8, step_device="cpu")
    hidden, layers, ffn, vocab = 768, 12, 3072, 50265
    body = closed_forms.roberta_body(hidden, layers, ffn, vocab)
    in_layers = layers * closed_forms.roberta_layer(hidden, ffn)
    method_count = {"child-tuning": round(0.3 * in_layers) + body - in_layers,
                    "fishmask": round(0.005 * body)}[method]
    assert result["params"]["method"] == method_count
    assert result["params"]["trainable"] == method_count + closed_forms.roberta_classification_head(hidden)
    assert result["memory"]["mask_bytes"] == {"child-tuning": in_layers, "fishmask": body}[method]  # one bool each


def test_child_tuning_step_is_a_real_cpu_steps_where_every_layer_tensor_is_selected():
    """The twin trains every layer tensor: a real child-tuning whose masks select an entry of each (the premise of
    the upper bound; on the tiny model only when it keeps every entry: the keys' biases never get a gradient, softmax
    being blind to them, and its queries' and keys' weights score too little) saves, holds and computes what the
    twin's fake step does, to the byte. At the default share the real step, with fewer trained tensors, holds less."""
    settings = {**FAST["child-tuning"], "reserve_ratio": 1.0}
    spec, _, _, _, _, twin = estimating._built("tiny-encoder", "child-tuning", ROWS, LENGTH, "fp32", settings, "auto",
                                               False)
    ids = torch.randint(5, 100, (ROWS, LENGTH))
    batch = {"input_ids": ids, "labels": torch.zeros(ROWS, dtype=torch.long)}
    fake = fake_step(twin.model, spec.kind, ROWS, LENGTH)
    held = {}  # the bytes of the masks each real cell keeps through training, by whether every tensor has one
    for share, every in ((1.0, True), (0.3, False)):
        _, _, apply = real_selection("child-tuning", {"reserve_ratio": share})
        real = apply()
        held[every] = sum(mask.untyped_storage().nbytes() for _, mask in real.grad_masks)  # each its own bool
        in_layers = [n for n, _ in real.model.named_parameters() if ".layer." in n]
        assert (len(real.grad_masks) == len(in_layers)) == every
        real.model.train()
        measured = instrumented_step(real.model, batch)
        if every:
            assert weight_bytes(twin.model) == weight_bytes(real.model) and fake == measured
        else:
            assert measured.grad_bytes < fake.grad_bytes and measured.live_peaks[()] <= fake.live_peaks[()]
            assert measured.backward_flops < fake.backward_flops  # no weight gradient of an untrained tensor
            assert weight_bytes(real.model)["trainable_bytes"] < weight_bytes(twin.model)["trainable_bytes"]
    memory = estimate("tiny-encoder", "child-tuning", ROWS, LENGTH, settings=settings, step_device="cpu")["memory"]
    assert memory["activation_bytes"] == fake.activation_bytes and memory["grad_bytes"] == fake.grad_bytes
    # a tensor with no selected entry keeps no mask: the twin's, one per eligible tensor, bound the cell's from above
    assert memory["mask_bytes"] == held[True] > held[False]
    # the masks are held through training and the evaluation after it, whichever phase is the larger
    phases = [sum(memory[k] for k in ("weights_bytes", "optimizer_bytes", peak))
              for peak in ("step_peak_bytes", "eval_peak_bytes")]
    assert memory["predicted_peak_bytes"] == max(memory["selection_peak_bytes"], memory["mask_bytes"] + max(phases))
    assert memory["upper_bound"] and memory["upper_bound"][0].startswith("child-tuning masks every tensor")


@pytest.mark.parametrize("precision,checkpointing", [("fp32", False), ("bf16", False), ("fp32", True)])
@pytest.mark.parametrize("method", ["child-tuning", "fishmask"])
def test_selection_flops_and_peak_are_a_real_cpu_selections(method, precision, checkpointing):
    """flops.selection: the FLOPs counted over the real selection's passes (child-tuning: 2 batches; fishmask: 8 rows
    one by one). memory.selection_peak_bytes: the weights, the calibration batches and the most bytes the real
    selection's operators held at once (LiveBytes: the scores, each pass's activations and gradients and the squared
    gradient's temporaries, then the choice's masks, comparisons and counts), to the byte. Under bf16 autocast (a
    bf16 CPU cell) both as the cell's: the passes then save bf16 activations and the weights' bf16 copies. In a cell
    with gradient checkpointing the passes recompute each layer in backward, as its training steps do (before, the
    cell's ran without it, while the estimate priced them with it)."""
    result = estimate("tiny-encoder", method, ROWS, LENGTH, settings=FAST[method], step_device="cpu",
                      precision=precision, gradient_checkpointing=checkpointing)
    _, _, apply = real_selection(method, precision=precision, checkpointing=checkpointing)
    with flop_counter.FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:
        apply()
    assert result["flops"]["selection"] == counter.get_total_flops() > 0
    bundle, made, apply = real_selection(method, precision=precision, checkpointing=checkpointing)  # scores from 0
    with LiveBytes() as live:
        apply()
    calibration = sum(t.nbytes for batch in made for t in batch.values())
    attention_mask = SCORED_ROWS[method] * LENGTH * 8  # the estimate's batches carry one (int64), as collate's do
    memory = result["memory"]
    assert memory["selection_peak_bytes"] == \
        weight_bytes(bundle.model)["weights_bytes"] + calibration + attention_mask + live.peak


def test_the_dry_run_prices_the_selection_with_the_training_steps(write_suite, tmp_path, monkeypatch):
    """Before, both cells were `unknown` (the build asked for calibration batches): now their training FLOPs are the
    steps' and the selection's, and the runner's memory prediction says it is an upper bound."""
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.tools import plan_cost

    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))  # priced here, never read from a cache
    suite = write_suite("name: s\nmethods: [{name: child-tuning, overrides: {fisher_batches: 2}}, "
                        "{name: fishmask, overrides: {fisher_samples: 8}}]\nmodels: [tiny-encoder]\n"
                        f"tasks: [synth-polarity]\nseeds: [1]\ntrain: {{max_steps: 3, batch_size: {ROWS}, "
                        f"max_length: {LENGTH}}}\n")
    for cell in grid.expand(load_suite(str(suite))):
        flops, how = plan_cost.cell_flops(cell, {})
        priced = estimate("tiny-encoder", cell.method, ROWS, LENGTH, settings=FAST[cell.method],
                          task=cell.task)["flops"]
        assert flops == 3 * priced["train_step"] + priced["selection"] and "selecting" in how
        memory = plan_cost.predicted_memory(cell)
        assert memory["upper_bound"] and memory["predicted_peak_bytes"] >= memory["selection_peak_bytes"]


def test_a_composition_with_a_fisher_masked_part_is_priced_and_two_are_refused():
    """Before, the composition's twin reached count_params with meta masks and crashed (Tensor.item() on meta): the
    composition carries its part's closed-form count and selection; two selections are refused, naming why."""
    vocab = len(build_bundle("tiny-encoder").tokenizer)
    result = estimate("tiny-encoder", "compose(fishmask+adapter-pfeiffer)", 2, 8, step_device="cpu")
    assert result["params"]["method"] == sum(closed_forms.tiny_trainable(m, "roberta", vocab)
                                             for m in ("fishmask", "adapter-pfeiffer"))
    assert result["flops"]["selection"] > 0 and result["memory"]["upper_bound"]
    with pytest.raises(BadInput, match="prices one selection before training"):
        estimate("tiny-encoder", "compose(fishmask+child-tuning)", 2, 8)


def test_fishmasks_upper_bound_says_what_it_masks():
    """Before the fix it said "every parameter tensor but the head's" on a language model too, whose LM head it masks
    (mask_bytes is every parameter's there: llama-2-7b's params.total)."""
    lm = estimate("tiny-llama", "fishmask", ROWS, LENGTH, settings=FAST["fishmask"], task=builtin_tasks()["e2e"],
                  step_device="cpu")
    assert lm["memory"]["mask_bytes"] == lm["params"]["total"]
    # (an LM task's generation adds its own bound to the list)
    assert any(reason.startswith("fishmask masks every parameter tensor, the LM head's included")
               for reason in lm["memory"]["upper_bound"])
    classifier = estimate("tiny-encoder", "fishmask", ROWS, LENGTH, settings=FAST["fishmask"],
                          task=builtin_tasks()["synth-polarity"], step_device="cpu")
    assert classifier["memory"]["mask_bytes"] < classifier["params"]["total"]
    assert classifier["memory"]["upper_bound"][0].startswith("fishmask masks every parameter tensor but the task "
                                                             "head's (classifier)")


@pytest.mark.parametrize("method", ["child-tuning", "fishmask"])
def test_a_cells_fisher_is_scored_under_its_autocast(method, write_suite, tmp_path, monkeypatch):
    """Before the fix the scoring passes ran without the cell's autocast: a bf16 cell trained in bf16 but scored its
    Fisher in fp32 (every Linear's output fp32), at fp32's memory and, on a GPU, far below the bf16 rate the dry-run
    priced them at. A cell's setup runs no forward but the scoring passes': there every Linear's output is in the
    dtype the cell's training steps compute in (bench/cell/train.py compute_dtype)."""
    from bench.cell import recipe
    from bench.plan import grid
    from bench.plan.suite import load_suite

    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    outputs = []  # the dtype of each Linear's output, in the order the passes made them
    loaded = recipe.load_bundle

    def load_bundle(*args, **kwargs):
        bundle = loaded(*args, **kwargs)
        for module in bundle.model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda module, inputs, output: outputs.append(output.dtype))
        return bundle

    monkeypatch.setattr(recipe, "load_bundle", load_bundle)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = ", ".join(f"{k}: {v}" for k, v in FAST[method].items())
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        suite = write_suite(f"name: s\nmethods: [{{name: {method}, overrides: {{{overrides}}}}}]\n"
                            f"models: [tiny-encoder]\ntasks: [synth-polarity]\nseeds: [1]\n"
                            f"train: {{max_steps: 1, batch_size: {ROWS}, max_length: {LENGTH}, "
                            f"precision: {precision}}}\n", f"{precision}.yaml")
        (cell,) = grid.expand(load_suite(str(suite)))
        outputs.clear()
        recipe.setup(cell, device)
        assert outputs and set(outputs) == {dtype}, precision
