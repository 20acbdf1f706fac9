"""Memory per device of a cell sharded with FSDP2 (bench/tools/sharding.py, `estimate --shards N`): the arithmetic
by hand, the largest block against a decoder layer counted from its config, and the shards FSDP2 itself makes of a
small LLaMA in two processes on gloo (CPU) against the estimate's weights per device."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
import transformers as tf

from bench import tiny
from bench.tools.fake_pass import block_stacks
from bench.tools.sharding import largest_block, sharded_memory

GIB = 1024**3


def llama(layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny.config("llama", len(tiny.tokenizer()))
    config.num_hidden_layers = layers
    return tf.LlamaForCausalLM(config)


def test_one_device_of_n_holds_a_share_of_the_states_and_two_gathered_blocks():
    memory = {"weights_bytes": 80 * GIB, "trainable_bytes": 80 * GIB, "grad_bytes": 80 * GIB,
              "optimizer_bytes": 160 * GIB, "activation_bytes": 30 * GIB, "step_peak_bytes": 200 * GIB,
              "eval_peak_bytes": 30 * GIB, "predicted_peak_bytes": 440 * GIB}
    block = (2 * GIB, 2 * GIB)
    # passes: max(activations 30, live 100 - grads sharded away (80 - 20 = 60) = 40) = 40 GiB;
    # update: grads 20 + temporaries 8 / 4 = 22 GiB; step peak = batch 1 + 40 + gathered (2 x 2 + 2 = 6) = 47 GiB
    out = sharded_memory(memory, 4, block, batch_bytes=1 * GIB, live_peak=100 * GIB, update_bytes=8 * GIB)
    assert out["weights_bytes"] == out["grad_bytes"] == 20 * GIB and out["optimizer_bytes"] == 40 * GIB
    assert out["gathered_bytes"] == 6 * GIB and out["step_peak_bytes"] == 47 * GIB
    assert out["predicted_peak_bytes"] == (20 + 40 + 47) * GIB and out["shards"] == 4
    # an evaluation batch gathers two blocks' parameters (no gradient): 30 + 2 x 2; the busier phase is the peak
    assert out["eval_peak_bytes"] == 34 * GIB
    busy = sharded_memory({**memory, "eval_peak_bytes": 50 * GIB}, 4, block, 1 * GIB, 100 * GIB, 8 * GIB)
    assert busy["predicted_peak_bytes"] == (20 + 40 + 54) * GIB
    assert sharded_memory({**memory, "eval_peak_bytes": None}, 4, block, 0, 0, 0)["predicted_peak_bytes"] is None
    evaluates = sharded_memory(memory, 4, block, 1 * GIB, 100 * GIB, 8 * GIB, trains=False)  # zero-shot, ICL
    assert evaluates["predicted_peak_bytes"] == (20 + 34) * GIB
    assert out["activation_bytes"] == 30 * GIB  # every device runs the cell's whole batch: as given
    # the activations alone, at the end of the forward, bound the passes from below
    low = sharded_memory(memory, 4, block, batch_bytes=0, live_peak=31 * GIB, update_bytes=0)
    assert low["step_peak_bytes"] == (30 + 6) * GIB
    assert sharded_memory(memory, 3, (0, 0), 0, 0, 0)["weights_bytes"] == math.ceil(80 * GIB / 3)
    with pytest.raises(ValueError):
        sharded_memory(memory, 0, block, 0, 0, 0)


def test_the_largest_block_is_a_decoder_layer_counted_from_its_config():
    model = llama()
    c = model.config
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    elements = 2 * c.hidden_size ** 2 + 2 * c.hidden_size * kv + 3 * c.hidden_size * c.intermediate_size \
        + 2 * c.hidden_size  # q, o; k, v; gate, up, down; two RMSNorms
    assert largest_block(model, block_stacks(model)) == (4 * elements, 4 * elements)  # fp32, all trainable
    for p in model.model.layers.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.requires_grad_(True)
    assert largest_block(model, block_stacks(model)) == (4 * elements, 4 * c.hidden_size ** 2)
    whole = llama(layers=2)  # too few layers for a stack: FSDP gathers the model whole
    assert largest_block(whole, block_stacks(whole))[0] == 4 * sum(p.numel() for p in whole.parameters())


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One FSDP2 rank on gloo: each decoder layer sharded, then the model; one AdamW step on the same batch."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = llama()
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.arange(32).reshape(2, 16) % model.config.vocab_size
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        local = sum(p.to_local().nbytes for p in model.parameters())
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"loss": loss.item(), "local_bytes": local, "tensors": len(list(model.parameters()))}, f)
    finally:
        dist.destroy_process_group()


def test_fsdp2_on_gloo_shards_the_weights_as_the_estimate_says(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank")
    mp.spawn(_rank, args=(2, port, out), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank.{r}").read_text()) for r in range(2)]
    model = llama()
    weights = sum(p.nbytes for p in model.parameters())
    estimated = sharded_memory({"weights_bytes": weights, "trainable_bytes": weights, "grad_bytes": weights,
                                "optimizer_bytes": 0, "activation_bytes": 0, "step_peak_bytes": 0}, 2,
                               largest_block(model, block_stacks(model)), 0, 0, 0)["weights_bytes"]
    for rank in ranks:  # an uneven tensor's shards are padded to equal size: under one element per tensor and rank
        assert abs(rank["local_bytes"] - estimated) <= 4 * rank["tensors"]
    assert sum(r["local_bytes"] for r in ranks) >= weights
    assert ranks[0]["loss"] == ranks[1]["loss"] and math.isfinite(ranks[0]["loss"])


def test_estimate_shards_gives_one_devices_memory_and_refuses_fewer_than_one(capsys):
    from bench.cli import main
    from bench.tools.estimate import estimate

    alone = estimate("tiny-llama", "full", batch_size=2, seq_len=16)["memory"]
    shared = estimate("tiny-llama", "full", batch_size=2, seq_len=16, shards=2)["memory"]
    assert shared["weights_bytes"] == math.ceil(alone["weights_bytes"] / 2) and shared["shards"] == 2
    assert shared["gathered_bytes"] == 3 * alone["weights_bytes"]  # two layers, no stack: the model gathered whole
    # every rank runs the cell's whole batch (bench/cell/sharded.py), so a device's activations are the unsharded
    # cell's, not those of 1/N of its batch
    assert shared["activation_bytes"] == alone["activation_bytes"]
    assert main(["estimate", "--model", "tiny-llama", "--method", "lora", "--shards", "0"]) == 2
    assert "--shards must be at least 1, got 0" in capsys.readouterr().err
