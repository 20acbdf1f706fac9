"""HyperFormer++'s shared hypernetwork and the adapters it generates (bench/methods/hyperformer.py).

Per model, `TaskEmbeddings`: a learned embedding per task. Per stack of layers (T5's encoder and its decoder
each have one; an encoder or a decoder-only model has one), `StackHyperNet`: a layer-id embedding per layer and a
block-type embedding (0 feed-forward, 1 self-attention), an MLP (Linear-ReLU-Linear) from [task embedding; layer
embedding; block embedding] to a layer-and-task code, a layer norm over it, and one linear generator per generated
tensor: the adapter's down (b × d) and up (d × b) weights and biases, and the weight and bias of the layer norm
that follows the adapter. At every site a `GeneratedAdapter`
holds no parameters: it asks its stack's hypernetwork for its layer's and block's tensors, for every task, and
maps a sublayer output y to LN_gen(up(act(down(y)))), which the site adds to y (before dropout and residual).

Each row of a batch reads its own task's tensors: `TaskEmbeddings.task_rows` is one task index for the whole
batch or a tensor of per-row indices (bench/layers/task_heads.select sets it).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from bench.errors import Unsupported
from bench.layers import sites
from bench.layers.bottleneck import ACTIVATIONS

INIT_STD = 1e-2  # every linear layer of the hypernetworks: N(0, INIT_STD²) weights, zero biases
CODE_NORM_EPS = 1e-6
FEED_FORWARD, SELF_ATTENTION = 0, 1  # the block-type embedding's rows
BLOCKS = {"ffn_output": FEED_FORWARD, "attention_output": SELF_ATTENTION}  # the sites, and the block each is
GENERATED = ("down_weight", "down_bias", "up_weight", "up_bias", "norm_weight", "norm_bias")
TASK_EMBEDDINGS = "hyperformer_tasks"  # the model's child
HYPERNET = "hyperformer"  # each stack's child
ADAPTER = "hyperformer_adapter"  # each site's child


def _linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    nn.init.normal_(layer.weight, std=INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(fan_in: int, hidden: int, fan_out: int) -> nn.Sequential:
    return nn.Sequential(_linear(fan_in, hidden), nn.ReLU(), _linear(hidden, fan_out))


class TaskEmbeddings(nn.Module):
    """A learned N(0, 1) embedding per task; `task_rows` says which rows of the next forward are which task."""

    def __init__(self, n_tasks: int, dim: int):
        super().__init__()
        self.embeddings = nn.Parameter(torch.randn(n_tasks, dim))
        self.task_rows: int | torch.Tensor = 0  # task 0 until bench.layers.task_heads.select says otherwise


class StackHyperNet(nn.Module):
    """Generates every adapter of one stack of layers from the task embeddings."""

    def __init__(self, n_layers: int, dim: int, bottleneck: int, embedding_dim: int, hidden: int, code_dim: int):
        super().__init__()
        self.dim, self.bottleneck = dim, bottleneck
        self.layer_embeddings = nn.Embedding(n_layers, embedding_dim)
        self.block_embeddings = nn.Embedding(2, embedding_dim)
        self.code = _mlp(3 * embedding_dim, hidden, code_dim)
        self.code_norm = nn.LayerNorm(code_dim, eps=CODE_NORM_EPS)
        sizes = {"down_weight": bottleneck * dim, "down_bias": bottleneck, "up_weight": dim * bottleneck,
                 "up_bias": dim, "norm_weight": dim, "norm_bias": dim}
        self.generators = nn.ModuleDict({name: _linear(code_dim, sizes[name]) for name in GENERATED})

    def forward(self, tasks: torch.Tensor, layer: int, block: int) -> dict[str, torch.Tensor]:
        """Each task's tensors for the adapter of `layer`'s `block` (`tasks`: the task embeddings), the tasks along
        the first dimension."""
        n = tasks.shape[0]
        # rows of the embedding tables, read by index (a lookup without a host-to-device copy of the ids)
        position = torch.cat([self.layer_embeddings.weight[layer], self.block_embeddings.weight[block]])
        code = self.code_norm(self.code(torch.cat([tasks, position.expand(n, -1)], dim=-1)))
        made = {name: generator(code) for name, generator in self.generators.items()}
        made["down_weight"] = made["down_weight"].view(n, self.bottleneck, self.dim)
        made["up_weight"] = made["up_weight"].view(n, self.dim, self.bottleneck)
        return made


class GeneratedAdapter(nn.Module):
    """One site's adapter: y -> LN_gen(up(act(down(y)))) with its tensors generated for each row's task."""

    def __init__(self, tasks: TaskEmbeddings, hypernet: StackHyperNet, layer: int, block: int, activation: str):
        super().__init__()
        # references, not children: the shared modules belong to the model and to the stack, once each
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "hypernet", hypernet)
        self.layer, self.block = layer, block
        self.act = ACTIVATIONS[activation]()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        made = self.hypernet(self.tasks.embeddings, self.layer, self.block)
        rows, dim = self.tasks.task_rows, self.hypernet.dim
        if isinstance(rows, int):
            t = {name: tensor[rows] for name, tensor in made.items()}
            hidden = self.act(nn.functional.linear(y, t["down_weight"], t["down_bias"]))
            out = nn.functional.linear(hidden, t["up_weight"], t["up_bias"])
            # in the stream's dtype: under autocast the layer norm computes in fp32
            return nn.functional.layer_norm(out, (dim,), t["norm_weight"], t["norm_bias"]).to(y.dtype)
        if rows.shape[0] != y.shape[0]:
            raise ValueError(f"hyperformer: {rows.shape[0]} task ids for {y.shape[0]} rows (an objective that "
                             "repeats rows per answer option cannot route them)")
        t = {name: tensor[rows.to(y.device)] for name, tensor in made.items()}  # each row's task's tensors
        flat = y.reshape(y.shape[0], -1, dim)  # [rows, positions, dim]
        hidden = self.act(torch.einsum("rpd,rbd->rpb", flat, t["down_weight"]) + t["down_bias"][:, None])
        out = torch.einsum("rpb,rdb->rpd", hidden, t["up_weight"]) + t["up_bias"][:, None]
        out = nn.functional.layer_norm(out, (dim,)) * t["norm_weight"][:, None] + t["norm_bias"][:, None]
        return out.reshape(y.shape).to(y.dtype)


def _stacks(model: nn.Module, arch: str) -> dict[str, list[tuple[str, int, int]]]:
    """The adapted sites by stack (the module list holding the layers, e.g. "encoder.block"): each site's module
    name, its layer's index in the stack and its block type."""
    stacks: dict[str, list[tuple[str, int, int]]] = {}
    for position, block in BLOCKS.items():
        for name, _ in sites.find(model, arch, position):
            found = re.search(r"^(.*?)\.(\d+)\.", name)
            if found is None:
                raise Unsupported(f"hyperformer: no layer index in the {position} site '{name}' of this {arch} model")
            stacks.setdefault(found[1], []).append((name, int(found[2]), block))
    return stacks


def attach(model: nn.Module, arch: str, n_tasks: int, config: dict) -> None:
    """The task embeddings (a child of the model), a hypernetwork per stack (a child of the module holding the
    stack's layers) and a generated adapter after every self-attention and feed-forward output projection."""
    first = sites.find(model, arch, "ffn_output")[0][1]
    tasks = sites.place_like(TaskEmbeddings(n_tasks, config["task_embedding_dim"]), first)
    model.add_module(TASK_EMBEDDINGS, tasks)
    adapters = {}
    for stack, members in _stacks(model, arch).items():
        dim = sites.out_features(model.get_submodule(members[0][0]))
        hypernet = sites.place_like(StackHyperNet(
            1 + max(layer for _, layer, _ in members), dim, max(1, dim // config["reduction_factor"]),
            config["task_embedding_dim"], config["task_hidden_dim"], config["projected_task_embedding_dim"]), first)
        holder = model.get_submodule(stack.rpartition(".")[0]) if "." in stack else model
        holder.add_module(HYPERNET, hypernet)
        adapters.update({name: GeneratedAdapter(tasks, hypernet, layer, block, config["activation"])
                         for name, layer, block in members})
    for position in BLOCKS:
        # attach_sequential visits the site's modules in sites.find's order, each asking for its branch
        made = iter([adapters[name] for name, _ in sites.find(model, arch, position)])
        sites.attach_sequential(model, arch, [position], ADAPTER, lambda dim, made=made: next(made))
