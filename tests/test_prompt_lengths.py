"""A few-shot cell's dry-run price at its task's measured prompt length (bench/tools/prompt_lengths.py), against
closed forms: the templates filled and tokenised here, independently of bench/tasks/features.py, and `estimate`'s
FLOPs at the length that gives."""

import json
import math

import pytest

from bench.cli import main
from bench.tasks.registry import builtin_tasks
from bench.tiny import tokenizer as tiny_tokenizer
from bench.tools.estimate import estimate
from bench.tools.prompt_lengths import MEASURED_ROWS

SHOTS, BATCH, STEPS = 4, 8, 10


def mean_example_tokens(task, rows, kind: str, max_length: int) -> float:
    """One example's tokens, by hand: every template filled with each row and its gold answer, tokenised by the tiny
    tokenizer; an encoder-decoder reads the prompt (with </s>) and decodes the answer (with </s>), the longer priced;
    a decoder-only model reads <s>, the prompt and ' ' + the answer and </s> in one sequence."""
    tok = tiny_tokenizer()
    lengths = []
    for row in rows:
        for prompt in task.prompts:
            text, answer = task.render(prompt, row), task.answers(prompt, row)[task.gold(row)]
            if kind == "encoder-decoder":
                source = tok(text, truncation=True, max_length=max_length)["input_ids"]
                target = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                lengths.append(max(len(source), len(target)))
            else:
                ids = tok(text, add_special_tokens=False)["input_ids"] + tok(" " + answer, add_special_tokens=False)[
                    "input_ids"]
                lengths.append(1 + len(ids) + 1)
    return sum(lengths) / len(lengths)


def dry_run(write_suite, tmp_path, capsys, text: str, *extra: str) -> list[str]:
    path = write_suite(text)
    assert main(["run", "--suite", str(path), "--dry-run", "--tflops", "2", "--results", str(tmp_path / "r"),
                 *extra]) == 0
    return capsys.readouterr().out.splitlines()


def line_of(out: list[str], method: str) -> str:
    return next(line for line in out if f"method={method} " in line)


@pytest.mark.parametrize("model, kind, passes", [("tiny-t5", "encoder-decoder", 0.5 + 0.5 * 2),
                                                 ("tiny-gpt2", "decoder", 2.0)])
def test_few_shot_cells_are_priced_at_their_tasks_measured_prompts(write_suite, tmp_path, capsys, model, kind,
                                                                   passes):
    """synth-choice (two templates, two options a row): LoRA's 10 steps at BATCH sequences of the mean example's
    length (rounded up), its evaluation at 300 rows × the options' passes of one such sequence; zero-shot trains
    nothing and is evaluated at that length too; in-context learning's prompts hold SHOTS + 1 examples."""
    from bench.tasks.data import load_rows

    task = builtin_tasks()["synth-choice"]
    mean = mean_example_tokens(task, load_rows(task, "train")[:MEASURED_ROWS], kind, 256)
    out = dry_run(write_suite, tmp_path, capsys,
                  f"name: fs\nmethods: [lora, zero-shot, icl]\nmodels: [{model}]\ntasks: [synth-choice]\n"
                  f"train: {{max_steps: {STEPS}, batch_size: {BATCH}, max_length: 256, shots: {SHOTS}}}\n")
    rows = task.source["n_eval"]
    one, icl = math.ceil(mean), math.ceil((SHOTS + 1) * mean)
    assert one < icl < 256  # neither is the max_length the cells were priced at before
    lora = estimate(model, "lora", BATCH, one)["flops"]
    line = line_of(out, "lora")
    assert f"train FLOPs {STEPS * lora['train_step']:.3g} ({STEPS} steps)" in line
    assert f"eval FLOPs {round(rows * passes * lora['forward_per_example']):.3g} ({rows} rows × " in line
    assert f"priced at {one} tokens (an example of {mean:.1f} tokens, measured on {MEASURED_ROWS} rows × 2 " \
           "templates)" in line
    for method, length in (("zero-shot", one), ("icl", icl)):
        forward = estimate(model, "zero-shot", BATCH, length)["flops"]["forward_per_example"]
        line = line_of(out, method)
        assert "train FLOPs 0 (trains nothing)" in line
        assert f"eval FLOPs {round(rows * passes * forward):.3g} ({rows} rows × " in line
        assert f"priced at {length} tokens" in line
    assert f"priced at {icl} tokens ({SHOTS + 1} examples of {mean:.1f} tokens" in line_of(out, "icl")


@pytest.mark.shared_data
def test_real_rte_prompts_are_measured_from_the_data_dir(write_suite, tmp_path, capsys, shared_data):
    """GLUE RTE's shipped sample (--data-dir): its template filled with the real sentence pairs of the first
    MEASURED_ROWS training rows, on the tiny encoder-decoder."""
    task = builtin_tasks()["rte"]
    with open(shared_data / "glue" / "rte" / "train.jsonl") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(MEASURED_ROWS))]
    mean = mean_example_tokens(task, rows, "encoder-decoder", 512)
    out = dry_run(write_suite, tmp_path, capsys,
                  f"name: fs\nmethods: [lora]\nmodels: [tiny-t5]\ntasks: [rte]\n"
                  f"train: {{max_steps: {STEPS}, batch_size: {BATCH}, max_length: 512, shots: 32}}\n",
                  "--data-dir", str(shared_data))
    step = estimate("tiny-t5", "lora", BATCH, math.ceil(mean))["flops"]["train_step"]
    line = line_of(out, "lora")
    assert 40 < mean < 512 and f"priced at {math.ceil(mean)} tokens (an example of {mean:.1f} tokens" in line
    assert f"train FLOPs {STEPS * step:.3g} ({STEPS} steps)" in line


def test_few_shot_cells_whose_rows_are_on_the_hub_are_priced_at_max_length_saying_so(write_suite, tmp_path, capsys,
                                                                                     monkeypatch):
    """The plan downloads no dataset: CB's rows are on the hub, so its cells keep the max_length bound, and say why;
    a cell that is not few-shot says nothing of it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = dry_run(write_suite, tmp_path, capsys,
                  "name: fs\nmethods: [lora]\nmodels: [tiny-t5]\ntasks: [cb, synth-polarity]\n"
                  "train: {max_steps: 10, batch_size: 8, max_length: 64, shots: 4}\n")
    step = estimate("tiny-t5", "lora", 8, 64)["flops"]["train_step"]
    cb = next(line for line in out if "task=cb " in line)
    assert f"train FLOPs {10 * step:.3g} (10 steps)" in cb
    assert "priced at max_length 64 (its rows are on the hub; --data-dir measures a local copy)" in cb
    out = dry_run(write_suite, tmp_path, capsys, "name: full\nmethods: [lora]\nmodels: [tiny-t5]\n"
                  "tasks: [synth-polarity]\ntrain: {max_steps: 10, batch_size: 8, max_length: 64}\n")
    assert "priced at" not in line_of(out, "lora")


def test_a_measurement_is_cached_until_its_rows_template_or_max_length_change(write_suite, tmp_path, capsys,
                                                                             monkeypatch):
    """A dry-run again loads no tokenizer (a cached dry-run imports no transformers: test_imports.py): its prompt
    lengths come from the disk cache. New rows in the task's file, a new template or another max_length measure
    them again, at the new length."""
    import bench.models

    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    loads = []
    real_load = bench.models.load_tokenizer
    monkeypatch.setattr(bench.models, "load_tokenizer", lambda spec: loads.append(spec.name) or real_load(spec))

    def task_file(words: int, template: str) -> None:
        rows = [{"sentence": " ".join(["good"] * words), "label": "positive"}] * 4
        for split in ("train", "eval"):
            (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        (tmp_path / "tasks.yaml").write_text(
            "tasks:\n  - name: mine\n    type: classification\n"
            f"    source: {{files: {{train: {tmp_path / 'train.jsonl'}, eval: {tmp_path / 'eval.jsonl'}}}}}\n"
            f"    text: [sentence]\n    label: label\n    labels: [negative, positive]\n    template: '{template}'\n"
            "    metrics: [accuracy]\n")

    def priced(max_length: int = 64) -> int:
        out = dry_run(write_suite, tmp_path, capsys,
                      f"name: mine\nmethods: [lora]\nmodels: [tiny-gpt2]\ntasks: [mine]\n"
                      f"task_files: [{tmp_path / 'tasks.yaml'}]\n"
                      f"train: {{max_steps: 2, batch_size: 4, max_length: {max_length}, shots: 4}}\n")
        return int(line_of(out, "lora").split("; priced at ")[1].split(" tokens")[0])

    task_file(4, "{sentence} ?")
    first = priced()
    assert loads == ["tiny-gpt2"]
    assert priced() == first and len(loads) == 1  # cached: no tokenizer loaded
    task_file(8, "{sentence} ?")  # four words more a row: the file's size changes
    assert priced() == first + 4 and len(loads) == 2
    task_file(8, "good {sentence} ?")  # one word more in the template
    assert priced() == first + 5 and len(loads) == 3
    assert priced(max_length=first) == first and len(loads) == 4  # each example cut at the new max_length


def prompt_and_option_tokens(task, rows, kind: str) -> tuple[float, float]:
    """(a prompt's mean tokens, an example's longest answer option's), by hand over every row and template: an
    encoder-decoder's prompt with </s>, a decoder's with <s> before it; an option its answer's tokens (a decoder's
    after a space) and </s>."""
    tok = tiny_tokenizer()
    prompts, options = [], []
    for row in rows:
        for prompt in task.prompts:
            text = task.render(prompt, row)
            prompts.append(len(tok(text)["input_ids"]) if kind == "encoder-decoder" else
                           1 + len(tok(text, add_special_tokens=False)["input_ids"]))
            space = "" if kind == "encoder-decoder" else " "
            options.append(max(len(tok(space + answer, add_special_tokens=False)["input_ids"]) + 1
                               for answer in task.answers(prompt, row)))
    return sum(prompts) / len(prompts), sum(options) / len(options)


@pytest.mark.parametrize("model, kind", [("tiny-t5", "encoder-decoder"), ("tiny-gpt2", "decoder")])
def test_a_tfew_cell_is_priced_at_its_prompts_and_options_measured_apart(write_suite, tmp_path, capsys, model, kind):
    """A T-Few-objective cell's steps: on the encoder-decoder the encoder's rows at the prompts' measured length and
    the decoder's at the options' (before: every option's decoder row at the prompt's length, 23 tokens where an
    option is 2); on a decoder rows of the two summed, the option the last of them."""
    from bench.tasks.data import load_rows
    from bench.tools.estimate import step_flops
    from bench.tools.priced_task import OptionsObjective

    task = builtin_tasks()["synth-choice"]
    prompt_mean, option_mean = prompt_and_option_tokens(task, load_rows(task, "train")[:MEASURED_ROWS], kind)
    prompt, option = math.ceil(prompt_mean), math.ceil(option_mean)
    out = dry_run(write_suite, tmp_path, capsys,
                  f"name: fs\nmethods: [ia3]\nmodels: [{model}]\ntasks: [synth-choice]\n"
                  f"train: {{max_steps: {STEPS}, batch_size: {BATCH}, max_length: 256, shots: {SHOTS}, "
                  "objective: tfew, tfew_lm: tokens, unlikelihood_offset: 0.01}\n")
    line = line_of(out, "ia3")
    objective = OptionsObjective(2, "tokens", True, 0.01, option)
    length = prompt if kind == "encoder-decoder" else prompt + option
    step = step_flops(model, "ia3", BATCH, length, task=task, objective=objective)["train_step"]
    assert f"train FLOPs {STEPS * step:.3g} ({STEPS} steps)" in line
    means = f"prompts of {prompt_mean:.1f} tokens, an example's longest answer option of {option_mean:.1f}, " \
            f"measured on {MEASURED_ROWS} rows × 2 templates"
    assert (f"priced at {prompt} tokens a prompt, {option} an answer option ({means})" if kind == "encoder-decoder"
            else f"priced at {length} tokens a row, {option} of them the answer option's ({means})") in line
    bound = step_flops(model, "ia3", BATCH, length, task=task, objective=objective._replace(option_tokens=None))
    if kind == "encoder-decoder":
        assert option < prompt and step < bound["train_step"]


def test_a_tfew_cell_whose_rows_are_on_the_hub_keeps_the_bound_saying_so(write_suite, tmp_path, capsys, monkeypatch):
    """CB's rows are on the hub: its tfew cell is priced at max_length, prompt and answer options, and says why."""
    from bench.tools.estimate import step_flops
    from bench.tools.priced_task import OptionsObjective

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = dry_run(write_suite, tmp_path, capsys,
                  "name: fs\nmethods: [ia3]\nmodels: [tiny-t5]\ntasks: [cb]\n"
                  "train: {max_steps: 10, batch_size: 8, max_length: 64, shots: 4, objective: tfew}\n")
    step = step_flops("tiny-t5", "ia3", 8, 64, task=builtin_tasks()["cb"],
                      objective=OptionsObjective(3, "examples", True, 0.0))["train_step"]
    line = line_of(out, "ia3")
    assert f"train FLOPs {10 * step:.3g} (10 steps)" in line
    assert "priced at max_length 64, its answer options too (its rows are on the hub; --data-dir measures a local " \
           "copy)" in line
