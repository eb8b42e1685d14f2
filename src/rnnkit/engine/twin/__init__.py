"""Pure-PyTorch twins of the compiled kernels: the same algorithm, the time loop in Python.

Each ``<family>_forward`` / ``<family>_backward`` takes the arguments of the ``torch.ops.rnnkit`` op of the same
name (``csrc/ops.h``) and returns its outputs, so the engine swaps one module for the other; what a forward saves
for its backward (the trailing outputs when ``save``) is the twin's own, read only by the twin's backward. They
run where the compiled kernels cannot be built, and on any device. The forward steps are the cells' own
(``rnnkit.cells``: ``lstm_pointwise``, ``layer_norm_lstm_pointwise``, the GRU steps, ``basic_rnn_pointwise``) in
one shared loop (:mod:`.loop`), the same code the fused layers differentiate for higher-order gradients; the
backward steps are the hand-derived derivatives the compiled kernels use.

Layout: packed rows (``total, features``); step ``t`` owns rows ``off[t] : off[t] + n[t]``, where
``n = batch_sizes`` is non-increasing (sequences sorted longest first). Weights are ``(in, out)``
(``x @ W``); LSTM ``gate_order`` gives the blocks of ``(i, g, f, o)``; GRU blocks are ``r, z, n``.

Example::

    >>> from rnnkit.engine import twin
    >>> x, bs = torch.randn(3, 3), torch.tensor([2, 1])   # 2 steps, batch 2 then 1
    >>> w_x, w_h = torch.randn(3, 4), torch.randn(4, 4)
    >>> y, h = twin.rnn_forward(x, w_x, None, bs, torch.zeros(2, 4), w_h, None, False, False)
    >>> tuple(y.shape), tuple(h.shape)
    ((3, 4), (2, 4))
"""

from __future__ import annotations

from .frame import FRAME_LAYOUT, frame_forward
from .gru import gru_backward, gru_forward
from .lnlstm import lnlstm_backward, lnlstm_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward

# (The names of the ``torch.ops.rnnkit`` ops they stand for.)
__all__ = ["lstm_forward", "lstm_backward", "lnlstm_forward", "lnlstm_backward"]
__all__ += ["gru_forward", "gru_backward", "rnn_forward", "rnn_backward", "frame_forward", "FRAME_LAYOUT"]
