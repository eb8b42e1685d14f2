"""rnnkit: TensorFlow 1's recurrent-cell system and PyTorch's RNN layers, on one engine, in PyTorch.

Cells (``rnnkit.cells``) hold the math of one step with TF's parameter layout; runners
(``rnnkit.runners``) unroll any cell over time. ``import rnnkit as tf`` gives TF1's names
(``tf.nn.rnn_cell.BasicLSTMCell``, ``tf.nn.dynamic_rnn``, ``tf.contrib.rnn...``).

Example::

    >>> import torch, rnnkit
    >>> cell = rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(128) for _ in range(2)])
    >>> outputs, state = rnnkit.dynamic_rnn(cell, torch.randn(32, 10, 100))
    >>> tuple(outputs.shape), len(state)
    ((32, 10, 128), 2)
"""

import torch as _torch

from . import convert, engine, errors, runners
from ._structure import LSTMStateTuple
from ._tf_namespace import TF_KINDS as _TF_KINDS
from ._tf_namespace import compat, contrib, nn
from ._version import __version__ as __version__
from .cells import BasicLSTMCell as BasicLSTMCell
from .cells import BasicRNNCell as BasicRNNCell
from .cells import Dimension as Dimension
from .cells import DropoutWrapper as DropoutWrapper
from .cells import GRUCell as GRUCell
from .cells import LayerNormBasicLSTMCell as LayerNormBasicLSTMCell
from .cells import LayerRNNCell as LayerRNNCell
from .cells import LSTMCell as LSTMCell
from .cells import MultiRNNCell as MultiRNNCell
from .cells import ResidualWrapper as ResidualWrapper
from .cells import RNNCell as RNNCell
from .cells import RNNCellWrapper as RNNCellWrapper
from .cells import TensorShape as TensorShape
from .cells import cell_names as _cell_names
from .convert import export_onnx
from .describe import Summary, summary
from .engine import backend_info
from .layers import GRU, LSTM, RNN
from .runners import (  # noqa: F401 (re-exported: `__all__ += runners.__all__`)
    bidirectional_dynamic_rnn,
    dynamic_rnn,
    reverse_sequence,
    stack_bidirectional_dynamic_rnn,
    static_bidirectional_rnn,
    static_rnn,
)
from .saving import load, save

# The TF1 cell classes above are re-exported by alias (PEP 484); `__all__` takes their names from the cell
# registry, the runners' from `runners.__all__`.

# TF dtype names, so that `dtype=tf.float32` keeps working after `import rnnkit as tf`.
float16, float32, float64, bfloat16 = _torch.float16, _torch.float32, _torch.float64, _torch.bfloat16

__all__ = [
    "LSTMStateTuple",
    "RNN",
    "LSTM",
    "GRU",
    "summary",
    "Summary",
    "convert",
    "engine",
    "errors",
    "backend_info",
    "save",
    "load",
    "export_onnx",
    "nn",
    "contrib",
    "compat",
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "TensorShape",
    "Dimension",
]
__all__ += _cell_names(_TF_KINDS)  # RNNCell, RNNCellWrapper, the TF1 cells, MultiRNNCell and the wrappers
__all__ += runners.__all__  # dynamic_rnn, static_rnn, ..., reverse_sequence


def __getattr__(name: str) -> type:
    """A registered TF1 cell class that no line above imports (a new cell file's), as ``rnnkit.ElmanCell``."""
    if name in _cell_names(_TF_KINDS):
        from .cells import cell_class

        return cell_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
