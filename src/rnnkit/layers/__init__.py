"""PyTorch-style recurrent layers on rnnkit's cells and runner: ``RNN``, ``LSTM``, ``GRU``.

Drop-ins for ``torch.nn.RNN/LSTM/GRU`` (arguments, shapes, parameter names and order, initialisation,
``PackedSequence``, unbatched input), with TF's variable-length ``lengths=``, TF1's cell options
(``LSTM(forget_bias=, peepholes=, cell_clip=, layer_norm=)``, ``GRU(reset_after=False)``),
``recurrent_dropout``, ``zoneout`` and streaming ``step()``.

Example::

    >>> import torch
    >>> from rnnkit import LSTM
    >>> lstm = LSTM(100, 20, num_layers=3)
    >>> output, (h_n, c_n) = lstm(torch.randn(5, 2, 100))
    >>> tuple(output.shape), tuple(h_n.shape)
    ((5, 2, 20), (3, 2, 20))
"""

from ._base import RNNLayer
from .lstm import LSTM
from .rnn import GRU, RNN

__all__ = ["RNN", "LSTM", "GRU", "RNNLayer"]
