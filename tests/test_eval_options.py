"""The dry-run's evaluation price counts every answer option rank classification scores: the template's answers,
else the task's label names (TaskSpec.answers)."""

from bench.cli import main
from bench.tasks.registry import builtin_tasks
from bench.tools.estimate import estimate

LABELS_ONLY = """tasks:
  - name: polarity-labels
    description: "synthetic polarity, its answers the label names (no verbalizers)"
    type: classification
    source: {synthetic: polarity, n_train: 4000, n_eval: 500, seed: 0}
    text: [sentence]
    label: label
    labels: [negative, positive]
    template: "review: {sentence} sentiment:"
    metrics: [accuracy]
"""


def test_a_task_without_verbalizers_is_priced_with_its_labels_as_options(write_suite, tmp_path, capsys):
    """Two labels, so rank classification scores two options a row (it was priced as one): on an encoder-decoder the
    encoder once and the decoder per option, 0.5 + 0.5 × 2 passes of one sequence per row."""
    (tmp_path / "tasks.yaml").write_text(LABELS_ONLY)
    path = write_suite(f"name: ev\nmethods: [lora]\nmodels: [tiny-t5]\ntasks: [polarity-labels]\n"
                       f"task_files: [{tmp_path / 'tasks.yaml'}]\n"
                       "train: {max_steps: 2, batch_size: 4, max_length: 16}\n")
    assert main(["run", "--suite", str(path), "--dry-run", "--tflops", "2", "--results", str(tmp_path / "r")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "method=lora " in line)
    rows = builtin_tasks()["synth-polarity"].source["n_eval"]
    forward = estimate("tiny-t5", "lora", 4, 16)["flops"]["forward_per_example"]
    assert f"eval FLOPs {round(rows * (0.5 + 0.5 * 2) * forward):.3g} ({rows} rows × the encoder once + 2 options' " \
           "decoder)" in line
