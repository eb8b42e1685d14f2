"""User-written cells, written the way users write them: the registry the custom-cell tests run.

Each family is written twice, as its users would write it:

* **TF1-protocol style**: a subclass of ``rnnkit.RNNCell`` (``tf.nn.rnn_cell.RNNCell``) with ``state_size``,
  ``output_size``, ``build(self, inputs_shape)`` creating TF-named variables with ``self.add_variable`` (kept as
  ``self._kernel``...), ``self.built = True``, and a ``call`` that concatenates ``[inputs, state]`` and multiplies
  by the kernel, as TF code does;
* **torch style**: ``nn.Linear`` / ``nn.Parameter`` made in ``__init__`` from a known ``input_size``, no ``build``.

``USER_CELLS`` lists one ``UserCell`` per family: ``tf_style(num_units, input_size)`` and
``torch_style(num_units, input_size)`` make a fresh cell (``input_size=None``: the TF-style cell builds lazily);
``tf_to_torch(tf_state_dict, input_size, num_units)`` is the torch-style state dict holding the same weights, so
that both compute the same function; ``twin(num_units)``, where rnnkit ships the same step, is that cell, whose
state dict keys are the TF-style cell's. Import it as ``from user_cells import USER_CELLS`` (``tests/`` is on
``sys.path`` as for ``cell_registry``).

Only plain torch ops: ``torch.cat``, ``@`` / ``nn.Linear``, ``.chunk`` / ``.split``, ``torch.sigmoid`` /
``torch.tanh`` / ``torch.relu`` / ``F.softplus``, ``torch.clamp``, ``torch.where``, ``mean`` / ``var`` over the
feature axis.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import rnnkit
import rnnkit as tf  # the TF1 protocol cells are written as TF1 code would be, after `import rnnkit as tf`

Weights = dict[str, torch.Tensor]


def _rows(kernel: torch.Tensor, input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A TF kernel ``[x, h] @ kernel`` as the two ``nn.Linear`` weights ``(out, in)`` of its x and h rows."""
    return kernel[:input_size].T, kernel[input_size:].T


# -- 1. minimal gated unit (Zhou et al. 2016) ------------------------------------------------------------------
class MGUCell(tf.nn.rnn_cell.RNNCell):
    """f = sigmoid([x, h] W_f + b_f);  c = tanh([x, f * h] W_c + b_c);  h' = (1 - f) * h + f * c."""

    def __init__(self, num_units, input_size=None, name=None):
        super().__init__(input_size=input_size, name=name)
        self._num_units = num_units

    @property
    def state_size(self):
        return self._num_units

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        depth = inputs_shape[1].value
        self._gate_kernel = self.add_variable("gates/kernel", [depth + self._num_units, self._num_units])
        self._gate_bias = self.add_variable("gates/bias", [self._num_units], initializer=1.0)
        self._candidate_kernel = self.add_variable("candidate/kernel", [depth + self._num_units, self._num_units])
        self._candidate_bias = self.add_variable("candidate/bias", [self._num_units], initializer="zeros")
        self.built = True

    def call(self, inputs, state):
        f = torch.sigmoid(torch.cat([inputs, state], 1) @ self._gate_kernel + self._gate_bias)
        c = torch.tanh(torch.cat([inputs, f * state], 1) @ self._candidate_kernel + self._candidate_bias)
        h = (1 - f) * state + f * c
        return h, h


class TorchMGU(rnnkit.RNNCell):
    def __init__(self, num_units, input_size):
        super().__init__()
        self.state_size = self.output_size = num_units
        self.x2f, self.h2f = nn.Linear(input_size, num_units), nn.Linear(num_units, num_units, bias=False)
        self.x2c, self.h2c = nn.Linear(input_size, num_units), nn.Linear(num_units, num_units, bias=False)

    def call(self, x, h):
        f = torch.sigmoid(self.x2f(x) + self.h2f(h))
        c = torch.tanh(self.x2c(x) + self.h2c(f * h))
        h = (1 - f) * h + f * c
        return h, h


def _mgu_to_torch(w: Weights, d: int, n: int) -> Weights:
    (x2f, h2f), (x2c, h2c) = _rows(w["gates.kernel"], d), _rows(w["candidate.kernel"], d)
    return {"x2f.weight": x2f, "x2f.bias": w["gates.bias"], "h2f.weight": h2f,
            "x2c.weight": x2c, "x2c.bias": w["candidate.bias"], "h2c.weight": h2c}  # fmt: skip


# -- 2. IndRNN (Li et al. 2018): an elementwise recurrence ---------------------------------------------------
class IndRNNCell(tf.nn.rnn_cell.RNNCell):
    """h' = relu(x W + u * h + b), ``u`` one recurrent weight per unit."""

    def __init__(self, num_units, input_size=None):
        super().__init__(input_size=input_size)
        self._num_units = num_units

    @property
    def state_size(self):
        return self._num_units

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        self._input_kernel = self.add_variable("input_kernel", [inputs_shape[-1], self._num_units])
        uniform = lambda shape, dtype=None: torch.rand(shape, dtype=dtype)  # noqa: E731 (a Keras-style initializer)
        self._recurrent_kernel = self.add_variable("recurrent_kernel", [self._num_units], initializer=uniform)
        self._bias = self.add_variable("bias", [self._num_units], initializer=0.0)
        self.built = True

    def call(self, inputs, state):
        h = torch.relu(inputs @ self._input_kernel + self._recurrent_kernel * state + self._bias)
        return h, h


class TorchIndRNN(rnnkit.RNNCell):
    def __init__(self, num_units, input_size):
        super().__init__()
        self.num_units = num_units
        self.input = nn.Linear(input_size, num_units)
        self.u = nn.Parameter(torch.rand(num_units))

    state_size = output_size = property(lambda self: self.num_units)

    def call(self, x, h):
        h = torch.relu(self.input(x) + self.u * h)
        return h, h


def _indrnn_to_torch(w: Weights, d: int, n: int) -> Weights:
    return {"input.weight": w["input_kernel"].T, "input.bias": w["bias"], "u": w["recurrent_kernel"]}


# -- 3. SRU (Lei et al. 2017): no matrix reads the state ---------------------------------------------------
class SRUCell(tf.nn.rnn_cell.RNNCell):
    """x~, fx, rx, s = split(x W, 4);  f = sigmoid(fx + v_f * c + b_f);  r = sigmoid(rx + v_r * c + b_r);
    c' = f * c + (1 - f) * x~;  h = r * tanh(c') + (1 - r) * s. State ``c``, output ``h``."""

    def __init__(self, num_units, input_size=None):
        super().__init__(input_size=input_size)
        self._num_units = num_units

    @property
    def state_size(self):
        return self._num_units

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        depth = int(inputs_shape[-1])
        self._kernel = self.add_variable("kernel", [depth, 4 * self._num_units])
        self._weight_c = self.add_variable("weight_c", [2 * self._num_units], initializer=nn.init.uniform_)
        self._bias = self.add_variable("bias", [2 * self._num_units], initializer="zeros")
        self.built = True

    def call(self, inputs, state):
        x_tilde, fx, rx, skip = (inputs @ self._kernel).chunk(4, 1)
        v_f, v_r = self._weight_c.chunk(2)
        b_f, b_r = self._bias.chunk(2)
        f = torch.sigmoid(fx + v_f * state + b_f)
        r = torch.sigmoid(rx + v_r * state + b_r)
        c = f * state + (1 - f) * x_tilde
        h = r * torch.tanh(c) + (1 - r) * skip
        return h, c


class TorchSRU(rnnkit.RNNCell):
    def __init__(self, num_units, input_size):
        super().__init__()
        self.n = num_units
        self.W = nn.Linear(input_size, 4 * num_units, bias=False)
        self.v_f, self.v_r = nn.Parameter(torch.rand(num_units)), nn.Parameter(torch.rand(num_units))
        self.b_f, self.b_r = nn.Parameter(torch.zeros(num_units)), nn.Parameter(torch.zeros(num_units))

    state_size = output_size = property(lambda self: self.n)

    def call(self, x, c):
        x_tilde, fx, rx, skip = self.W(x).split(self.n, dim=1)
        f = torch.sigmoid(fx + self.v_f * c + self.b_f)
        r = torch.sigmoid(rx + self.v_r * c + self.b_r)
        c = f * c + (1 - f) * x_tilde
        return r * torch.tanh(c) + (1 - r) * skip, c


def _sru_to_torch(w: Weights, d: int, n: int) -> Weights:
    (v_f, v_r), (b_f, b_r) = w["weight_c"].chunk(2), w["bias"].chunk(2)
    return {"W.weight": w["kernel"].T, "v_f": v_f, "v_r": v_r, "b_f": b_f, "b_r": b_r}


# -- 4. coupled input-forget gate LSTM (CIFG; Greff et al. 2015): i = 1 - f ----------------------------------
class CIFGLSTMCell(tf.nn.rnn_cell.RNNCell):
    """j, f, o = split([x, h] W + b, 3);  f = sigmoid(f + forget_bias);  c' = f * c + (1 - f) * tanh(j);
    h' = sigmoid(o) * tanh(c'). State ``LSTMStateTuple(c, h)``."""

    def __init__(self, num_units, forget_bias=1.0, input_size=None):
        super().__init__(input_size=input_size)
        self._num_units, self._forget_bias = num_units, forget_bias

    @property
    def state_size(self):
        return tf.nn.rnn_cell.LSTMStateTuple(self._num_units, self._num_units)

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        depth = inputs_shape[1].value
        self._kernel = self.add_variable("kernel", [depth + self._num_units, 3 * self._num_units])
        self._bias = self.add_variable("bias", [3 * self._num_units], initializer="zeros")
        self.built = True

    def call(self, inputs, state):
        c, h = state
        j, f, o = (torch.cat([inputs, h], 1) @ self._kernel + self._bias).chunk(3, 1)
        f = torch.sigmoid(f + self._forget_bias)
        new_c = f * c + (1 - f) * torch.tanh(j)
        new_h = torch.sigmoid(o) * torch.tanh(new_c)
        return new_h, tf.nn.rnn_cell.LSTMStateTuple(new_c, new_h)


class TorchCIFG(rnnkit.RNNCell):
    """State: a plain tuple ``(c, h)``."""

    def __init__(self, num_units, input_size):
        super().__init__()
        self.state_size, self.output_size = (num_units, num_units), num_units
        self.gates = nn.Linear(input_size + num_units, 3 * num_units)

    def call(self, x, state):
        c, h = state
        j, f, o = self.gates(torch.cat([x, h], dim=1)).chunk(3, dim=1)
        f = torch.sigmoid(f + 1.0)
        c = f * c + (1 - f) * torch.tanh(j)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (c, h)


def _cifg_to_torch(w: Weights, d: int, n: int) -> Weights:
    return {"gates.weight": w["kernel"].T, "gates.bias": w["bias"]}


# -- 5. layer-norm LSTM, by hand (Ba et al. 2016, as TF contrib's LayerNormBasicLSTMCell) ----------------------
NORMS = ("input", "transform", "forget", "output", "state")


class LayerNormLSTMCell(tf.nn.rnn_cell.RNNCell):
    """i, j, f, o = split([x, h] W, 4), each layer-normalised; c' = LN(c * sigmoid(f + 1) + sigmoid(i) * tanh(j));
    h' = tanh(c') * sigmoid(o); ``LN(x) = (x - mean) / sqrt(var + eps) * gamma + beta`` over the units."""

    def __init__(self, num_units, epsilon=1e-12, input_size=None):
        super().__init__(input_size=input_size)
        self._num_units, self._epsilon = num_units, epsilon

    @property
    def state_size(self):
        return tf.nn.rnn_cell.LSTMStateTuple(self._num_units, self._num_units)

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        n = self._num_units
        self._kernel = self.add_variable("kernel", [inputs_shape[-1] + n, 4 * n])
        self._norms = {
            scope: (self.add_variable(f"{scope}/gamma", [n], initializer="ones"),
                    self.add_variable(f"{scope}/beta", [n], initializer="zeros"))
            for scope in NORMS
        }  # fmt: skip
        self.built = True

    def _norm(self, x, scope):
        gamma, beta = self._norms[scope]
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self._epsilon) * gamma + beta

    def call(self, inputs, state):
        c, h = state
        i, j, f, o = (torch.cat([inputs, h], 1) @ self._kernel).chunk(4, 1)
        i, j, f, o = (self._norm(g, s) for g, s in zip((i, j, f, o), NORMS[:4], strict=True))
        new_c = self._norm(c * torch.sigmoid(f + 1.0) + torch.sigmoid(i) * torch.tanh(j), "state")
        new_h = torch.tanh(new_c) * torch.sigmoid(o)
        return new_h, tf.nn.rnn_cell.LSTMStateTuple(new_c, new_h)


class TorchLayerNormLSTM(rnnkit.RNNCell):
    def __init__(self, num_units, input_size):
        super().__init__()
        self.n = num_units
        self.linear = nn.Linear(input_size + num_units, 4 * num_units, bias=False)
        self.gamma = nn.Parameter(torch.ones(5, num_units))  # rows: i, j, f, o, c
        self.beta = nn.Parameter(torch.zeros(5, num_units))

    state_size = property(lambda self: (self.n, self.n))
    output_size = property(lambda self: self.n)

    def norm(self, x, k):
        x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-12)
        return x * self.gamma[k] + self.beta[k]

    def call(self, x, state):
        c, h = state
        gates = self.linear(torch.cat([x, h], 1))
        i, j, f, o = (self.norm(g, k) for k, g in enumerate(gates.chunk(4, 1)))
        c = self.norm(c * torch.sigmoid(f + 1.0) + torch.sigmoid(i) * torch.tanh(j), 4)
        h = torch.tanh(c) * torch.sigmoid(o)
        return h, (c, h)


def _ln_to_torch(w: Weights, d: int, n: int) -> Weights:
    gamma = torch.stack([w[f"{s}.gamma"] for s in NORMS])
    return {"linear.weight": w["kernel"].T, "gamma": gamma, "beta": torch.stack([w[f"{s}.beta"] for s in NORMS])}


# -- 6. peephole LSTM, by hand (Gers & Schmidhuber 2000, as TF's LSTMCell(use_peepholes=True)) ------------------
class PeepholeLSTMCell(tf.nn.rnn_cell.RNNCell):
    """i, j, f, o = split([x, h] W + b, 4);  c' = sigmoid(f + 1 + w_f * c) * c + sigmoid(i + w_i * c) * tanh(j);
    h' = sigmoid(o + w_o * c') * tanh(c')."""

    def __init__(self, num_units, input_size=None):
        super().__init__(input_size=input_size)
        self._num_units = num_units

    @property
    def state_size(self):
        return tf.nn.rnn_cell.LSTMStateTuple(self._num_units, self._num_units)

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        n = self._num_units
        self._kernel = self.add_variable("kernel", shape=[inputs_shape[1].value + n, 4 * n])
        self._bias = self.add_variable("bias", shape=[4 * n], initializer="zeros")
        self._w_f_diag = self.add_variable("w_f_diag", shape=[n])
        self._w_i_diag = self.add_variable("w_i_diag", shape=[n])
        self._w_o_diag = self.add_variable("w_o_diag", shape=[n])
        self.built = True

    def call(self, inputs, state):
        c, h = state
        i, j, f, o = torch.split(torch.cat([inputs, h], 1) @ self._kernel + self._bias, self._num_units, dim=1)
        new_c = torch.sigmoid(f + 1.0 + self._w_f_diag * c) * c + torch.sigmoid(i + self._w_i_diag * c) * torch.tanh(j)
        new_h = torch.sigmoid(o + self._w_o_diag * new_c) * torch.tanh(new_c)
        return new_h, tf.nn.rnn_cell.LSTMStateTuple(new_c, new_h)


class TorchPeepholeLSTM(rnnkit.RNNCell):
    """torch's gate order i, f, g, o; input and recurrent weights apart."""

    def __init__(self, num_units, input_size):
        super().__init__()
        self.n = num_units
        self.ih, self.hh = nn.Linear(input_size, 4 * num_units), nn.Linear(num_units, 4 * num_units, bias=False)
        self.peep = nn.Parameter(torch.randn(3, num_units) * 0.1)  # rows: i, f, o

    state_size = property(lambda self: rnnkit.LSTMStateTuple(self.n, self.n))
    output_size = property(lambda self: self.n)

    def call(self, x, state):
        c, h = state
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, 1)
        c = torch.sigmoid(f + 1.0 + self.peep[1] * c) * c + torch.sigmoid(i + self.peep[0] * c) * torch.tanh(g)
        h = torch.sigmoid(o + self.peep[2] * c) * torch.tanh(c)
        return h, rnnkit.LSTMStateTuple(c, h)


def _ifgo(t: torch.Tensor) -> torch.Tensor:
    """TF's gate blocks i, j, f, o (last axis) in torch's order i, f, g(=j), o."""
    i, j, f, o = t.chunk(4, -1)
    return torch.cat([i, f, j, o], -1)


def _peephole_to_torch(w: Weights, d: int, n: int) -> Weights:
    ih, hh = _rows(_ifgo(w["kernel"]), d)
    peep = torch.stack([w["w_i_diag"], w["w_f_diag"], w["w_o_diag"]])
    return {"ih.weight": ih, "ih.bias": _ifgo(w["bias"]), "hh.weight": hh, "peep": peep}


# -- 7. GRU, TF's "reset before" by hand (Cho et al. 2014) ---------------------------------------------------
class ResetBeforeGRUCell(tf.nn.rnn_cell.RNNCell):
    """r, u = sigmoid([x, h] W_g + b_g);  c = tanh([x, r * h] W_c + b_c);  h' = u * h + (1 - u) * c."""

    def __init__(self, num_units, input_size=None):
        super().__init__(input_size=input_size)
        self._num_units = num_units

    @property
    def state_size(self):
        return self._num_units

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        rows, n = inputs_shape[-1] + self._num_units, self._num_units
        self._gate_kernel = self.add_weight("gates/kernel", [rows, 2 * n])
        self._gate_bias = self.add_weight("gates/bias", [2 * n], initializer="ones")
        self._candidate_kernel = self.add_weight("candidate/kernel", [rows, n])
        self._candidate_bias = self.add_weight("candidate/bias", [n], initializer="zeros")
        self.built = True

    def call(self, inputs, state):
        gates = torch.sigmoid(torch.cat([inputs, state], 1) @ self._gate_kernel + self._gate_bias)
        r, u = gates.chunk(2, 1)
        c = torch.tanh(torch.cat([inputs, r * state], 1) @ self._candidate_kernel + self._candidate_bias)
        h = u * state + (1 - u) * c
        return h, h


class TorchResetBeforeGRU(rnnkit.RNNCell):
    def __init__(self, num_units, input_size):
        super().__init__()
        self.state_size = self.output_size = num_units
        self.x2g, self.h2g = nn.Linear(input_size, 2 * num_units), nn.Linear(num_units, 2 * num_units, bias=False)
        self.x2c, self.h2c = nn.Linear(input_size, num_units), nn.Linear(num_units, num_units, bias=False)

    def call(self, x, h):
        r, z = torch.sigmoid(self.x2g(x) + self.h2g(h)).chunk(2, 1)
        n = torch.tanh(self.x2c(x) + self.h2c(r * h))
        h = z * h + (1 - z) * n
        return h, h


def _gru_to_torch(w: Weights, d: int, n: int) -> Weights:
    (x2g, h2g), (x2c, h2c) = _rows(w["gates.kernel"], d), _rows(w["candidate.kernel"], d)
    return {"x2g.weight": x2g, "x2g.bias": w["gates.bias"], "h2g.weight": h2g,
            "x2c.weight": x2c, "x2c.bias": w["candidate.bias"], "h2c.weight": h2c}  # fmt: skip


# -- 8. multiplicative LSTM (Krause et al. 2016) --------------------------------------------------------------
class MultiplicativeLSTMCell(tf.nn.rnn_cell.RNNCell):
    """m = (x W_mx) * (h W_mh);  i, f, o, u = split(x W_x + m W_m + b, 4);  c' = sigmoid(f) c + sigmoid(i) tanh(u);
    h' = sigmoid(o) tanh(c')."""

    def __init__(self, num_units, input_size=None):
        super().__init__(input_size=input_size)
        self._num_units = num_units

    @property
    def state_size(self):
        return tf.nn.rnn_cell.LSTMStateTuple(self._num_units, self._num_units)

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        depth, n = inputs_shape[1].value, self._num_units
        self._wmx = self.add_variable("wmx", [depth, n])
        self._wmh = self.add_variable("wmh", [n, n])
        self._wx = self.add_variable("wx", [depth, 4 * n])
        self._wm = self.add_variable("wm", [n, 4 * n])
        self._bias = self.add_variable("bias", [4 * n], initializer=0.0)
        self.built = True

    def call(self, inputs, state):
        c, h = state
        m = (inputs @ self._wmx) * (h @ self._wmh)
        i, f, o, u = (inputs @ self._wx + m @ self._wm + self._bias).chunk(4, 1)
        new_c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
        new_h = torch.sigmoid(o) * torch.tanh(new_c)
        return new_h, tf.nn.rnn_cell.LSTMStateTuple(new_c, new_h)


class TorchMultiplicativeLSTM(rnnkit.RNNCell):
    def __init__(self, num_units, input_size):
        super().__init__()
        self.n = num_units
        self.mx, self.mh = nn.Linear(input_size, num_units, bias=False), nn.Linear(num_units, num_units, bias=False)
        self.x2g, self.m2g = nn.Linear(input_size, 4 * num_units), nn.Linear(num_units, 4 * num_units, bias=False)

    state_size = property(lambda self: (self.n, self.n))
    output_size = property(lambda self: self.n)

    def call(self, x, state):
        c, h = state
        m = self.mx(x) * self.mh(h)
        i, f, o, u = (self.x2g(x) + F.linear(m, self.m2g.weight)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (c, h)


def _mlstm_to_torch(w: Weights, d: int, n: int) -> Weights:
    return {"mx.weight": w["wmx"].T, "mh.weight": w["wmh"].T, "x2g.weight": w["wx"].T, "x2g.bias": w["bias"],
            "m2g.weight": w["wm"].T}  # fmt: skip


# -- 9. a state of three leaves: an LSTM whose output is a learned running average of h ---------------------------
AveragedState = namedtuple("AveragedState", ["c", "h", "avg"])


class AveragedLSTMCell(tf.nn.rnn_cell.RNNCell):
    """A basic LSTM (c', h'), then avg' = d * avg + (1 - d) * h' with d = sigmoid(decay) per unit; outputs avg'."""

    def __init__(self, num_units, input_size=None):
        super().__init__(input_size=input_size)
        self._num_units = num_units

    @property
    def state_size(self):
        return AveragedState(self._num_units, self._num_units, self._num_units)

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        n = self._num_units
        self._kernel = self.add_weight(name="kernel", shape=(inputs_shape[-1] + n, 4 * n))
        self._bias = self.add_weight(name="bias", shape=(4 * n,), initializer="zeros")
        self._decay = self.add_weight(name="decay", shape=(n,), initializer=lambda shape, dtype: torch.zeros(shape))
        self.built = True

    def call(self, inputs, state):
        i, j, f, o = (torch.cat([inputs, state.h], 1) @ self._kernel + self._bias).split(self._num_units, 1)
        new_c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(j)
        new_h = torch.sigmoid(o) * torch.tanh(new_c)
        d = torch.sigmoid(self._decay)
        avg = d * state.avg + (1 - d) * new_h
        return avg, AveragedState(new_c, new_h, avg)


class TorchAveragedLSTM(rnnkit.RNNCell):
    def __init__(self, num_units, input_size):
        super().__init__()
        self.n = num_units
        self.lstm = nn.Linear(input_size + num_units, 4 * num_units)
        self.decay = nn.Parameter(torch.zeros(num_units))

    state_size = property(lambda self: AveragedState(self.n, self.n, self.n))
    output_size = property(lambda self: self.n)

    def call(self, x, state):
        c, h, avg = state
        i, j, f, o = self.lstm(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(j)
        h = torch.sigmoid(o) * torch.tanh(c)
        avg = torch.sigmoid(self.decay) * avg + (1 - torch.sigmoid(self.decay)) * h
        return avg, AveragedState(c, h, avg)


def _averaged_to_torch(w: Weights, d: int, n: int) -> Weights:
    return {"lstm.weight": w["kernel"].T, "lstm.bias": w["bias"], "decay": w["decay"]}


# -- 10. where / clamp / relu / softplus: a leaky relu6 RNN with a softplus rate --------------------------------
class LeakyClampRNNCell(tf.nn.rnn_cell.RNNCell):
    """a, g = split([x, h] W + b, 2);  rate = min(softplus(g), 1);  cand = where(a > 0, min(a, 6), 0.1 a);
    h' = rate * cand + (1 - rate) * relu(h)."""

    def __init__(self, num_units, input_size=None):
        super().__init__(input_size=input_size)
        self._num_units = num_units

    @property
    def state_size(self):
        return self._num_units

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        rows = inputs_shape.as_list()[-1] + self._num_units
        self._kernel = self.add_variable("kernel", [rows, 2 * self._num_units], initializer="orthogonal")
        self._bias = self.add_variable("bias", [2 * self._num_units], initializer=0.0)
        self.built = True

    def call(self, inputs, state):
        a, g = (torch.cat([inputs, state], 1) @ self._kernel + self._bias).chunk(2, 1)
        rate = torch.clamp(F.softplus(g), max=1.0)
        candidate = torch.where(a > 0, torch.clamp(a, max=6.0), 0.1 * a)
        h = rate * candidate + (1 - rate) * torch.relu(state)
        return h, h


class TorchLeakyClampRNN(rnnkit.RNNCell):
    def __init__(self, num_units, input_size):
        super().__init__()
        self.state_size = self.output_size = num_units
        self.ih, self.hh = nn.Linear(input_size, 2 * num_units), nn.Linear(num_units, 2 * num_units, bias=False)

    def call(self, x, h):
        a, g = (self.ih(x) + self.hh(h)).chunk(2, 1)
        rate = F.softplus(g).clamp(max=1.0)
        candidate = torch.where(a > 0, a.clamp(max=6.0), 0.1 * a)
        h = rate * candidate + (1 - rate) * torch.relu(h)
        return h, h


def _leaky_to_torch(w: Weights, d: int, n: int) -> Weights:
    ih, hh = _rows(w["kernel"], d)
    return {"ih.weight": ih, "ih.bias": w["bias"], "hh.weight": hh}


# -- the registry -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserCell:
    """One family of user cells: its TF1-protocol and torch-style writings, the weight mapping between them, and
    rnnkit's own cell computing the same step (``None`` if rnnkit has none)."""

    name: str
    tf_style: Callable[[int, int | None], rnnkit.RNNCell]
    torch_style: Callable[[int, int], rnnkit.RNNCell]
    tf_to_torch: Callable[[Weights, int, int], Weights]
    twin: Callable[[int], rnnkit.RNNCell] | None = None

    def __repr__(self) -> str:
        return self.name


USER_CELLS: list[UserCell] = [
    UserCell("mgu", lambda n, d: MGUCell(n, input_size=d), TorchMGU, _mgu_to_torch),
    UserCell("indrnn", lambda n, d: IndRNNCell(n, input_size=d), TorchIndRNN, _indrnn_to_torch),
    UserCell("sru", lambda n, d: SRUCell(n, input_size=d), TorchSRU, _sru_to_torch),
    UserCell("cifg_lstm", lambda n, d: CIFGLSTMCell(n, input_size=d), TorchCIFG, _cifg_to_torch),
    UserCell(
        "layer_norm_lstm",
        lambda n, d: LayerNormLSTMCell(n, input_size=d),
        TorchLayerNormLSTM,
        _ln_to_torch,
        twin=lambda n: rnnkit.LayerNormBasicLSTMCell(n),
    ),
    UserCell(
        "peephole_lstm",
        lambda n, d: PeepholeLSTMCell(n, input_size=d),
        TorchPeepholeLSTM,
        _peephole_to_torch,
        twin=lambda n: rnnkit.LSTMCell(n, use_peepholes=True),
    ),
    UserCell(
        "reset_before_gru",
        lambda n, d: ResetBeforeGRUCell(n, input_size=d),
        TorchResetBeforeGRU,
        _gru_to_torch,
        twin=lambda n: rnnkit.GRUCell(n),
    ),
    UserCell("mlstm", lambda n, d: MultiplicativeLSTMCell(n, input_size=d), TorchMultiplicativeLSTM, _mlstm_to_torch),
    UserCell("averaged_lstm", lambda n, d: AveragedLSTMCell(n, input_size=d), TorchAveragedLSTM, _averaged_to_torch),
    UserCell("leaky_clamp_rnn", lambda n, d: LeakyClampRNNCell(n, input_size=d), TorchLeakyClampRNN, _leaky_to_torch),
]
