"""Task definitions, synthetic data and features."""

import json

import pytest
import torch

from bench.cell.batching import collate
from bench.cell.evaluate import sequence_logprob
from bench.errors import BadInput
from bench.tasks import synthetic
from bench.tasks.data import load_rows
from bench.tasks.features import IGNORE, eval_features, train_features
from bench.tasks.registry import builtin_tasks
from bench.tasks.schema import load_task_file


def test_synthetic_data_is_deterministic_and_labelled_by_its_rule():
    rows = synthetic.polarity(200, seed=5)
    assert rows == synthetic.polarity(200, seed=5) and rows != synthetic.polarity(200, seed=6)
    for row in rows:
        words = row["sentence"].split()
        pos = sum(w in synthetic.POSITIVE for w in words)
        neg = sum(w in synthetic.NEGATIVE for w in words)
        assert row["label"] == int(pos > neg) and pos != neg
    assert 0.35 < sum(r["label"] for r in rows) / len(rows) < 0.65  # near balanced: chance is 50%
    for row in synthetic.digits(20, seed=1):
        assert row["words"].split() == [synthetic.DIGIT_WORDS[int(d)] for d in row["digits"].split()]


def test_train_and_eval_splits_differ():
    task = builtin_tasks()["synth-polarity"]
    train, evals = load_rows(task, "train"), load_rows(task, "eval")
    assert len(train) == 4000 and len(evals) == 500 and train[:50] != evals[:50]


def task_file_error(tmp_path, text: str) -> BadInput:
    """The error loading a task file with this text raises."""
    (tmp_path / "tasks.yaml").write_text(text)
    with pytest.raises(BadInput) as info:
        load_task_file(tmp_path / "tasks.yaml")
    return info.value


def test_task_file_errors_name_file_and_line(tmp_path):
    error = task_file_error(
        tmp_path, "tasks:\n  - name: t\n    type: classification\n    source: {synthetic: polarity}\n"
                  "    text: [sentence]\n    label: label\n    labels: [a, b]\n    metrics: [acuracy]\n")
    assert "unknown metric 'acuracy'" in error.message and "did you mean 'accuracy'" in error.message
    assert error.where == f"{tmp_path / 'tasks.yaml'}:8"


def test_decoder_features_mask_the_prompt(tiny_bundle):
    bundle = tiny_bundle("tiny-gpt2", "classification")
    task = builtin_tasks()["synth-polarity"]
    row = {"sentence": "a great movie", "label": 1}
    (feat,) = train_features(task, bundle, [row], 64)
    tok = bundle.tokenizer
    target = tok(" positive", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert feat["input_ids"][-len(target):] == target
    assert feat["labels"] == [IGNORE] * (len(feat["input_ids"]) - len(target)) + target
    assert tok.decode(feat["input_ids"][1:-len(target)]).strip() == "review: a great movie sentiment:"


def test_encoder_decoder_features_put_the_answer_in_labels(tiny_bundle):
    bundle = tiny_bundle("tiny-t5", "generation")
    task = builtin_tasks()["synth-digits"]
    (feat,) = train_features(task, bundle, [{"digits": "1 2", "words": "one two"}], 64)
    assert bundle.tokenizer.decode(feat["labels"], skip_special_tokens=True).strip() == "one two"
    assert feat["labels"][-1] == bundle.tokenizer.eos_token_id
    evalset = eval_features(task, bundle, [{"digits": "1 2", "words": "one two"}], 64)
    assert evalset.gold == [["one two"]]


def test_sequence_logprob_matches_a_direct_computation(tiny_bundle):
    bundle = tiny_bundle("tiny-gpt2", "classification")
    model = bundle.model.eval()
    feats = [{"input_ids": [1, 5, 6, 7, 8], "labels": [IGNORE, IGNORE, IGNORE, 7, 8]},
             {"input_ids": [1, 9, 10], "labels": [IGNORE, IGNORE, 10]}]
    batch = collate(feats, bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        got = sequence_logprob(model, dict(batch))
        for feat, value in zip(feats, got):
            ids = torch.tensor([feat["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
            expected = sum(logp[t - 1, feat["input_ids"][t]] for t, y in enumerate(feat["labels"]) if y != IGNORE)
            assert value == pytest.approx(float(expected), abs=1e-4)


def test_templates_choices_and_demonstrations(tiny_bundle):
    bundle = tiny_bundle("tiny-t5", "multiple_choice")
    task = builtin_tasks()["synth-choice"]
    rows = [{"sentence": "a great movie", "choice1": "great", "choice2": "dull", "label": 0},
            {"sentence": "the dull plot", "choice1": "great", "choice2": "dull", "label": 1}]
    tok = bundle.tokenizer
    for prompt in task.prompts:
        evalset = eval_features(task, bundle, rows, 64, prompt)
        assert evalset.gold == [0, 1]
        assert [[tok.decode(c, skip_special_tokens=True).strip() for c in opts] for opts in evalset.choices] == \
            [["great", "dull"], ["great", "dull"]]
    demo = eval_features(task, bundle, rows[1:], 128, task.prompts[0], demos=rows[:1])
    text = tok.decode(demo.features[0]["input_ids"], skip_special_tokens=True)
    assert text.index("a great movie") < text.index("great") + 1 < text.index("the dull plot")
    feats = train_features(task, bundle, rows, 64, seed=3)
    assert [f["gold"] for f in feats] == [0, 1] and all(len(f["choice_ids"]) == 2 for f in feats)


def test_nested_columns_and_string_labels(tmp_path, tiny_bundle):
    from bench.tasks.registry import registry

    (tmp_path / "train.jsonl").write_text('{"pair": {"a": "x y", "b": "z"}, "verdict": "no"}\n')
    (tmp_path / "eval.jsonl").write_text('{"pair": {"a": "x", "b": "z z"}, "verdict": "yes"}\n')
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - name: mine\n    type: classification\n"
        "    source: {files: {train: train.jsonl, eval: eval.jsonl}}\n"
        "    text: [pair]\n    label: verdict\n    labels: ['no', 'yes']\n"
        "    template: 'a: {pair[a]} b: {pair[b]}'\n    metrics: [accuracy]\n")
    task = registry([tmp_path / "tasks.yaml"])["mine"]
    bundle = tiny_bundle("tiny-gpt2", "classification")
    evalset = eval_features(task, bundle, load_rows(task, "eval"), 64)
    assert evalset.gold == [1]
    text = bundle.tokenizer.decode(evalset.features[0]["input_ids"], skip_special_tokens=True)
    assert text.strip() == "a: x b: z z"


def test_unquoted_yes_no_labels_are_caught(tmp_path):
    error = task_file_error(
        tmp_path, "tasks:\n  - name: t\n    type: classification\n    source: {synthetic: polarity}\n"
                  "    text: [sentence]\n    label: label\n    labels: [no, yes]\n    metrics: [accuracy]\n")
    assert "quote the labels" in error.message and error.where.endswith(":7")


def test_eval_task_and_more_eval_splits_resolve():
    tasks = builtin_tasks()
    assert tasks["alpaca-mmlu"].eval_task is tasks["mmlu"]
    assert tasks["alpaca-mmlu"].evaluation.main_metric == "accuracy"
    from bench.tasks.data import eval_splits, hub_split

    mnli = tasks["mnli"]
    assert eval_splits(mnli) == {"": "eval", "mismatched": "eval:mismatched"}
    assert hub_split(mnli, "eval:mismatched") == "validation_mismatched"


def test_every_builtin_task_is_complete():
    from bench.tasks import metrics as m

    for task in builtin_tasks().values():
        assert task.description and task.metrics and task.main_metric in task.metrics
        assert all(name in m.METRICS for name in task.evaluation.metrics)
        if task.type in ("classification", "multiple_choice"):
            assert task.prompts and all(p.answers or task.labels for p in task.prompts)


def test_offline_without_local_data_is_one_clear_error(tmp_path, monkeypatch):
    from bench.tasks.data import DataUnavailable, check_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailable) as info:
        check_available(builtin_tasks()["sst2"], None)
    assert "nyu-mll/glue (sst2)" in info.value.message and "--data-dir" in info.value.message
    with pytest.raises(DataUnavailable) as info:
        check_available(builtin_tasks()["sst2"], tmp_path)
    assert str(tmp_path / "glue" / "sst2") in info.value.message


def test_an_evaluation_task_reads_without_its_training_split(tmp_path):
    from bench.tasks.data import check_available

    (tmp_path / "mmlu" / "all").mkdir(parents=True)
    row = {"question": "q", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 2}
    for split in ("test", "dev"):
        (tmp_path / "mmlu" / "all" / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    mmlu = builtin_tasks()["mmlu"]
    check_available(mmlu, tmp_path, evaluation_only=True)
    assert load_rows(mmlu, "eval", tmp_path) == [row]


def _mmlu_dir(tmp_path, dev_per_subject=5):
    """MMLU in the hub's layout: 3 test questions over 2 subjects (interleaved), and solved dev questions."""
    folder = tmp_path / "mmlu" / "all"
    folder.mkdir(parents=True)

    def row(subject, q, answer):
        return json.dumps({"question": q, "subject": subject, "choices": ["w", "x", "y", "z"], "answer": answer})

    (folder / "test.jsonl").write_text("\n".join([row("college_physics", "P1?", 1), row("anatomy", "A1?", 2),
                                                  row("college_physics", "P2?", 3)]) + "\n")
    dev = [row(s, f"{s[:3]}-dev{i}?", i % 4) for s in ("anatomy", "college_physics") for i in range(dev_per_subject)]
    (folder / "dev.jsonl").write_text("\n".join(dev) + "\n")
    return tmp_path


def test_mmlu_five_shot_puts_the_subjects_solved_dev_questions_before_each_question(tmp_path, tiny_bundle):
    """The standard protocol (Hendrycks et al.): header naming the subject, its first 5 dev questions with
    their answers, then the question; the zero-shot evaluation beside it has none; rows keep their order."""
    from bench.config import TrainConfig
    from bench.tasks.prepare import evaluation_rows, tokenised

    data = _mmlu_dir(tmp_path)
    mmlu = builtin_tasks()["mmlu"]
    bundle = tiny_bundle("tiny-gpt2", "multiple_choice")
    config = TrainConfig(max_length=1024)
    sets = tokenised(evaluation_rows(mmlu, config, data), bundle, config, data)
    zero, five = sets[""][0], sets["5shot"][0]
    assert zero.gold == five.gold == [1, 2, 3]
    def words(features):  # the tiny tokenizer's decoding adds spaces at piece joins: compare the words
        return [" ".join(bundle.tokenizer.decode(f["input_ids"], skip_special_tokens=True).split()) for f in features]

    def question(q, answer=""):
        return f"{q} A. w B. x C. y D. z Answer:" + (f" {answer}" if answer else "")

    texts = words(five.features)
    header = "The following are multiple choice questions (with answers) about college physics."
    physics = [question(f"col-dev{i}?", "ABCD"[i % 4]) for i in range(5)]
    assert texts[0] == " ".join([header, *physics, question("P1?")])
    assert texts[2] == " ".join([header, *physics, question("P2?")])
    assert texts[1].startswith("The following are multiple choice questions (with answers) about anatomy.")
    assert "ana-dev4?" in texts[1] and "col-" not in texts[1]
    assert words(zero.features) == [question("P1?"), question("A1?"), question("P2?")]
    assert five.choices == zero.choices


def test_mmlu_five_shot_without_enough_solved_questions_says_which_subject(tmp_path, tiny_bundle):
    from bench.config import TrainConfig
    from bench.tasks.prepare import evaluation_rows, tokenised

    data = _mmlu_dir(tmp_path, dev_per_subject=4)
    bundle = tiny_bundle("tiny-gpt2", "multiple_choice")
    with pytest.raises(ValueError, match="4 solved rows for subject 'college_physics', 5 needed"):
        tokenised(evaluation_rows(builtin_tasks()["mmlu"], TrainConfig(), data), bundle, TrainConfig(), data)


@pytest.mark.shared_data
def test_local_data_dir_reads_the_hub_layout(shared_data, tiny_bundle):
    from bench.tasks.data import check_available

    task = builtin_tasks()["rte"]
    check_available(task, shared_data)
    rows = load_rows(task, "train", shared_data)
    assert len(rows) == 1244 and set(rows[0]) >= {"sentence1", "sentence2", "label"}
    e2e = builtin_tasks()["e2e"]
    check_available(e2e, shared_data)
    bundle = tiny_bundle("tiny-gpt2", "generation")
    evalset = eval_features(e2e, bundle, load_rows(e2e, "eval", shared_data)[:200], 64)
    assert len(evalset.features) < 200 and max(len(g) for g in evalset.gold) > 1  # grouped references


def test_docs_define_every_task_key():
    from pathlib import Path

    from bench.tasks.schema import _KEYS, _SOURCE_KEYS

    text = (Path(__file__).resolve().parent.parent / "docs" / "tasks.md").read_text()
    for key in list(_KEYS) + list(_SOURCE_KEYS):
        assert f"`{key}`" in text, f"docs/tasks.md does not define {key}"


def test_long_prompts_keep_their_beginning_and_demonstrations_give_way(tiny_bundle):
    from bench.tasks.spec import Prompt

    bundle = tiny_bundle("tiny-gpt2", "classification")
    task = builtin_tasks()["synth-polarity"]
    row = {"sentence": " ".join(["good"] + ["movie"] * 100), "label": 1}
    evalset = eval_features(task, bundle, [row], 16)
    text = bundle.tokenizer.decode(evalset.features[0]["input_ids"], skip_special_tokens=True)
    assert text.strip().startswith("review: good movie") and len(evalset.features[0]["input_ids"]) == 16
    demo = {"sentence": "a dull film", "label": 0}
    short = {"sentence": "a great film", "label": 1}
    evalset = eval_features(task, bundle, [short], 12, Prompt("review: {sentence} sentiment:", ("negative", "positive")),
                            demos=[demo])
    text = bundle.tokenizer.decode(evalset.features[0]["input_ids"], skip_special_tokens=True)
    assert text.endswith("review: a great film sentiment:") and "a dull film" not in text  # no room: cut first


def test_a_task_without_metrics_is_bad_input(tmp_path):
    error = task_file_error(
        tmp_path, "tasks:\n  - name: t\n    type: regression\n    source: {synthetic: intensity}\n"
                  "    text: [sentence]\n    label: label\n    metrics: []\n")
    assert "lists no metrics" in error.message and error.where.endswith(":7")


def test_redrawn_templates_change_across_steps_for_the_same_row(tiny_bundle):
    """T-Few draws a template per example per step: with `redraw_templates` one row meets every template of
    synth-choice over a few steps (seeded: the same draws again), while the fixed draw shows only one."""
    from bench.cell.batching import batches
    from bench.cell.train import redrawn
    from bench.tasks.registry import builtin_tasks

    task = builtin_tasks()["synth-choice"]
    bundle = tiny_bundle("tiny-t5", task.type)
    row = {"sentence": "a great movie", "choice1": "great", "choice2": "dull", "label": 0}
    (fixed,) = train_features(task, bundle, [row], 64, seed=3)
    (feature,) = train_features(task, bundle, [row], 64, seed=3, all_templates=True)
    prompts = [tuple(v["prompt_ids"]) for v in feature["variants"]]
    assert len(set(prompts)) == len(task.prompts) == 2 and tuple(fixed["prompt_ids"]) in prompts

    def seen(data) -> list[tuple]:
        return [tuple(f["prompt_ids"]) for _ in range(6) for f in next(data)]

    assert set(seen(redrawn(batches([feature], 4, 0), seed=0))) == set(prompts)
    assert seen(redrawn(batches([feature], 4, 0), 0)) == seen(redrawn(batches([feature], 4, 0), 0))
    assert set(seen(batches([fixed], 4, 0))) == {tuple(fixed["prompt_ids"])}


def _hellaswag_row(label: str) -> dict:
    """One row in Rowan/hellaswag's schema (string labels, four endings in a list)."""
    return {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
            "ctx_b": "then", "ctx": "Then, the man writes over the snow. then",
            "endings": [", the man adds wax to the windshield.", ", a person is seen.", ", the man continues.",
                        ", the man stops."], "source_id": "activitynet~v_-1IBHYS3L-Y", "split": "val",
            "split_type": "indomain", "label": label}


def test_hellaswag_reads_the_hub_schema_and_offers_the_four_endings(tmp_path, tiny_bundle):
    import json

    task = builtin_tasks()["hellaswag"]
    folder = tmp_path / "hellaswag"
    folder.mkdir()
    for split, label in (("train", "2"), ("validation", "3")):
        (folder / f"{split}.jsonl").write_text(json.dumps(_hellaswag_row(label)) + "\n")
    rows = load_rows(task, "eval", tmp_path)
    assert task.gold(rows[0]) == 3 and len(task.prompts) == 4
    for prompt in task.prompts:
        assert task.answers(prompt, rows[0]) == rows[0]["endings"]
        assert "Then, the man writes over the snow. then" in task.render(prompt, rows[0])
    bundle = tiny_bundle("tiny-t5", "multiple_choice")
    evalset = eval_features(task, bundle, rows, 64, task.prompts[1])
    assert evalset.gold == [3] and len(evalset.choices[0]) == 4


STORY_CLOZE_CSV = (
    "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,"
    "RandomFifthSentenceQuiz2,AnswerRightEnding\n"
    "b929f263,Rick grew up in a troubled household.,He never found good support in family.,He turned to gangs.,"
    "It was long before Rick got shot in a robbery.,He is happy now.,He ended up in jail.,2\n"
    "7cbbc0af,Laverne needs to prepare something.,She bakes cookies.,She tastes one.,They are good.,"
    "She is proud.,She hates cookies.,1\n")


def test_story_cloze_missing_files_say_where_to_get_and_put_them(tmp_path, monkeypatch):
    from bench.tasks.data import DataUnavailable, check_available

    monkeypatch.setenv("PEFT_BENCH_MANUAL_DATA", str(tmp_path))
    task = builtin_tasks()["story-cloze"]
    with pytest.raises(DataUnavailable) as info:
        check_available(task, None)
    message = info.value.message
    assert "https://cs.rochester.edu/nlp/rocstories/" in message and "PEFT_BENCH_MANUAL_DATA" in message
    assert str(tmp_path / "story_cloze" / "2016") in message and "cloze_test_val__spring2016" in message
    assert "--tasks" in message and info.value.where == task.origin
    with pytest.raises(DataUnavailable) as info:
        check_available(task, tmp_path / "data")  # under --data-dir, that folder instead
    assert str(tmp_path / "data" / "story_cloze" / "2016") in info.value.message


def test_story_cloze_reads_the_distributed_files_in_the_hub_columns(tmp_path, monkeypatch):
    from bench.tasks.data import check_available, files_fingerprint

    monkeypatch.setenv("PEFT_BENCH_MANUAL_DATA", str(tmp_path))
    task = builtin_tasks()["story-cloze"]
    folder = tmp_path / "story_cloze" / "2016"
    folder.mkdir(parents=True)
    for name in task.source["manual"]["files"].values():
        (folder / name).write_text(STORY_CLOZE_CSV)
    check_available(task, None)
    rows = load_rows(task, "train", None)
    assert [task.gold(r) for r in rows] == [1, 0]
    assert rows[0]["input_sentence_1"] == "Rick grew up in a troubled household."
    assert task.answers(task.prompts[0], rows[0]) == ["He is happy now.", "He ended up in jail."]
    distributed = task.source["manual"]["files"].values()
    assert sorted(files_fingerprint(task, None)) == sorted(str(folder / n) for n in distributed)
    # the hub layout in the same folder serves too (e.g. a copy saved from `datasets`)
    hub = tmp_path / "hub" / "story_cloze" / "2016"
    hub.mkdir(parents=True)
    row = {"story_id": "x", **{f"input_sentence_{i}": f"s{i}." for i in range(1, 5)}, "sentence_quiz1": "a.",
           "sentence_quiz2": "b.", "answer_right_ending": 2}
    import json

    for split in ("validation", "test"):
        (hub / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    assert [task.gold(r) for r in load_rows(task, "eval", tmp_path / "hub")] == [1]
