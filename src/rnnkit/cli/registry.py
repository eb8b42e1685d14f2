"""The recurrent cores the command line can build, by name: TF1 cell stacks now, torch.nn-style layers later.

``--cell NAME`` (``basic_rnn``, ``basic_lstm``, ``lstm``, ``gru``, ``layer_norm_lstm``) stacks ``--layers``
rnnkit cells in a ``MultiRNNCell`` run by ``dynamic_rnn``. ``--layer NAME`` (``rnn``, ``lstm``, ``gru``)
uses rnnkit's torch.nn-style ``RNN``/``LSTM``/``GRU``: those are looked up on the ``rnnkit`` package when a
model is built (``layer_class``), so they bind by themselves once rnnkit exports them (issue 3).

A core maps ``(batch, time, input_size)`` and a state (``None`` for zeros) to ``(batch, time, output_size)``
and the next state; ``state_batch_dim`` says on which axis of every state leaf the batch runs (0 for cells'
``(batch, units)``, 1 for layers' ``(layers*directions, batch, hidden)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import cells
from ..runners import dynamic_rnn
from .errors import CLIError

__all__ = ["CELL_TYPES", "LAYER_TYPES", "layer_class", "build_core", "CellCore", "LayerCore"]


@dataclass(frozen=True)
class CellType:
    build: Callable[[dict[str, Any]], cells.RNNCell]
    help: str


CELL_TYPES: dict[str, CellType] = {
    "basic_rnn": CellType(lambda o: cells.BasicRNNCell(o["hidden_size"]), "BasicRNNCell: h' = tanh([x, h] W + b)"),
    "basic_lstm": CellType(
        lambda o: cells.BasicLSTMCell(o["hidden_size"], forget_bias=o["forget_bias"]), "BasicLSTMCell"
    ),
    "lstm": CellType(
        lambda o: cells.LSTMCell(
            o["hidden_size"],
            use_peepholes=o["peepholes"],
            cell_clip=o["cell_clip"],
            num_proj=o["num_proj"],
            forget_bias=o["forget_bias"],
        ),
        "LSTMCell with --peepholes, --cell-clip, --num-proj",
    ),
    "gru": CellType(lambda o: cells.GRUCell(o["hidden_size"]), "GRUCell (TF's reset-before GRU)"),
    "layer_norm_lstm": CellType(
        lambda o: cells.LayerNormBasicLSTMCell(o["hidden_size"], forget_bias=o["forget_bias"]),
        "LayerNormBasicLSTMCell",
    ),
}

# torch.nn-style layers: the name on the command line -> the class name on the rnnkit package (issue 3).
LAYER_TYPES: dict[str, str] = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def layer_class(name: str) -> type | None:
    """rnnkit's torch.nn-style layer class for ``name``, or None while this rnnkit does not export it yet."""
    import rnnkit

    return getattr(rnnkit, LAYER_TYPES[name], None)


class CellCore(nn.Module):
    """``layers`` TF cells in a ``MultiRNNCell`` (each wrapped in a ``DropoutWrapper`` when ``dropout > 0``)."""

    state_batch_dim = 0

    def __init__(self, options: dict[str, Any], input_size: int):
        super().__init__()
        stack = []
        for _ in range(options["num_layers"]):
            cell = CELL_TYPES[options["cell"]].build(options)
            if options["dropout"] > 0:
                cell = cells.DropoutWrapper(cell, output_keep_prob=1.0 - options["dropout"])
            stack.append(cell)
        self.rnn = cells.MultiRNNCell(stack)
        self.rnn.build(input_size)
        self.output_size = self.rnn.output_size

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        return dynamic_rnn(self.rnn, x, initial_state=state)  # (B, T, O), per-layer states

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One frame ``x (B, D) -> (B, O)``: the cell called per frame (the engine's streaming frame)."""
        return self.rnn(x, state)

    def zero_state(self, batch: int, device: Any = None) -> Any:
        return self.rnn.zero_state(batch, torch.float32, device=device)  # one (c, h) or h per layer


class LayerCore(nn.Module):
    """A torch.nn-style layer (``batch_first=True``); dropout acts between layers, as in torch.nn."""

    state_batch_dim = 1

    def __init__(self, options: dict[str, Any], input_size: int, cls: type):
        super().__init__()
        self.rnn = cls(
            input_size, options["hidden_size"], options["num_layers"], batch_first=True, dropout=options["dropout"]
        )
        self.output_size = options["hidden_size"]
        self.is_lstm = options["layer"] == "lstm"

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        return self.rnn(x, state)  # (B, T, H), h_n or (h_n, c_n)

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One frame ``x (B, D) -> (B, H)``: the layer's ``step`` (the engine's streaming frame)."""
        return self.rnn.step(x, state)

    def zero_state(self, batch: int, device: Any = None) -> Any:
        h = torch.zeros(self.rnn.num_layers, batch, self.output_size, device=device)  # (L, B, H)
        return (h, torch.zeros_like(h)) if self.is_lstm else h


def build_core(options: dict[str, Any], input_size: int) -> nn.Module:
    """The core that ``options`` names: ``{"cell": ...}`` or ``{"layer": ...}`` plus sizes and dropout."""
    if options.get("layer"):
        cls = layer_class(options["layer"])
        if cls is None:
            raise CLIError(
                f"--layer {options['layer']} needs rnnkit.{LAYER_TYPES[options['layer']]} (the torch.nn-style "
                "layers), which this rnnkit does not have yet; use --cell basic_rnn|basic_lstm|lstm|gru|layer_norm_lstm"
            )
        return LayerCore(options, input_size, cls)
    return CellCore(options, input_size)
