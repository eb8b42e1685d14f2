"""Cells: the math of one time step each, with parameters in TF's layout and names."""

from ._base import RNNCell
from .basic import BasicRNNCell
from .gru import GRUCell
from .layer_norm import LayerNormBasicLSTMCell
from .lstm import BasicLSTMCell, LSTMCell
from .multi import MultiRNNCell
from .torch_layout import TorchGRUCell, TorchLSTMCell, TorchRNNCell
from .wrappers import DropoutWrapper, ResidualWrapper, RNNCellWrapper

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
]
