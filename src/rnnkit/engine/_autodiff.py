"""The fused kernels' forward in differentiable torch ops: what a backward with ``create_graph=True`` differentiates.

The fused kernels' backward is hand-written and computes numbers, not a graph, so a gradient it returns cannot be
differentiated again (gradient penalties, MAML, Hessian-vector products). When autograd asks a fused layer for a
differentiable gradient (it runs the backward in grad mode exactly when ``create_graph=True``), the layer's
``autograd.Function`` recomputes its forward here, on the tensors it saved, and lets autograd differentiate that:
the gradient and everything after it are then exact to any order.

Each function takes a family's kernel inputs (see ``_functions``: packed rows ``(total, features)``, weights
``(in, out)``, per-sequence masks) and returns what the kernel returns: ``(y, h_T[, c_T])``. The step equations are
the cells' own (``lstm_pointwise``, ``layer_norm_lstm_pointwise``, the GRU steps, ``basic_rnn_pointwise``) in the
pure-PyTorch kernels' loop: these are the twins' forwards themselves (``twin.<family>.<family>_sequence``), written
in out-of-place torch ops so that autograd can differentiate them.

Example::

    >>> x, bs = torch.randn(5, 3, dtype=torch.float64), torch.tensor([2, 2, 1])   # 3 steps, batch 2
    >>> w_x, w_h = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    >>> from rnnkit.engine._autodiff import rnn
    >>> y, h = rnn(x, w_x, None, bs, torch.zeros(2, 4, dtype=torch.float64), w_h, None, None, False)
    >>> tuple(y.shape), tuple(h.shape)
    ((5, 4), (2, 4))
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .twin.gru import gru_sequence as gru
from .twin.lnlstm import lnlstm_sequence as lnlstm
from .twin.lstm import lstm_sequence as lstm
from .twin.rnn import rnn_sequence as rnn

__all__ = ["lstm", "lnlstm", "gru", "rnn", "FAMILIES"]

#: The differentiable forward of each kernel family, by the kernels' prefix.
FAMILIES: dict[str, Callable[..., tuple[Tensor, ...]]] = {"lstm": lstm, "lnlstm": lnlstm, "gru": gru, "rnn": rnn}
