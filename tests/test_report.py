"""Report tables and plots from the hand-made records in tests/handmade.py (numbers worked out by hand)."""

import csv
import math

import pytest

from bench.cli import main
from bench.report import write_report
from bench.report.pareto import pareto_front
from tests.handmade import fewshot_records, params, record, survey_records, write_store


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_store(root / "results", survey_records() + fewshot_records())
    write_report("hand", root / "results", root / "reports")
    return root / "reports" / "hand"


def md_rows(text: str, title: str) -> list[str]:
    """The body rows of the Markdown table under heading `title`."""
    block = text.split(f"### {title}\n", 1)[1].split("\n\n### ", 1)[0]
    return [line for line in block.splitlines() if line.startswith("| ")][1:]


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_survey_table_markdown(report_dir):
    text = (report_dir / "report.md").read_text()
    rows = md_rows(text, "m1: methods compared")
    assert rows == [  # family order (FAMILIES), best per column bold, failures shown with footnotes
        "| baseline | full | 82.0 ± 2.0 (n=3) | 62.0 ± 3.5 (n=3) | 72.0 | ref. | 1.0K | 100.0% | 3.9 KB | 4.00 | 16.0 |",
        "| additive | prompt-tuning [1] | 50.0 (n=1) | unsupported [2] | – | – | 20 | 2.0% | 80 B | **1.00** | 6.0 |",
        "| partial | bitfit [3] | 70.0 ± 0.0 (n=3) | failed ×3 [4] | – | – | **10** | **1.0%** | **40 B** | **1.00** | **4.0** |",
        "| reparameterized | lora | **86.0 ± 1.0 (n=3)** | **71.0 ± 1.4 (n=2) [failed]** [5] | **78.5** | +6.5 | 50 "
        "| 4.8% | 200 B | 1.50 | 5.0 |",
    ]
    assert "| Family | Method | t1 (accuracy) | t2 (chrf) | Average | Δ avg vs full |" in text
    assert "Peak memory (GB, CPU RSS)" in text
    assert "[2] prompt-tuning on t2: Unsupported: cannot do generation" in text
    assert "[4] bitfit on t2: ValueError: boom" in text
    assert "[5] lora on t2: RuntimeError: loss is nan" in text
    assert "[1] prompt-tuning: no ok score on t2" in text


def test_survey_table_csv_holds_the_numbers(report_dir):
    rows = {r["Method"]: r for r in csv_rows(report_dir / "csv" / "survey-m1.csv")}
    full, lora, bitfit = rows["full"], rows["lora"], rows["bitfit"]
    assert float(full["t1 (accuracy)"]) == 82 and float(full["t1 (accuracy) std"]) == 2
    assert math.isclose(float(full["t2 (chrf) std"]), math.sqrt(12))  # sample std of 60, 60, 66
    assert float(lora["t2 (chrf)"]) == 71 and math.isclose(float(lora["t2 (chrf) std"]), math.sqrt(2))
    assert lora["t2 (chrf) n"] == "2" and lora["t2 (chrf) status"] == "failed"
    assert float(lora["Average"]) == 78.5 and float(lora["Δ avg vs full"]) == 6.5
    assert bitfit["t2 (chrf)"] == "" and bitfit["t2 (chrf) status"] == "failed ×3" and bitfit["Average"] == ""
    assert float(full["Peak memory (bytes, CPU RSS)"]) == 4 * 2**30  # largest over tasks, in bytes
    assert "Stored (bytes)" in full and not any("GB" in header for header in full)  # CSV headers name bytes
    assert float(full["Train time (s)"]) == 16  # mean over tasks of 12 and 20
    assert "loss is nan" in lora["notes"]


def test_memory_table_shows_breakdown_of_the_largest_peak(report_dir):
    rows = md_rows((report_dir / "report.md").read_text(), "m1: memory")
    assert rows[0] == "| baseline | full | t2 | 1.00 | 1.00 | 0.50 | 0.50 | 1.50 | 3.00 | 4.00 |"
    assert rows[-1] == "| reparameterized | lora | t2 | – | – | – | – | – | – | 1.50 |"  # t2 recorded no parts


def test_fewshot_table(report_dir):
    rows = md_rows((report_dir / "report.md").read_text(), "Few-shot: cost and accuracy")
    assert rows == ["| baseline | icl | t0 | 16 | 1.0e12 | **0** | 15.6 KB | 55.0 |",
                    "| additive | ia3 | t0 | 16 | **1.0e11** | 1.0e15 | **1.2 KB** | **75.0** |"]
    text = (report_dir / "report.md").read_text()
    assert "Inference FLOPs per example (cost model)" in text and "Accuracy (mean over tasks)" in text
    # the survey table of t0 has no full fine-tuning row, so no delta column
    assert "| Family | Method | cb (accuracy) | rte (accuracy) | Average | Method params |" in text


def test_latex_is_booktabs_and_escaped(report_dir):
    tex = (report_dir / "tables.tex").read_text()
    # survey and memory for m1 and t0, few-shot scores and cost
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 6
    assert r"82.0 $\pm$ 2.0 (n=3)" in tex and r"\textbf{86.0 $\pm$ 1.0 (n=3)}" in tex
    assert r"prompt-tuning$^{1}$" in tex and r"failed $\times$3$^{4}$" in tex
    assert "100.0\\%" in tex and "_" not in tex.replace(r"\_", "")


def test_plots_are_drawn_or_skipped_with_a_reason(report_dir):
    plots = sorted(p.name for p in (report_dir / "plots").iterdir())
    for name in ("params-m1", "peak-memory-m1", "memory-m1", "heatmap-m1", "few-shot"):
        assert f"{name}.png" in plots and f"{name}.svg" in plots
    assert (report_dir / "plots" / "params-m1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report_dir / "report.md").read_text()
    assert "Not shown (no ok score on every task): prompt-tuning, bitfit." in text
    assert "params-t0.png" not in plots  # few-shot cells are drawn against FLOPs, not in the full-data plots


def test_plots_skip_when_figures_are_missing(tmp_path):
    records = [r for r in survey_records() if r["cell"]["label"] in ("full", "lora")]
    for r in records:  # no memory and no time recorded at all, not even as nulls
        r["memory"], r["time"] = {}, {}
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md"])
    text = (tmp_path / "reports" / "hand" / "report.md").read_text()
    assert "m1: average score vs peak memory: not drawn: no method has both an average score and " \
           "memory.peak_bytes" in text
    assert "Memory breakdown: not drawn" in text and "Few-shot: score vs inference FLOPs: not drawn" in text
    assert (tmp_path / "reports" / "hand" / "plots" / "params-m1.png").exists()
    assert not (tmp_path / "reports" / "hand" / "index.html").exists()  # only the formats asked for


def test_a_report_rerun_redraws_only_the_figures_whose_records_changed(tmp_path):
    write_store(tmp_path / "results", survey_records() + fewshot_records())
    write_report("hand", tmp_path / "results", tmp_path / "reports")
    folder = tmp_path / "reports" / "hand" / "plots"
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.glob("*.*g")}
    write_report("hand", tmp_path / "results", tmp_path / "reports")
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.glob("*.*g")} == first
    # one more seed of lora on m1 moves m1's scores: the three figures that show them are redrawn; not m1's memory
    # breakdown (it shows lora on t2, its task with the largest peak), nor t0's figures
    write_store(tmp_path / "results", [record("lora", "reparameterized", "m1", "t1", 4, 90, params=params(1050, 50, 200),
                                              train_s=5)])
    write_report("hand", tmp_path / "results", tmp_path / "reports")
    redrawn = sorted(p.name for p in folder.glob("*.*g") if p.stat().st_mtime_ns != first[p.name][0])
    assert redrawn == sorted(f"{name}-m1.{ext}" for name in ("params", "peak-memory", "heatmap") for ext in ("png", "svg"))


def test_a_record_without_a_method_family_is_shown_as_unknown(tmp_path):
    """The record check lets cell.method_family be null; the report shows it as unknown ('–'), in tables,
    plot legends (next to a family outside the taxonomy) and the page, instead of crashing on NaN."""
    records = survey_records()
    for r in records:
        r["cell"]["method_family"] = {"lora": None, "full": "mystery"}.get(r["cell"]["label"], r["cell"]["method_family"])
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports")
    folder = tmp_path / "reports" / "hand"
    assert "| – | lora | **86.0 ± 1.0 (n=3)** |" in (folder / "report.md").read_text()
    assert (folder / "plots" / "params-m1.png").is_file()
    assert '"family": "nan"' not in (folder / "index.html").read_text()


def test_pareto_front_on_hand_made_points():
    points = [(1, 10), (2, 20), (2, 15), (3, 20), (0.5, 5), (4, 30), (4, 30), (5, 25)]
    # (2,15) and (3,20) lose to (2,20); (5,25) to (4,30); identical points both stay
    assert pareto_front(points) == [4, 0, 1, 5, 6]
    assert pareto_front([]) == []
    assert pareto_front([(1, 1)]) == [0]


def test_unknown_format_exits_2_naming_the_flag(tmp_path, capsys):
    write_store(tmp_path, survey_records())
    assert main(["report", "--suite", "hand", "--results", str(tmp_path), "--format", "md,pdf"]) == 2
    err = capsys.readouterr().err
    assert "--format" in err and "'pdf'" in err and "csv, html, md, tex" in err


def test_fewshot_scores_are_median_and_iqr_over_seeds(tmp_path):
    p = params(3000, 30, 1200)
    scores = {1: 70, 2: 72, 3: 60, 4: 80}  # median 71; quartiles 67.5 and 74 (linear) -> IQR 6.5
    records = [record("ia3", "additive", "t0", "rte", seed, s, params=p, shots=32) for seed, s in scores.items()]
    records.append(record("ia3", "additive", "t0", "cb", 1, status="failed", error=("ValueError", "boom"), params=p,
                          shots=32))
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md"])
    rows = md_rows((tmp_path / "reports" / "hand" / "report.md").read_text(), "Few-shot scores on t0")
    assert rows == ["| additive | ia3 (32-shot) | failed [1] | **71.0 (IQR 6.5, n=4)** |"]


def test_records_of_an_older_configuration_are_not_averaged_in(tmp_path):
    old = record("lora", "reparameterized", "m1", "t1", 1, 50, params=params(100, 10, 40))
    new = record("lora", "reparameterized", "m1", "t1", 1, 90, params=params(100, 10, 40))
    old["cell"]["id"], old["created_at"] = "old-config", "2026-01-01T00:00:00+00:00"
    new["cell"]["id"], new["created_at"] = "new-config", "2026-02-01T00:00:00+00:00"  # e.g. after an lr change
    write_store(tmp_path / "results", [old, new])
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md"])
    text = (tmp_path / "reports" / "hand" / "report.md").read_text()
    assert "| reparameterized | lora | **90.0 (n=1)** |" in text
    assert "old-config (lora · m1 · t1 · seed 1" in text and "superseded" in text


def test_csv_headers_name_the_unit_they_hold(report_dir):
    for name in ("memory-m1.csv", "survey-m1.csv"):
        headers = list(csv_rows(report_dir / "csv" / name)[0])
        sized = [h for h in headers if "(" in h and ("B" in h.split("(", 1)[1] or "bytes" in h)]
        assert sized and all("(bytes" in h for h in sized), headers


def test_point_labels_never_overlap_on_a_crowded_plot():
    import itertools

    from matplotlib.figure import Figure

    from bench.report.labels import place_labels

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    # twelve methods in a tight cluster, as LoRA variants and adapters land on one score-vs-params plot
    points = [(1e5 * (1 + 0.04 * i), 80 + 0.3 * (i % 4)) for i in range(12)]
    labels = ["lora", "loraadapter-pfeiffer", "adapter-pfeiffer", "adapter-houlsby", "rslora", "dora",
              "pissa", "adalora", "vera", "ia3", "prefix-tuning", "prompt-tuning"]
    ax.scatter(*zip(*points))
    ax.set_xscale("log")
    notes = place_labels(ax, points, labels)
    renderer = fig.canvas.get_renderer()
    boxes = [n.get_window_extent(renderer) for n in notes]
    assert len(boxes) == 12 and [n.get_text() for n in notes] == labels
    clashes = [(labels[i], labels[j]) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2) if a.overlaps(b)]
    assert not clashes, clashes


def test_tables_list_tasks_in_the_suite_order(tmp_path):
    from bench.report.aggregate import aggregate
    from bench.run.store import load_frame
    from tests.handmade import survey_records, write_store

    frame, _ = load_frame(write_store(tmp_path / "results", survey_records()), "hand")
    tasks = sorted(set(frame["task"]))
    assert len(tasks) >= 2
    assert list(dict.fromkeys(aggregate(frame)["task"])) == tasks  # no suite: alphabetical
    assert list(dict.fromkeys(aggregate(frame, tasks[::-1])["task"])) == tasks[::-1]


def test_memory_table_shows_the_training_rate_and_mfu_where_recorded(tmp_path):
    records = survey_records()
    for r in records:
        if r["cell"]["label"] == "full" and r["status"] == "ok":
            r["time"].update(train_flops_per_s=2.5e12, mfu=0.42)
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md", "csv"])
    text = (tmp_path / "reports" / "hand" / "report.md").read_text()
    rows = md_rows(text, "m1: memory")
    assert rows[0] == "| baseline | full | t2 | 1.00 | 1.00 | 0.50 | 0.50 | 1.50 | 3.00 | 4.00 | 2.500 | 42.0 |"
    assert rows[-1].endswith("| 1.50 | – | – |")  # lora recorded neither
    (full,) = [r for r in csv_rows(tmp_path / "reports" / "hand" / "csv" / "memory-m1.csv") if r["Method"] == "full"]
    assert float(full["Train FLOP/s"]) == 2.5e12 and float(full["MFU (ratio)"]) == 0.42
    write_store(tmp_path / "plain", survey_records())
    write_report("hand", tmp_path / "plain", tmp_path / "plain-reports", ["md"])
    assert "Not recorded: Train TFLOP/s, MFU (MFU needs a CUDA device" in \
        (tmp_path / "plain-reports" / "hand" / "report.md").read_text()


def test_fewshot_cost_table_uses_the_median_and_zero_shot_uses_no_shots(tmp_path):
    """One statistic for both few-shot tables (median over seeds); zero-shot sees 0 examples and stores 0 B,
    whatever `shots` the grid gave its cell."""
    p = params(3000, 30, 1200)
    scores = {1: 70, 2: 72, 3: 60, 4: 80}  # mean 70.5, median 71
    records = [record("ia3", "additive", "t0", "rte", seed, s, params=p, shots=32) for seed, s in scores.items()]
    records.append(record("zero-shot", "baseline", "t0", "rte", 1, 55, params=params(3000, 0, 0), shots=32))
    records.append(record("icl", "baseline", "t0", "rte", 1, 58, params=params(3000, 0, 0), shots=32))
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md"])
    rows = md_rows((tmp_path / "reports" / "hand" / "report.md").read_text(), "Few-shot: cost and accuracy")
    zero = next(r for r in rows if "zero-shot" in r)
    ia3 = next(r for r in rows if "| ia3 |" in r)
    assert "| t0 | 0 |" in zero and "| **0 B** |" in zero
    assert "| t0 | 32 |" in ia3 and ia3.endswith("| **71.0** |")
    text = (tmp_path / "reports" / "hand" / "report.md").read_text()
    assert "zero-shot (32-shot)" not in text and "| zero-shot |" in text  # in every table (it was in four)
    assert "ia3 (32-shot)" in text and "icl (32-shot)" in text  # in-context learning does see its shots


def test_survey_table_counts_methods_as_papers_do_and_names_the_head(tmp_path):
    """LoRA r=8 on RoBERTa-base's query and value is 294,912 parameters in the papers; the head (592,130
    for two labels, trained with it) is named in the caption, not added to the method."""
    lora = params(125_534_978, 294_912 + 592_130, 4_000_000, head=592_130)
    write_store(tmp_path / "results", [record("lora", "reparameterized", "roberta-base", "t1", 1, 94.0,
                                              params=lora)])
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md"])
    text = (tmp_path / "reports" / "hand" / "report.md").read_text()
    (row,) = md_rows(text, "roberta-base: methods compared")
    assert "| **294.9K** | **0.236%** |" in row  # the only row: best in every column
    assert "The task head (592.1K parameters) trains too." in text


def test_inference_table_shows_latency_in_ms_and_the_merged_model_where_recorded(tmp_path):
    """Means over the ok cells: full (t1 10 ms, t2 30 ms -> 20 ms; nothing merged), lora (4 ms unmerged on both
    tasks, 2 ms merged; best marked); inference FLOPs were not recorded (a dash); the caption names the device
    the records were measured on."""
    records = survey_records()
    for r in records:
        if r["status"] == "ok" and r["cell"]["label"] in ("full", "lora"):
            slow = r["cell"]["label"] == "full" and r["cell"]["task"] == "t2"
            r["time"].update(infer_latency_s=0.030 if slow else 0.010 if r["cell"]["label"] == "full" else 0.004,
                             infer_examples_per_s=100.0 if r["cell"]["label"] == "full" else 150.0)
            if r["cell"]["label"] == "lora":
                r["time"].update(infer_latency_merged_s=0.002, infer_examples_per_s_merged=200.0)
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md", "csv"])
    text = (tmp_path / "reports" / "hand" / "report.md").read_text()
    assert "## Inference speed" in text and "Measured on cpu;" in text
    rows = md_rows(text, "m1: inference speed")
    full = next(r for r in rows if "| full |" in r)
    lora = next(r for r in rows if "| lora |" in r)
    assert "| full | 20.00 | 100.0 | – | – | – |" in full and "| **4.00** | **150.0** | **2.00** | **200.0** |" in lora
    assert any("| bitfit | – | – | – | – |" in r for r in rows)  # recorded none: dashes, never zeros
    (csv_lora,) = [r for r in csv_rows(tmp_path / "reports" / "hand" / "csv" / "inference-m1.csv")
                   if r["Method"] == "lora"]
    assert float(csv_lora["Latency, batch 1 (s)"]) == pytest.approx(0.004)
    write_store(tmp_path / "plain", survey_records())  # no record measured speed: no section
    write_report("hand", tmp_path / "plain", tmp_path / "plain-reports", ["md"])
    assert "Inference speed" not in (tmp_path / "plain-reports" / "hand" / "report.md").read_text()


def test_further_evaluations_get_their_own_column_outside_the_average(tmp_path):
    """A 5-shot score recorded beside the main one (accuracy_5shot: full 90, lora 60 on t1) shows next to t1's
    column; the Average is still over the main scores only (lora: (86 + 71) / 2 = 78.5)."""
    records = survey_records()
    for r in records:
        if r["status"] == "ok" and r["cell"]["task"] == "t1" and r["cell"]["label"] in ("full", "lora"):
            r["scores"]["metrics"]["accuracy_5shot"] = 90.0 if r["cell"]["label"] == "full" else 60.0
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md"])
    text = (tmp_path / "reports" / "hand" / "report.md").read_text()
    assert "| Family | Method | t1 (accuracy) | t1 (accuracy_5shot) | t2 (chrf) | Average |" in text
    rows = {r.split(" | ")[1]: r for r in md_rows(text, "m1: methods compared")}
    assert "| **86.0 ± 1.0 (n=3)** | 60.0 ± 0.0 (n=3) | **71.0 ± 1.4 (n=2) [failed]** [" in rows["lora"]
    assert "| **78.5** |" in rows["lora"] and "| 82.0 ± 2.0 (n=3) | **90.0 ± 0.0 (n=3)** |" in rows["full"]
    assert "| 70.0 ± 0.0 (n=3) | – |" in rows["bitfit [3]"]  # not evaluated that way: a dash
    assert "the Average leaves them out" in text


def test_gradient_checkpointing_is_named_in_the_survey_and_memory_captions(tmp_path):
    records = survey_records()
    for r in records:
        if r["cell"]["label"] == "lora":
            r["train"]["gradient_checkpointing"] = True
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md"])
    text = (tmp_path / "reports" / "hand" / "report.md").read_text()
    assert text.count("Gradient checkpointing (activations recomputed in backward: less memory, more time) was on "
                      "for: lora.") == 2
    write_store(tmp_path / "plain", survey_records())
    write_report("hand", tmp_path / "plain", tmp_path / "plain-reports", ["md"])
    assert "Gradient checkpointing" not in (tmp_path / "plain-reports" / "hand" / "report.md").read_text()


def test_the_report_opens_with_what_the_suite_is(tmp_path):
    """The suite file's description is the report's first line (md, html), escaped: the smoke suite says there
    that it is toy scale. Without a suite file, no line."""
    write_store(tmp_path / "results", survey_records())
    suite = tmp_path / "hand.yaml"
    suite.write_text("name: hand\ndescription: >-\n  Toy scale <b>only</b>:\n  not a ranking.\nmethods: [full]\n"
                     "models: [tiny-encoder]\ntasks: [synth-polarity]\n")
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md", "html"], suite_source=str(suite))
    md = (tmp_path / "reports" / "hand" / "report.md").read_text().splitlines()
    assert md[:3] == ["# hand", "", "> Toy scale &lt;b&gt;only&lt;/b&gt;: not a ranking."]
    page = (tmp_path / "reports" / "hand" / "index.html").read_text()
    assert "<p><em>Toy scale &lt;b&gt;only&lt;/b&gt;: not a ranking.</em></p>" in page
    write_report("hand", tmp_path / "results", tmp_path / "other", ["md"])  # no suite file named hand
    assert not (tmp_path / "other" / "hand" / "report.md").read_text().splitlines()[2].startswith(">")
    from bench.plan.suite import raw_suite

    assert "Toy scale" in raw_suite("smoke")["description"]


def test_a_time_measured_beside_other_cells_on_its_device_is_marked_shared(tmp_path):
    records = survey_records()
    for r in records:
        r["env"] = {**r["env"], "cells_beside": 0}
        if r["cell"]["label"] == "lora" and r["cell"]["task"] == "t1" and r["cell"]["seed"] == 2:
            r["env"]["cells_beside"] = 3  # packed with three others on its GPU
        if r["cell"]["label"] == "full" and r["status"] == "ok":
            r["time"].update(train_flops_per_s=2.5e12, mfu=0.42)
            r["env"]["cells_beside"] = 1 if r["cell"]["task"] == "t2" else 0
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md"])
    text = (tmp_path / "reports" / "hand" / "report.md").read_text()
    rows = {row.split(" | ")[1]: row for row in md_rows(text, "m1: methods compared")}
    assert rows["lora"].endswith("| 5.0 (shared) [7] |")
    assert rows["bitfit [4]"].endswith("| **4.0** |")
    assert "[7] lora: trained beside up to 3 other cell(s) on the same device (env.cells_beside), so its timings " \
           "are not timings alone" in text
    assert rows["full"].endswith("| 16.0 (shared) [1] |")  # its t2 seeds ran beside one other cell
    memory = md_rows(text, "m1: memory")  # the rate and MFU of the cell shown (full on t2): shared too
    assert memory[0].endswith("| 2.500 (shared) [1] | 42.0 (shared) [1] |")
    assert "[1] full on t2: trained beside up to 1 other cell(s) on the same device" in text
