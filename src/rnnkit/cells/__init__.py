"""Cells: the math of one time step each, with parameters in TF's layout and names.

Every cell class declares itself in ``rnnkit.cells.registry`` (``register_cell``); the helpers below are the
cells' shared vocabulary (activations by name, variational dropout masks, argument checks) for the layers,
the engine and the converters.
"""

from ._base import ACTIVATIONS, RNNCell, check_units, dropout_mask, get_activation
from .basic import BasicRNNCell
from .gru import GRUCell
from .layer_norm import TF_LAYER_NORM_EPS, LayerNormBasicLSTMCell
from .lstm import BasicLSTMCell, LSTMCell, check_clip
from .multi import MultiRNNCell
from .registry import cell_class, cell_entries, cell_names, register_cell
from .torch_layout import TorchGRUCell, TorchLSTMCell, TorchRNNCell
from .wrappers import DropoutWrapper, ResidualWrapper, RNNCellWrapper, default_state_filter

__all__ = [
    "RNNCell",
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
]
