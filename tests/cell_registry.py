"""Examples of every registered cell class: they drive the gradcheck, dtype, state-dict and golden-name tests.

The cases come from rnnkit's cell registry (``rnnkit.cells.cell_names``): ``EXAMPLES`` gives, per registered
class name, its configurations (case name -> a factory of a fresh cell), and ``CELLS`` is every registered
cell, stack and wrapper class's examples, in registry order. A registered class without examples is listed in
``MISSING`` (and ``test_cells_registry.py::test_every_registered_cell_has_examples`` fails), so a new cell
cannot escape these cross-cutting tests. ``INPUT_DEPTH`` is the depth every case is run on.

``temporary_cells()`` restores the registry after a test that registers a toy cell.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import rnnkit as rk
from rnnkit.cells import cell_entries, registry

INPUT_DEPTH = 3

# The registry kinds built by name (the "base" classes are abstract; "torch" cells are the layers' steps, covered
# through rnnkit.RNN/LSTM/GRU by tests/test_layers_golden.py and the layer tests).
KINDS = ("leaf", "stack", "wrapper")

EXAMPLES: dict[str, dict[str, Callable[[], rk.RNNCell]]] = {
    "BasicRNNCell": {
        "basic_rnn": lambda: rk.BasicRNNCell(4),
        "basic_rnn_relu": lambda: rk.BasicRNNCell(4, activation="relu"),
    },
    "BasicLSTMCell": {
        "basic_lstm": lambda: rk.BasicLSTMCell(4),
        "basic_lstm_concat_state": lambda: rk.BasicLSTMCell(4, forget_bias=0.5, state_is_tuple=False),
    },
    "LSTMCell": {
        "lstm": lambda: rk.LSTMCell(4),
        "lstm_peephole": lambda: rk.LSTMCell(4, use_peepholes=True),
        "lstm_full": lambda: rk.LSTMCell(5, use_peepholes=True, cell_clip=0.8, num_proj=3, proj_clip=0.6),
        "lstm_proj_concat_state": lambda: rk.LSTMCell(4, num_proj=2, state_is_tuple=False),
    },
    "GRUCell": {"gru": lambda: rk.GRUCell(4)},
    "LayerNormBasicLSTMCell": {
        "layer_norm_lstm": lambda: rk.LayerNormBasicLSTMCell(4),
        "layer_norm_lstm_off": lambda: rk.LayerNormBasicLSTMCell(4, layer_norm=False),
    },
    "MultiRNNCell": {
        "multi": lambda: rk.MultiRNNCell([rk.BasicLSTMCell(4), rk.GRUCell(3), rk.BasicRNNCell(2)]),
        "multi_concat_state": lambda: rk.MultiRNNCell(
            [rk.BasicLSTMCell(4, state_is_tuple=False), rk.GRUCell(3)], state_is_tuple=False
        ),
    },
    "DropoutWrapper": {"dropout_wrapper": lambda: rk.DropoutWrapper(rk.LSTMCell(4, num_proj=2), 0.7, 0.8, 0.9)},
    "ResidualWrapper": {"residual_wrapper": lambda: rk.ResidualWrapper(rk.GRUCell(INPUT_DEPTH))},
}


def registered_classes() -> list[str]:
    """rnnkit's own registered classes of ``KINDS`` (cells a test registers for itself are not rnnkit's)."""
    return [e.name for e in cell_entries(KINDS) if e.cls.__module__.startswith("rnnkit.")]


MISSING = [name for name in registered_classes() if name not in EXAMPLES]
CELLS: dict[str, Callable[[], rk.RNNCell]] = {
    case: make for name in registered_classes() for case, make in EXAMPLES.get(name, {}).items()
}


@contextlib.contextmanager
def temporary_cells() -> Iterator[None]:
    """Undo every registration made inside the block (the registry has no public way to forget a cell)."""
    saved = dict(registry._ENTRIES)
    try:
        yield
    finally:
        registry._ENTRIES.clear()
        registry._ENTRIES.update(saved)
