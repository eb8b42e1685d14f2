"""The two models ``rnnkit train`` builds, both a recurrent core (``registry.build_core``) plus a head.

* ``CharModel``: characters ``(batch, time)`` -> embedding ``(batch, time, embed_size)`` -> core ->
  dropout -> linear -> logits ``(batch, time, vocab)``.
* ``AddingModel``: ``(batch, time, 2)`` -> core -> linear on the last step -> prediction ``(batch,)``.

Both take and return the core's state, so training carries it across batches and sampling steps one
character at a time. ``build_model(config)`` rebuilds either from its JSON config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import build_core

__all__ = ["CharModel", "AddingModel", "build_model"]


class CharModel(nn.Module):
    """A character language model; ``forward(tokens (B, T), state) -> (logits (B, T, V), state)``."""

    def __init__(self, vocab_size: int, embed_size: int, core: dict[str, Any]):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.core = build_core(core, embed_size)
        self.dropout = nn.Dropout(core["dropout"])
        self.head = nn.Linear(self.core.output_size, vocab_size)

    def forward(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        out, state = self.core(self.embedding(tokens), state)  # (B, T, O)
        return self.head(self.dropout(out)), state  # (B, T, V)

    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One character per row: ``tokens (B,)`` and ``forward``'s state -> ``(logits (B, V), state)``."""
        out, state = self.core.step(self.embedding(tokens), state)  # (B, O)
        return self.head(self.dropout(out)), state


class AddingModel(nn.Module):
    """A regressor for the adding problem; ``forward(x (B, T, 2), state) -> (prediction (B,), state)``."""

    def __init__(self, core: dict[str, Any]):
        super().__init__()
        self.core = build_core(core, 2)
        self.head = nn.Linear(self.core.output_size, 1)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        out, state = self.core(x, state)  # (B, T, O)
        return self.head(out[:, -1]).squeeze(-1), state  # (B,)


def build_model(model_config: dict[str, Any]) -> nn.Module:
    """The model a checkpoint's ``config["model"]`` describes (fresh parameters)."""
    if model_config["task"] == "adding":
        return AddingModel(model_config["core"])
    return CharModel(len(model_config["vocab"]), model_config["embed_size"], model_config["core"])
