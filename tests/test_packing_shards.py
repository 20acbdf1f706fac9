"""Which cells run sharded (bench/run/packing.py: Packer.demand, the local executor's `--gpus-per-cell`): the decision
and the devices' rooms take the prediction per device sharded over them (bench/tools/sharding.py), not the unsharded
one, and a cell that fits no device even sharded is refused before any cell starts. Fake devices and predictions."""

from __future__ import annotations

import pytest

from bench.errors import BadInput
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.run.executors.local import LocalExecutor
from bench.run.packing import CONTEXT_BYTES, Packer, Placement, cell_budget, footprint
from bench.run.runner import run_grid
from bench.run.store import Store

GIB = 1024**3
NO_GPU = ["90", "91"]  # GPU indices no machine has: a cell pinned to one sees no CUDA device
# sharded_run's cell_timeout_s: below the ranks' collective timeout (bench/cell/ranks.py COLLECTIVE_TIMEOUT), so a
# cell whose rank 0 waited for a lost peer would end at this one, recorded `timeout`
SHARDED_CELL_TIMEOUT_S = 120


def budget_of(predicted: int) -> int:
    return cell_budget({"predicted_peak_bytes": predicted})


def predictions(by_shards: dict[int, int]):
    """memory(shards) of a cell predicted `by_shards[N]` bytes per device over N devices; the N asked are kept."""
    asked = []

    def memory(shards: int) -> dict:
        asked.append(shards)
        return {"predicted_peak_bytes": by_shards[shards]}

    return memory, asked


def test_a_cell_that_shares_a_device_is_never_priced_sharded():
    memory, asked = predictions({1: 10 * GIB})
    assert Packer(dict.fromkeys("01", 40 * GIB), gpus_per_cell=2).demand(memory, "c") == (budget_of(10 * GIB), 1)
    assert asked == [1]


def test_a_cell_too_large_for_one_device_takes_its_budget_sharded():
    memory, asked = predictions({1: 100 * GIB, 2: 30 * GIB})
    packer = Packer(dict.fromkeys("01", 40 * GIB), gpus_per_cell=2)
    assert packer.demand(memory, "c") == (budget_of(30 * GIB), 2) and asked == [1, 2]


def test_a_sharded_cell_takes_only_devices_its_sharded_budget_fits():
    # 25 GiB per device: a budget of 1.1 x (25 + 0.125) GiB = 27.64 GiB, 28.64 GiB with its context; "2" is too small
    per_device = budget_of(25 * GIB)
    assert footprint(per_device) == pytest.approx(28.6375 * GIB, abs=1)
    packer = Packer({"0": 40 * GIB, "1": 30 * GIB, "2": 24 * GIB}, gpus_per_cell=2)
    assert packer.where(per_device, devices=2) == Placement("0,1", None)
    small = packer.place(budget_of(1 * GIB))
    assert small.device == "2"  # best fit
    packer.release(small)
    held = packer.place(budget_of(22 * GIB))  # 25.3 GiB with its context: fits "1" best, not "2"
    assert held.device == "1"
    assert packer.where(per_device, devices=2) is None  # "0" and "2" are empty, but 24 GiB holds no 28.64 GiB


def test_no_cell_packs_beside_a_sharded_cells_ranks():
    """A sharded cell's GPUs are held whole however much room its per-GPU budget leaves (docs/scale.md says why):
    a small cell waits rather than join them, though each has room for it past the ranks' footprints."""
    packer = Packer({"0": 2 * GIB, "1": 80 * GIB, "2": 80 * GIB}, gpus_per_cell=2)
    small = budget_of(1 * GIB)
    assert footprint(small) > 2 * GIB and footprint(budget_of(30 * GIB)) + footprint(small) < 80 * GIB
    sharded = packer.place(budget_of(30 * GIB), devices=2)
    assert sharded == Placement("1,2", None)
    assert packer.place(small) is None
    packer.release(sharded)
    assert packer.place(small).device == "1"


def test_a_cell_whose_sharded_budget_does_not_fit_runs_alone_if_its_prediction_fits_one_device():
    # 38 GiB on one: its budget with the margins (42.9 GiB with the context) fits no 40 GiB device, the prediction
    # itself (39 GiB with the context) does; sharded it is 39 GiB a device (activations dominate): no better
    memory, _ = predictions({1: 38 * GIB, 2: 39 * GIB})
    assert Packer(dict.fromkeys("01", 40 * GIB), gpus_per_cell=2).demand(memory, "c") == (budget_of(38 * GIB), 1)


def test_a_cell_whose_sharded_prediction_is_unknown_runs_sharded_on_any_empty_devices():
    """Unknown is no verdict: before the fix such a cell was refused (its bare prediction past every device)."""
    packer = Packer(dict.fromkeys("01", 40 * GIB), gpus_per_cell=2)
    memory, asked = predictions({1: 100 * GIB, 2: None})
    assert packer.demand(memory, "c") == (None, 2) and asked == [1, 2]
    assert packer.place(None, devices=2) == Placement("0,1", None)


def test_the_executor_says_a_sharded_cells_memory_is_unknown(tmp_path, capsys):
    path = tmp_path / "sharded.yaml"
    path.write_text("name: packing\nmethods: [full]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\nseeds: [1]\n"
                    "train: {batch_size: 8, max_steps: 2, max_length: 16, weights_dtype: bf16}\n")
    (cell,) = grid.expand(load_suite(str(path)), threads=1)
    executor = LocalExecutor(quiet=True, gpus=NO_GPU, rooms=dict.fromkeys(NO_GPU, 3 * GIB), gpus_per_cell=2,
                             predicted_memory=lambda cell, shards=1: {"predicted_peak_bytes": 8 * GIB} if shards == 1
                             else None)
    assert executor.demand(cell) == (None, 2)
    assert (f"{cell.line()}: its memory sharded over 2 GPUs is unknown (no prediction): it runs sharded over 2 "
            "empty GPUs without a budget") in capsys.readouterr().err


def test_a_prediction_that_may_run_high_refuses_nothing_the_cell_runs_alone():
    """bound=False (the estimate says where its step departs from a GPU's): run alone on the largest, as before
    the refusal existed; the refusal offers --pack off, which refuses nothing."""
    memory, _ = predictions({1: 100 * GIB, 2: 45 * GIB})
    packer = Packer(dict.fromkeys("01", 40 * GIB), gpus_per_cell=2)
    assert packer.demand(memory, "c", bound=False) == (budget_of(100 * GIB), 1)
    with pytest.raises(BadInput) as refused:
        packer.demand(memory, "c")
    assert "--pack off (every cell alone on a GPU, unrefused)" in refused.value.choices


@pytest.mark.parametrize("why", ["not_modelled", "upper_bound"])
def test_the_executor_bounds_the_peak_by_the_prediction_unless_the_estimate_says_where_it_departs(tmp_path, why):
    """A prediction whose `not_modelled` names where the estimate's step departs from a GPU's (Liger's other path:
    bench/tools/liger_memory.py), or whose `upper_bound` says it bounds the peak from above (fishmask, child-tuning:
    bench/methods/fisher.py), refuses nothing: its cell runs alone on the largest device."""
    path = tmp_path / "one.yaml"
    path.write_text("name: one\nmethods: [lora]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\nseeds: [1]\n"
                    "train: {batch_size: 8, max_steps: 2, max_length: 16}\n")
    (cell,) = grid.expand(load_suite(str(path)), threads=1)

    def executor(reasons: list[str]) -> LocalExecutor:
        return LocalExecutor(quiet=True, gpus=NO_GPU, rooms=dict.fromkeys(NO_GPU, 3 * GIB),
                             predicted_memory=lambda cell, shards=1: {"predicted_peak_bytes": 8 * GIB, why: reasons})

    assert executor(["Liger's fused loss ... another path"]).demand(cell) == (budget_of(8 * GIB), 1)
    with pytest.raises(BadInput, match="fits no GPU of --gpus"):
        executor([]).demand(cell)


def test_a_cell_that_fits_no_device_even_sharded_is_refused_with_the_numbers():
    memory, _ = predictions({1: 100 * GIB, 2: 45 * GIB})
    with pytest.raises(BadInput) as refused:
        Packer(dict.fromkeys("01", 40 * GIB), gpus_per_cell=2).demand(memory, "c0ffee  method=lora")
    said = refused.value
    assert said.where == "--gpus-per-cell"
    assert "c0ffee  method=lora fits no GPU of --gpus" in said.message
    assert f"100.0 GB ({100 * GIB:,} B) on one GPU" in said.message
    assert f"45.0 GB ({45 * GIB:,} B) on each of 2 sharded over them" in said.message
    assert f"a budget of {budget_of(45 * GIB) / GIB:.1f} GB with the margins" in said.message
    assert f"at most {(40 * GIB - CONTEXT_BYTES) / GIB:.1f} GB of the largest GPU's 40.0 GB free" in said.message
    assert {"train.gradient_checkpointing: true", "train.weights_dtype: bf16"} <= set(said.choices)
    # one device per cell: the prediction itself past the largest device's room, so nothing to shard over
    memory, asked = predictions({1: 40 * GIB})
    with pytest.raises(BadInput, match="predicted peak is 40.0 GB .* on one GPU, and with 1.0 GB of CUDA context"):
        Packer(dict.fromkeys("01", 40 * GIB)).demand(memory, "c")
    assert asked == [1]


def test_the_runner_refuses_a_cell_too_large_even_sharded_before_any_cell_starts(tmp_path):
    """Two 3 GiB fake GPUs, a cell of 8 GiB on one and 4 GiB a device over two: before the fix it was sharded on
    its unsharded prediction alone and started; now the run stops with the numbers, and nothing is recorded."""
    path = tmp_path / "sharded.yaml"
    path.write_text("name: packing\nmethods: [full, lora]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\n"
                    "seeds: [1]\ntrain: {batch_size: 8, max_steps: 2, max_length: 16, weights_dtype: bf16}\n")
    cells = grid.expand(load_suite(str(path)), threads=1)
    store = Store(tmp_path / "results")
    asked = []

    def memory(cell, shards: int = 1) -> dict:
        asked.append((cell.label, shards))
        return {"predicted_peak_bytes": (8 if cell.label == "lora" else 1) * GIB // shards}

    executor = LocalExecutor(quiet=True, gpus=NO_GPU, rooms=dict.fromkeys(NO_GPU, 3 * GIB),
                             predicted_memory=memory, gpus_per_cell=2)
    submitted = []
    executor.submit = lambda cells, *rest: submitted.append(list(cells))  # a spy: would start cell processes
    with pytest.raises(BadInput, match=r"method=lora model=tiny-llama task=synth-polarity seed=1 fits no GPU"):
        run_grid(cells, store, executor, quiet=True)
    assert submitted == []  # no cell process, no rank, no model loaded
    assert not list(store.root.rglob("*.json"))
    assert ("lora", 2) in asked and ("full", 2) not in asked  # the small cell shares a device: never priced sharded


def test_the_runs_prediction_per_device_is_the_estimates_sharded_one(tmp_path):
    from bench.tools.estimate import estimate
    from bench.tools.plan_cost import predicted_memory

    path = tmp_path / "sharded.yaml"
    path.write_text("name: packing\nmethods: [full]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\n"
                    "seeds: [1]\ntrain: {batch_size: 8, max_steps: 2, max_length: 16}\n")
    (cell,) = grid.expand(load_suite(str(path)), threads=1)
    as_the_cell = {"task": cell.task, "eval_batch_size": cell.train.eval_batch_size}
    sharded = estimate("tiny-llama", "full", 8, 16, shards=2, **as_the_cell)["memory"]
    assert predicted_memory(cell, shards=2) == sharded and sharded["shards"] == 2
    assert predicted_memory(cell) == estimate("tiny-llama", "full", 8, 16, **as_the_cell)["memory"]  # cached apart


@pytest.fixture
def two_fake_gpus(monkeypatch, tmp_path):
    """`--gpus 90,91` of 3 GiB each (CUDA_VISIBLE_DEVICES, nvidia-smi's rooms), and each cell's predicted peak by
    its method label: 8 GiB on one device, 4 GiB a device over two, for lora and bitfit (fit no device even sharded),
    1 GiB for full; bf16 weights, so the predictions bound the peaks. Returns the suite and the run's flags."""
    import bench.run.executors.local as local
    import bench.tools.plan_cost as plan_cost

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(NO_GPU))
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(local, "device_rooms", lambda devices: dict.fromkeys(devices, 3 * GIB))
    monkeypatch.setattr(plan_cost, "predicted_memory", lambda cell, shards=1: {
        "predicted_peak_bytes": (1 if cell.label == "full" else 8) * GIB // shards})
    path = tmp_path / "big.yaml"
    path.write_text("name: packing\nmethods: [full, lora, bitfit]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\n"
                    "seeds: [1]\ntrain: {batch_size: 8, max_steps: 2, max_length: 16, weights_dtype: bf16}\n")
    return path, ["--gpus", ",".join(NO_GPU), "--gpus-per-cell", "2", "--results", str(tmp_path / "results")]


def test_the_dry_run_lists_every_cell_the_run_would_refuse(two_fake_gpus, capsys):
    """The plan says what `run` would say before it starts, for every such cell (the run stops at the first), with
    the run's own words, and exits 2 as the run does."""
    from bench.cli import main

    path, flags = two_fake_gpus
    assert main(["run", "--suite", str(path), "--dry-run", *flags]) == 2
    out, err = capsys.readouterr()
    assert len([line for line in out.splitlines() if "model=tiny-llama" in line]) == 3  # the plan, every cell
    refused = [line.removeprefix("refused: ") for line in err.splitlines() if line.startswith("refused: ")]
    assert [line.split("  ")[1].split(" fits no GPU")[0] for line in refused] == [
        "method=lora model=tiny-llama task=synth-polarity seed=1", "method=bitfit model=tiny-llama task=synth-polarity "
        "seed=1"]
    assert "its predicted peak is 8.0 GB (8,589,934,592 B) on one GPU and 4.0 GB" in refused[0]
    assert "--gpus-per-cell: 2 of 3 cells to run would be refused (above): `run` stops before any cell starts" in err
    assert main(["run", "--suite", str(path), *flags]) == 2
    said = capsys.readouterr().err
    assert refused[0] in said and refused[1] not in said  # the run names the first, in the same words
    assert not list((path.parent / "results").rglob("*.json"))


def test_the_dry_run_refuses_only_cells_the_run_would_run(two_fake_gpus, capsys):
    """lora is recorded ok: the run skips it, so it cannot be refused; before the fix the dry-run refused it too
    (every expanded cell), and --force brings it back."""
    from handmade import record

    from bench.cli import main

    path, flags = two_fake_gpus
    lora = next(c for c in grid.expand(load_suite(str(path)), threads=1) if c.label == "lora")
    done = record("lora", "reparameterized", "tiny-llama", "t1", 1, score=80.0, params={}, suite="packing")
    done["cell"]["id"] = lora.id
    Store(path.parent / "results").write(done)
    assert main(["run", "--suite", str(path), "--dry-run", *flags]) == 2
    err = capsys.readouterr().err
    refused = [line for line in err.splitlines() if line.startswith("refused: ")]
    assert len(refused) == 1 and "method=bitfit" in refused[0]
    assert "1 of 2 cells to run would be refused" in err
    assert main(["run", "--suite", str(path), "--dry-run", "--force", *flags]) == 2
    assert "2 of 3 cells to run would be refused" in capsys.readouterr().err


def test_the_refusals_count_their_cells_and_gpus_in_words(two_fake_gpus, capsys):
    """One cell to run and one GPU: before the fix the dry-run said '1 of 1 cells' and '(1 GPU(s); ...)'."""
    from bench.cli import main

    path, flags = two_fake_gpus
    assert main(["run", "--suite", str(path), "--dry-run", "--methods", "lora", *flags]) == 2
    assert "1 of 1 cell to run would be refused (above)" in capsys.readouterr().err
    memory, _ = predictions({1: 40 * GIB})
    with pytest.raises(BadInput, match=r"of the largest GPU's 40.0 GB free \(1 GPU; docs/scale.md\)"):
        Packer({"0": 40 * GIB}).demand(memory, "c")
    with pytest.raises(BadInput, match=r"free \(2 GPUs; docs/scale.md\)"):
        Packer(dict.fromkeys("01", 40 * GIB)).demand(memory, "c")


def test_a_dry_run_whose_cells_all_fit_refuses_nothing(two_fake_gpus, capsys):
    from bench.cli import main

    path, flags = two_fake_gpus
    assert main(["run", "--suite", str(path), "--dry-run", "--methods", "full", *flags]) == 0
    assert "refused" not in capsys.readouterr().err
    # fp32 weights under autocast: predicted as they run too (bench/tools/cuda_step.py), so refused as bf16's are
    path.write_text(path.read_text().replace(", weights_dtype: bf16", ""))
    assert main(["run", "--suite", str(path), "--dry-run", *flags]) == 2
    assert "refused" in capsys.readouterr().err


def sharded_run(tmp_path, method: str) -> dict:
    """The record of tiny-llama with `method`, sharded over two fake GPUs (gloo ranks)."""
    path = tmp_path / "sharded.yaml"
    path.write_text(f"name: packing\nmethod_modules: [tests.faulty_methods]\nmethods: [{method}]\n"
                    "models: [tiny-llama]\ntasks: [synth-polarity]\nseeds: [1]\ntrain: {batch_size: 8, max_steps: 2, "
                    f"max_length: 16}}\ncell_timeout_s: {SHARDED_CELL_TIMEOUT_S}\n")
    cells = grid.expand(load_suite(str(path)), threads=1)
    store = Store(tmp_path / "results")
    executor = LocalExecutor(quiet=True, gpus=NO_GPU, rooms=dict.fromkeys(NO_GPU, 3 * GIB),
                             predicted_memory=lambda cell, shards=1: {"predicted_peak_bytes": 2 * GIB // shards},
                             gpus_per_cell=2)
    run_grid(cells, store, executor, quiet=True)
    (record,) = store.records("packing")[0]
    return record


def test_a_failed_rank_stops_its_peers_and_its_error_is_the_cells(tmp_path):
    """Rank 1 fails (not out of memory) while rank 0 hangs, as it waits on NCCL for a stopped peer: before the fix
    the cell waited for rank 0 until its deadline and ended `timeout`, the cause lost; now rank 0 is stopped as soon
    as rank 1's record says it failed, and the cell is `failed` with rank 1's error."""
    record = sharded_run(tmp_path, "fault-raise-on-rank-1-hang-on-rank-0")
    assert record["status"] == "failed" and record["env"]["shards"] == 2
    assert record["error"]["type"] == "ValueError"
    assert record["error"]["message"] == "rank 1 of 2: rank 1's build failed (injected)"


def test_the_cells_record_takes_the_rank_that_failed_first():
    from bench.cell.ranks import cell_record

    def rank(status: str, message: str | None = None) -> dict:
        error = message and {"type": "E", "message": message}
        return {"status": status, "error": error, "env": {}}

    lost = "connection closed by peer"
    oom = cell_record([(rank("failed", lost), 20), (rank("oom", "out of memory"), 10)])
    assert (oom["status"], oom["error"]["message"]) == ("oom", "rank 1 of 2: out of memory")
    first = cell_record([(rank("diverged", "loss nan"), 10), (rank("failed", lost), 20)])
    assert (first["status"], first["error"]["message"]) == ("diverged", "loss nan")  # rank 0 failed first
    stopped = cell_record([(None, 0), (rank("failed", "bad batch"), 10), (None, 0)])  # ranks 0, 2 stopped
    assert (stopped["status"], stopped["error"]["message"]) == ("failed", "rank 1 of 3: bad batch")
    same_tick = cell_record([(rank("failed", lost), 10), (rank("oom", "out of memory"), 10)])
    assert same_tick["status"] == "oom"
    assert cell_record([(rank("ok"), 20), (rank("ok"), 10)]) == rank("ok")


def test_a_rank_that_runs_out_of_memory_makes_the_cell_oom(tmp_path):
    """Rank 1 of a cell sharded over two fake GPUs (gloo) runs out of memory: rank 0, its peer gone, ends with a lost
    connection. Before the fix that was the cell's record (`failed`, the cause hidden); now the cell is `oom` with
    rank 1's error, as an out-of-memory on one GPU is."""
    record = sharded_run(tmp_path, "fault-oom-on-rank-1")
    assert record["status"] == "oom"
    assert record["env"]["shards"] == 2 and record["error"]["type"] == "OutOfMemoryError"
    assert record["error"]["message"] == "rank 1 of 2: CUDA out of memory on rank 1 (injected)"


def test_a_qlora_cell_is_never_sharded(tmp_path):
    """FSDP2 cannot shard a 4-bit base (a Params4bit sharded becomes a DTensor without its quant_state): a QLoRA cell
    too large for one device is sized as without --gpus-per-cell, its sharded memory never asked; it runs whole on
    the largest device where its prediction may be above its peak, and is refused where the prediction bounds it."""
    path = tmp_path / "sharded.yaml"
    path.write_text("name: packing\nmethods: [qlora, lora]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\n"
                    "seeds: [1]\ntrain: {batch_size: 8, max_steps: 2, max_length: 16}\n")
    cells = {cell.label: cell for cell in grid.expand(load_suite(str(path)), threads=1)}
    asked = []

    def memory(bound: bool):
        def predicted(cell, shards: int = 1) -> dict:
            asked.append((cell.label, shards))
            return {"predicted_peak_bytes": 8 * GIB // shards, "not_modelled": [] if bound else ["a departure"]}
        return predicted

    rooms = dict.fromkeys(NO_GPU, 6 * GIB)
    loose = LocalExecutor(quiet=True, gpus=NO_GPU, rooms=rooms, predicted_memory=memory(False), gpus_per_cell=2)
    assert loose.demand(cells["qlora"]) == (budget_of(8 * GIB), 1)
    assert loose.demand(cells["lora"]) == (budget_of(4 * GIB), 2)
    assert asked == [("qlora", 1), ("lora", 1), ("lora", 2)]
    tight = LocalExecutor(quiet=True, gpus=NO_GPU, rooms=rooms, predicted_memory=memory(True), gpus_per_cell=2)
    with pytest.raises(BadInput) as refused:
        tight.demand(cells["qlora"])
    assert "method=qlora" in refused.value.message and "sharded" not in refused.value.message


def one_cell(tmp_path, method: str):
    path = tmp_path / "one.yaml"
    entry = "{compose: [" + method[len("compose("):-1].replace("+", ", ") + "]}" if method.startswith("compose(") \
        else method
    path.write_text(f"name: one\nmethods: [{entry}]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\nseeds: [1]\n"
                    "train: {batch_size: 8, max_steps: 2, max_length: 16}\n")
    (cell,) = grid.expand(load_suite(str(path)), threads=1)
    return cell


@pytest.mark.parametrize("method", ["fishmask", "child-tuning", "compose(lora+child-tuning)"])
def test_a_cell_whose_method_masks_gradients_is_never_sharded(tmp_path, method):
    """fully_shard replaces the parameters a Fisher method's masks and hooks hold, so sharded it would train every
    entry: too big for one device, it runs whole on the largest (its upper bound refuses nothing), never sharded,
    and its sharded memory is not even asked. Before the fix the executor sharded it."""
    cell = one_cell(tmp_path, method)
    asked = []

    def predicted(cell, shards=1):
        asked.append(shards)
        return {"predicted_peak_bytes": 8 * GIB // shards, "upper_bound": ["the data choose"]}

    executor = LocalExecutor(quiet=True, gpus=NO_GPU, rooms=dict.fromkeys(NO_GPU, 6 * GIB),
                             predicted_memory=predicted, gpus_per_cell=2)
    assert executor.demand(cell) == (budget_of(8 * GIB), 1) and asked == [1]
    lora = LocalExecutor(quiet=True, gpus=NO_GPU, rooms=dict.fromkeys(NO_GPU, 6 * GIB), predicted_memory=predicted,
                         gpus_per_cell=2)
    assert lora.demand(one_cell(tmp_path, "lora")) == (budget_of(4 * GIB), 2)  # the same numbers shard a LoRA cell


def test_a_sharded_rank_refuses_a_method_with_gradient_masks_before_loading_the_model(tmp_path, monkeypatch):
    """A rank of a sharded cell (a gloo process group of one, as bench/cell/ranks.py starts) of child-tuning is
    `unsupported`, naming why, before its model is loaded: before the fix it trained every entry of its masked
    tensors (/tmp/review-h1/shard_masks.py: no gradient entry was masked after fully_shard)."""
    import torch.distributed as dist

    from bench.cell import recipe

    cell = one_cell(tmp_path, "child-tuning")
    loaded = []
    monkeypatch.setattr(recipe, "load_bundle", lambda *a, **k: loaded.append(a) or pytest.fail("model loaded"))
    store = tmp_path / "store"
    store.mkdir()
    dist.init_process_group("gloo", init_method=f"file://{store / 'rendezvous'}", rank=0, world_size=1)
    try:
        record = recipe.run_cell(cell, quiet=True)
    finally:
        dist.destroy_process_group()
    assert record["status"] == "unsupported" and not loaded
    assert record["error"]["message"].startswith(
        "child-tuning cannot run sharded: it keeps per-parameter gradient masks")
