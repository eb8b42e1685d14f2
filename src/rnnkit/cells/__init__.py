"""Cells: the math of one time step each, with parameters in TF's layout and names.

Every cell class declares itself in ``rnnkit.cells.registry`` (``register_cell``); the helpers below are the
cells' shared vocabulary (activations by name, variational dropout masks, argument checks) for the layers,
the engine and the converters.

Every module of this package is imported with it, so a new cell file declares itself (its ``@register_cell``
runs) without an edit here; a registered class is reachable by name (``rnnkit.cells.ElmanCell``) whether or not
it is imported below.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from ._base import (
    ACTIVATIONS,
    LayerRNNCell,
    RNNCell,
    SingleStateCell,
    check_units,
    dropout_mask,
    edit_counts,
    get_activation,
    register_frame_runner,
)
from .basic import BasicRNNCell
from .gru import GRUCell
from .layer_norm import TF_LAYER_NORM_EPS, LayerNormBasicLSTMCell
from .lstm import BasicLSTMCell, LSTMCell, check_clip
from .multi import MultiRNNCell
from .registry import cell_class, cell_entries, cell_names, register_cell
from .shape import Dimension, TensorShape
from .torch_layout import TorchGRUCell, TorchLSTMCell, TorchRNNCell
from .wrappers import DropoutWrapper, ResidualWrapper, RNNCellWrapper, default_state_filter

__all__ = [
    "RNNCell",
    "LayerRNNCell",
    "SingleStateCell",
    "BasicRNNCell",
    "BasicLSTMCell",
    "LSTMCell",
    "GRUCell",
    "LayerNormBasicLSTMCell",
    "MultiRNNCell",
    "RNNCellWrapper",
    "DropoutWrapper",
    "ResidualWrapper",
    "TorchRNNCell",
    "TorchLSTMCell",
    "TorchGRUCell",
    "TensorShape",
    "Dimension",
    "register_cell",
    "cell_entries",
    "cell_names",
    "cell_class",
    "ACTIVATIONS",
    "TF_LAYER_NORM_EPS",
    "get_activation",
    "dropout_mask",
    "check_units",
    "check_clip",
    "default_state_filter",
    "register_frame_runner",
    "edit_counts",
]


def _import_cell_modules() -> None:
    """Import every module of this package that is not imported yet (a new cell file among them)."""
    for info in _pkgutil.iter_modules(__path__):
        _importlib.import_module(f"{__name__}.{info.name}")


def __getattr__(name: str) -> type:
    """A registered cell class that no line above imports (a new cell file's), by its registered name."""
    entry = {e.name: e.cls for e in cell_entries()}.get(name)
    if entry is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return entry


_import_cell_modules()
