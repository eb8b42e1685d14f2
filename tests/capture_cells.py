"""Small user-written cells for the compiler's capture tests (tests/test_compiler_capture.py), written the way users
write them: TF style (``concat([inputs, state]) @ kernel``, parameters made in ``_build``) and torch style (separate
weights made in ``__init__``, ``F.linear``). ``CELLS``: name -> a factory of a built cell for input depth ``DEPTH``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import rnnkit
from rnnkit import LSTMStateTuple

DEPTH = 3


def _glorot(*shape: int) -> nn.Parameter:
    w = torch.empty(*shape)
    nn.init.xavier_uniform_(w)
    return nn.Parameter(w)


def _vector(n: int, scale: float = 0.5) -> nn.Parameter:
    return nn.Parameter(torch.randn(n) * scale)


class TFCell(rnnkit.RNNCell):
    """Base of the TF-style cells: ``num_units``, one state of that width, parameters made in ``_build``."""

    def __init__(self, num_units: int):
        super().__init__()
        self.num_units = num_units

    @property
    def state_size(self) -> int:
        return self.num_units

    @property
    def output_size(self) -> int:
        return self.num_units


class TFMinimalGated(TFCell):
    """Minimal gated unit: ``f = sig([x, h] Wf + bf)``, ``c = tanh([x, f h] Wc + bc)``, ``h' = (1 - f) h + f c``."""

    def _build(self, d: int) -> None:
        self.gate_kernel, self.gate_bias = _glorot(d + self.num_units, self.num_units), _vector(self.num_units)
        self.kernel, self.bias = _glorot(d + self.num_units, self.num_units), _vector(self.num_units)

    def call(self, inputs, state):
        f = torch.sigmoid(torch.matmul(torch.cat([inputs, state], 1), self.gate_kernel) + self.gate_bias)
        c = torch.tanh(torch.matmul(torch.cat([inputs, f * state], 1), self.kernel) + self.bias)
        h = (1 - f) * state + f * c
        return h, h


class TFLSTM(TFCell):
    """TF's ``BasicLSTMCell`` by hand: one ``[x, h] @ kernel``, gates ``i, j, f, o``, state ``(c, h)``."""

    @property
    def state_size(self):
        return LSTMStateTuple(self.num_units, self.num_units)

    def _build(self, d: int) -> None:
        self.kernel, self.bias = _glorot(d + self.num_units, 4 * self.num_units), _vector(4 * self.num_units)

    def call(self, inputs, state):
        c, h = state
        i, j, f, o = torch.split(torch.addmm(self.bias, torch.cat([inputs, h], 1), self.kernel), self.num_units, 1)
        c = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * torch.tanh(j)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, LSTMStateTuple(c, h)


class TorchGRU(rnnkit.RNNCell):
    """torch's GRU with reset *before* the multiply, written torch style (six weights, ``F.linear``)."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        for g in "rzn":
            setattr(self, f"w_i{g}", _glorot(hidden, input_size))
            setattr(self, f"w_h{g}", _glorot(hidden, hidden))
            setattr(self, f"b_{g}", _vector(hidden))
        self.input_depth = input_size

    state_size = property(lambda self: self.hidden)
    output_size = property(lambda self: self.hidden)

    def call(self, x, h):
        r = torch.sigmoid(F.linear(x, self.w_ir) + F.linear(h, self.w_hr, self.b_r))
        z = torch.sigmoid(F.linear(x, self.w_iz, self.b_z) + h @ self.w_hz.t())
        n = torch.tanh(F.linear(x, self.w_in, self.b_n) + F.linear(r * h, self.w_hn))
        h = torch.lerp(n, h, z)
        return h, h


class IndRNN(TFCell):
    """``h' = relu(x W + u * h + b)``, ``u`` a vector: no recurrent multiply."""

    def _build(self, d: int) -> None:
        self.w, self.u, self.b = _glorot(d, self.num_units), _vector(self.num_units), _vector(self.num_units)

    def call(self, inputs, state):
        h = F.relu(inputs @ self.w + self.u * state + self.b)
        return h, h


class SRU(TFCell):
    """SRU-style: gates of the inputs only, an elementwise recurrence on ``c``, a highway output."""

    def _build(self, d: int) -> None:
        n = self.num_units
        self.w = _glorot(d, 4 * n)
        self.v_f, self.v_r, self.b_f, self.b_r = (_vector(n) for _ in range(4))

    def call(self, inputs, c):
        xt, f, r, hw = (self.w.shape[1] // 4,) and torch.chunk(inputs @ self.w, 4, dim=1)
        f = torch.sigmoid(f + self.v_f * c + self.b_f)
        r = torch.sigmoid(r + self.v_r * c + self.b_r)
        c = f * c + (1 - f) * xt
        h = r * torch.tanh(c) + (1 - r) * hw
        return h, c


class LayerNormLSTM(rnnkit.RNNCell):
    """A hand-written layer-norm LSTM (torch style): mean and variance over the features, then gain and shift."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.wx, self.wh, self.b = _glorot(input_size, 4 * hidden), _glorot(hidden, 4 * hidden), _vector(4 * hidden)
        self.g, self.beta = nn.Parameter(1 + 0.1 * torch.randn(hidden)), _vector(hidden, 0.1)
        self.input_depth = input_size

    state_size = property(lambda self: (self.hidden, self.hidden))
    output_size = property(lambda self: self.hidden)

    def norm(self, v):
        mean = v.mean(-1)
        var = ((v - mean.unsqueeze(-1)) ** 2).mean(dim=1, keepdim=True)
        return (v - mean[:, None]) / torch.sqrt(var + 1e-5) * self.g + self.beta

    def call(self, x, state):
        c, h = state
        i, f, g, o = (x @ self.wx + h @ self.wh + self.b).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.norm(c))
        return h, (c, h)


class PeepholeLSTM(TFCell):
    """A peephole LSTM by hand, with a cell clip and ``F.layer_norm`` on the output."""

    state_size = property(lambda self: LSTMStateTuple(self.num_units, self.num_units))

    def _build(self, d: int) -> None:
        n = self.num_units
        self.kernel, self.bias = _glorot(d + n, 4 * n), _vector(4 * n)
        self.w_i, self.w_f, self.w_o = _vector(n), _vector(n), _vector(n)

    def call(self, inputs, state):
        c, h = state
        i, j, f, o = torch.chunk(F.linear(torch.cat([inputs, h], 1), self.kernel.t(), self.bias), 4, 1)
        c = torch.sigmoid(f + self.w_f * c) * c + torch.sigmoid(i + self.w_i * c) * torch.tanh(j)
        c = torch.clamp(c, -3.0, 3.0)
        h = torch.sigmoid(o + self.w_o * c) * torch.tanh(c)
        return F.layer_norm(h, (self.num_units,)), LSTMStateTuple(c, h)


class MultiplicativeLSTM(TFCell):
    """mLSTM: ``m = (x Wmx) * (h Wmh)``, gates from ``[x, m]``: two levels of recurrent multiplies."""

    state_size = property(lambda self: LSTMStateTuple(self.num_units, self.num_units))

    def _build(self, d: int) -> None:
        n = self.num_units
        self.wmx, self.wmh = _glorot(d, n), _glorot(n, n)
        self.kernel, self.bias = _glorot(d + n, 4 * n), _vector(4 * n)

    def call(self, inputs, state):
        c, h = state
        m = (inputs @ self.wmx) * (h @ self.wmh)
        i, j, f, o = torch.split(torch.cat([inputs, m], 1) @ self.kernel + self.bias, self.num_units, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(j)
        return torch.sigmoid(o) * torch.tanh(c), LSTMStateTuple(c, torch.sigmoid(o) * torch.tanh(c))


class Nested(NamedTuple):
    core: LSTMStateTuple
    count: torch.Tensor


class CoupledZoneout(TFCell):
    """A coupled input-forget LSTM with zoneout masks drawn once per sequence (``begin_sequence``), a shared
    variational mask, a nested state with a passthrough leaf, softplus, hard sigmoid, ``where`` on the inputs, and
    ``torch.zeros`` of the batch."""

    state_size = property(lambda self: Nested(LSTMStateTuple(self.num_units, self.num_units), 2))

    def _build(self, d: int) -> None:
        n = self.num_units
        self.kernel, self.bias = _glorot(d + n, 3 * n), _vector(3 * n)
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.register_buffer("shift", torch.full((1, n), 0.1))
        self.keep = torch.bernoulli(torch.full((1, n), 0.8))  # a plain tensor attribute: one row for every sequence
        self.zone = None

    def begin_sequence(self, batch_size: int) -> None:
        self.zone = torch.bernoulli(torch.full((batch_size, self.num_units), 0.5, dtype=self.kernel.dtype))

    def call(self, inputs, state):
        (c, h), count = state
        x = torch.where(inputs > 0, inputs, 0.5 * inputs)
        f, j, o = torch.split(torch.cat([x, h * self.keep], 1) @ self.kernel + self.bias, self.num_units, 1)
        f = F.hardsigmoid(f)
        new_c = f * c + (1 - f) * F.softplus(j) * self.scale
        new_h = torch.sigmoid(o) * torch.tanh(new_c) + self.shift + torch.zeros(inputs.shape[0], self.num_units)
        c = self.zone * c + (1 - self.zone) * new_c
        h = self.zone * h + (1 - self.zone) * new_h
        return h, Nested(LSTMStateTuple(c, h), count)


class BoolMasks(TFCell):
    """Comparisons as masks: one of the inputs (a ``step`` slot, as 0/1), one of the state crossing a multiply."""

    def _build(self, d: int) -> None:
        self.kernel = _glorot(self.num_units, self.num_units)
        self.w = _glorot(d, self.num_units)

    def call(self, inputs, state):
        on = inputs[:, :1] > 0
        pos = state > 0
        g = (state * pos) @ self.kernel + inputs @ self.w
        h = torch.where(on, torch.tanh(g), torch.where(pos, state, 0.5 * g))
        return h, h


class TorchModules(rnnkit.RNNCell):
    """Torch style with submodules: ``nn.Linear`` (one without bias), ``nn.LayerNorm``, ``nn.Dropout`` (eval), a view,
    an output projection of the new state."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(input_size, 2 * hidden)
        self.hh = nn.Linear(hidden, 2 * hidden, bias=False)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(0.3)
        self.w_out = nn.Parameter(torch.randn(hidden, hidden) * 0.3)
        self.input_depth = input_size

    state_size = property(lambda self: self.hidden)
    output_size = property(lambda self: self.hidden)

    def call(self, x, h):
        a, b = (self.ih(self.drop(x)) + self.hh(h)).view(-1, 2 * self.hidden).chunk(2, dim=-1)
        h = self.norm(torch.sigmoid(a) * h + F.silu(b))
        return torch.matmul(h, self.w_out), h


CELLS: dict[str, Callable[[], rnnkit.RNNCell]] = {
    "tf_minimal_gated": lambda: _built(TFMinimalGated(5)),
    "tf_lstm": lambda: _built(TFLSTM(4)),
    "torch_gru": lambda: TorchGRU(DEPTH, 5),
    "indrnn": lambda: _built(IndRNN(6)),
    "sru": lambda: _built(SRU(4)),
    "layer_norm_lstm": lambda: LayerNormLSTM(DEPTH, 4),
    "peephole_lstm": lambda: _built(PeepholeLSTM(4)),
    "multiplicative_lstm": lambda: _built(MultiplicativeLSTM(4)),
    "coupled_zoneout": lambda: _built(CoupledZoneout(4)),
    "bool_masks": lambda: _built(BoolMasks(4)),
    "torch_modules": lambda: TorchModules(DEPTH, 4).eval(),
}


def _built(cell: rnnkit.RNNCell) -> rnnkit.RNNCell:
    cell.build(DEPTH)
    return cell
