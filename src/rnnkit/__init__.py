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

from . import convert, engine, errors
from ._structure import LSTMStateTuple
from ._tf_namespace import compat, contrib, nn
from .cells import (
    BasicLSTMCell,
    BasicRNNCell,
    DropoutWrapper,
    GRUCell,
    LayerNormBasicLSTMCell,
    LSTMCell,
    MultiRNNCell,
    ResidualWrapper,
    RNNCell,
    RNNCellWrapper,
)
from .convert import export_onnx, load, save
from .describe import Summary, summary
from .engine import backend_info
from .layers import GRU, LSTM, RNN
from .runners import (
    bidirectional_dynamic_rnn,
    dynamic_rnn,
    reverse_sequence,
    stack_bidirectional_dynamic_rnn,
    static_bidirectional_rnn,
    static_rnn,
)

# TF dtype names, so that `dtype=tf.float32` keeps working after `import rnnkit as tf`.
float16, float32, float64, bfloat16 = _torch.float16, _torch.float32, _torch.float64, _torch.bfloat16

__version__ = "0.1.0"

__all__ = [
    "RNNCell",
    "RNNCellWrapper",
    "BasicRNNCell",
    "BasicLSTMCell",
    "LSTMCell",
    "GRUCell",
    "LayerNormBasicLSTMCell",
    "MultiRNNCell",
    "DropoutWrapper",
    "ResidualWrapper",
    "LSTMStateTuple",
    "RNN",
    "LSTM",
    "GRU",
    "dynamic_rnn",
    "static_rnn",
    "bidirectional_dynamic_rnn",
    "static_bidirectional_rnn",
    "stack_bidirectional_dynamic_rnn",
    "reverse_sequence",
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
]
