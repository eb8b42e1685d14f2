"""The twin of ``torch.ops.rnnkit.frame_forward`` (``csrc/frame.cpp``): one frame of a stack of layers, each layer its
family's forward over a single step.

The stack is described by flat lists, layer after layer (``FRAME_LAYOUT``): ``desc`` holds the family's id and its
int options, ``weights`` its weight arguments (an empty tensor for an absent optional one), ``states`` its state
tensors ``(B, size)``, ``scalars`` its float options. Returns ``[y (B, O), every layer's next states in order]``.
``stacked = n > 0``: the states come as ``n`` tensors ``(layers, B, size)`` (torch.nn's ``h_0``, ``c_0``) and go back
so.

Example::

    >>> import torch
    >>> from rnnkit.engine import twin
    >>> x, h = torch.randn(2, 3), torch.zeros(2, 4)
    >>> w_x, w_h = torch.randn(3, 4), torch.randn(4, 4)
    >>> y, h1 = twin.frame_forward(x, [w_x, torch.empty(0), w_h], [h], [3, 0], [])
    >>> torch.allclose(y, torch.tanh(x @ w_x)), torch.equal(y, h1)   # one step: the output is the state
    (True, True)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gru import gru_forward
from .lnlstm import lnlstm_forward
from .lstm import lstm_forward
from .rnn import rnn_forward

__all__ = ["frame_forward", "FRAME_LAYOUT"]

#: family -> (id, int options, weights, states, scalars): the frame's description, as ``csrc/frame.cpp`` reads it
FRAME_LAYOUT = {
    "lstm": (0, 4, 5, 2, 3),  # gate_order; w_x, bias, w_h, peep, w_proj; h, c; forget_bias, cell_clip, proj_clip
    "lnlstm": (1, 4, 5, 2, 2),  # gate_order; w_x, bias, w_h, gamma, beta; h, c; forget_bias, eps
    "gru": (2, 1, 6, 1, 0),  # reset_after; w_x, bias_x, w_h, bias_h, w_xn, w_hn; h
    "rnn": (3, 1, 3, 1, 0),  # relu; w_x, bias, w_h; h
}
_BY_ID = {spec[0]: (name, *spec[1:]) for name, spec in FRAME_LAYOUT.items()}


def _present(t: Tensor) -> Tensor | None:
    return t if t.numel() else None


def frame_forward(
    x: Tensor, weights: list[Tensor], states: list[Tensor], desc: list[int], scalars: list[float], stacked: int = 0
) -> list[Tensor]:
    if stacked:  # n tensors (layers, B, size): part j of layer l is states[j][l]
        y, *finals = frame_forward(x, weights, [p[k] for k in range(len(states[0])) for p in states], desc, scalars)
        return [y, *(torch.stack(finals[j::stacked]) for j in range(stacked))]
    bs = torch.tensor([x.shape[0]])  # one step of every row
    out: list[Tensor] = []
    d = w = s = f = 0
    while d < len(desc):
        name, n_int, n_w, n_s, n_f = _BY_ID[desc[d]]
        ints, ws = list(desc[d + 1 : d + 1 + n_int]), [_present(t) for t in weights[w : w + n_w]]
        st, sc = states[s : s + n_s], scalars[f : f + n_f]
        d, w, s, f = d + 1 + n_int, w + n_w, s + n_s, f + n_f
        if name == "lstm":
            w_x, bias, w_h, peep, w_proj = ws
            r = lstm_forward(x, w_x, bias, bs, *st, w_h, peep, w_proj, None, None, ints, *sc, False)
        elif name == "lnlstm":
            w_x, bias, w_h, gamma, beta = ws
            r = lnlstm_forward(x, w_x, bias, bs, *st, w_h, gamma, beta, None, None, ints, *sc, False)
        elif name == "gru":
            w_x, bias_x, w_h, bias_h, w_xn, w_hn = ws
            r = gru_forward(x, w_x, bias_x, bs, *st, w_h, bias_h, w_xn, w_hn, None, None, bool(ints[0]), False)
        else:
            w_x, bias, w_h = ws
            r = rnn_forward(x, w_x, bias, bs, *st, w_h, None, bool(ints[0]), False)
        x = r[0]
        out.extend(r[1 : 1 + n_s])
    return [x, *out]
