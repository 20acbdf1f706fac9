"""What a folded prompt encoder becomes when a stored prompt is loaded (bench/methods/prompts.py)."""

from __future__ import annotations

import torch
from torch import nn


class FoldedPrompt(nn.Module):
    """The folded output of a prompt encoder, answering peft's calls the way the encoder did."""

    def __init__(self, rows: int, width: int):
        super().__init__()
        self.embedding = nn.Embedding(rows, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens)

    def _load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # peft's loading hook
        with torch.no_grad():
            self.embedding.weight.copy_(state["prompt_embeddings"])
