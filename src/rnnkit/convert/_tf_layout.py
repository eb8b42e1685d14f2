"""One TF1 cell's variables <-> one layer-direction of the torch layout: the gate mathematics.

TF1 cells multiply ``[x, h]`` (``x`` rows first) by one kernel, columns in gate blocks; torch keeps
``weight_ih (G*H, I)`` and ``weight_hh (G*H, P)`` with rows in gate blocks:

Gate blocks are reordered between TF's and torch's orders (``rnnkit.gates``: ``relayout``, written ``R`` here).

* LSTM (``BasicLSTMCell``, ``LSTMCell``): TF ``kernel (I+P, 4H)``, ``bias (4H,)`` plus a run-time
  ``forget_bias``; torch rows in its own order, two biases.
  ``weight_ih = R(kernel[:I]).T``, ``weight_hh = R(kernel[I:]).T``,
  ``bias_ih = R(bias) + forget_bias * e_f``, ``bias_hh = 0``;
  ``projection/kernel (H, P)`` is ``weight_hr.T``; ``w_i_diag, w_f_diag, w_o_diag`` are ``weight_ci/cf/co``.
* layer-norm LSTM (``LayerNormBasicLSTMCell``, layer_norm=True): the kernel as an LSTM's, no bias;
  the gains and shifts of the ``input, forget, transform, output`` norms are ``weight_ln_gates`` /
  ``bias_ln_gates`` blocks in torch's order, the ``state`` norm's ``weight_ln_cell`` / ``bias_ln_cell``.
  The forget bias is added after the forget norm, so it folds into ``bias_ln_gates``'s f block.
* GRU (``GRUCell``, reset before the matmul): TF ``gates/kernel (I+H, 2H)`` (r and u, TF's name for z),
  ``candidate/kernel (I+H, H)``; torch's rows in the same order:
  ``weight_ih = [gates/kernel[:I].T; candidate/kernel[:I].T]``, ``weight_hh`` the same on rows ``I:``,
  ``bias_ih = [gates/bias, candidate/bias]``, ``bias_hh = 0``. Exact only for rnnkit's
  ``GRU(reset_after=False)``: TF's candidate is ``tanh(W_n x + U_n (r*h) + b)``.
* simple RNN (``BasicRNNCell``): ``kernel (I+H, H)``: ``weight_ih = kernel[:I].T``, ``weight_hh = kernel[I:].T``.

Back to TF the two torch biases are summed (any split with the same sum is the same function); a
``forget_bias`` of the TF cell is subtracted from the forget block. With ``forget_bias`` 0 in both
directions no arithmetic touches a value, so TF -> torch -> TF returns the same bits.

Example::

    >>> tf = {"kernel": torch.randn(3 + 4, 16), "bias": torch.randn(16)}
    >>> p = tf_lstm_to_torch(tf, forget_bias=1.0)     # torch.nn-equivalent: forget bias folded in
    >>> tuple(p["weight_ih"].shape), tuple(p["weight_hh"].shape)
    ((16, 3), (16, 4))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..gates import PEEPHOLE_ORDERS, add_to_gate, gate_order, relayout
from ._torch_layout import as_tensor

__all__ = [  # one cell's variables each way: TF -> torch layout, and back
    "tf_lstm_to_torch", "torch_lstm_to_tf", "tf_ln_lstm_to_torch", "torch_ln_lstm_to_tf",
    "tf_gru_to_torch", "torch_gru_to_tf", "tf_rnn_to_torch", "torch_rnn_to_tf",
]  # fmt: skip


def _get(params: Mapping[str, Any], name: str, component: str) -> torch.Tensor:
    if name not in params:
        raise KeyError(f"{component}: missing variable {name!r} (have {sorted(params)})")
    return as_tensor(params[name], f"{component} {name!r}")


def _expect(tensor: torch.Tensor, shape: tuple[int, ...], name: str, component: str) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{component}: variable {name!r} must have shape {shape}, got {tuple(tensor.shape)}")


def _add_forget_bias(bias: torch.Tensor, value: float) -> torch.Tensor:
    """``value`` added to the forget block of a torch-layout LSTM bias (a copy when it is not 0)."""
    return add_to_gate(bias, value, "LSTM", "torch", "f")


def _split_rows(kernel: torch.Tensor, input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return kernel[:input_size].T.contiguous(), kernel[input_size:].T.contiguous()


def _sum_biases(params: Mapping[str, Any], rows: int, like: torch.Tensor, component: str) -> torch.Tensor:
    if "bias_ih" not in params and "bias_hh" not in params:
        return like.new_zeros(rows)
    return _get(params, "bias_ih", component) + _get(params, "bias_hh", component)


def tf_lstm_to_torch(params: Mapping[str, Any], *, forget_bias: float = 0.0) -> dict[str, torch.Tensor]:
    """TF ``BasicLSTMCell``/``LSTMCell`` variables -> one torch LSTM layer-direction.

    ``params``: ``kernel (I+P, 4H)``, ``bias (4H,)``, optionally ``projection/kernel (H, P)`` and
    ``w_i_diag``, ``w_f_diag``, ``w_o_diag`` ``(H,)`` (names relative to the cell's scope).
    ``forget_bias`` is added to the forget block of ``bias_ih`` (pass the TF cell's to fold it in,
    0 to carry it as rnnkit's ``LSTM(forget_bias=...)`` option instead). Returns ``weight_ih (4H, I)``,
    ``weight_hh (4H, P)``, ``bias_ih``, ``bias_hh`` ``(4H,)``, and ``weight_hr (P, H)`` /
    ``weight_ci``, ``weight_cf``, ``weight_co`` when present.
    """
    component = "tf_lstm_to_torch"
    kernel = _get(params, "kernel", component)
    if kernel.dim() != 2 or kernel.shape[1] % 4:
        raise ValueError(f"{component}: 'kernel' must be (input + units, 4 * units), got {tuple(kernel.shape)}")
    hidden = kernel.shape[1] // 4
    out: dict[str, torch.Tensor] = {}
    proj_size = hidden
    if "projection/kernel" in params:
        projection = _get(params, "projection/kernel", component)
        if projection.dim() != 2 or projection.shape[0] != hidden:
            raise ValueError(
                f"{component}: 'projection/kernel' must be (units={hidden}, num_proj), got {tuple(projection.shape)}"
            )
        proj_size = projection.shape[1]
    input_size = kernel.shape[0] - proj_size
    if input_size <= 0:
        raise ValueError(
            f"{component}: 'kernel' has {kernel.shape[0]} rows, not more than the recurrent depth {proj_size}"
        )
    bias = _get(params, "bias", component)
    _expect(bias, (4 * hidden,), "bias", component)
    weights = relayout(kernel, "LSTM", "tf", "torch", dim=1)  # (I+P, 4H), torch's blocks
    out["weight_ih"], out["weight_hh"] = _split_rows(weights, input_size)
    out["bias_ih"] = _add_forget_bias(relayout(bias, "LSTM", "tf", "torch"), forget_bias)
    out["bias_hh"] = torch.zeros_like(bias)
    if "projection/kernel" in params:
        out["weight_hr"] = projection.T.contiguous()  # (P, H)
    diags = [f"w_{gate}_diag" for gate in PEEPHOLE_ORDERS["tf"] if f"w_{gate}_diag" in params]
    if diags and len(diags) != 3:
        raise KeyError(f"{component}: peepholes need w_i_diag, w_f_diag and w_o_diag; got only {diags}")
    for gate in PEEPHOLE_ORDERS["tf"] if diags else "":
        diag = _get(params, f"w_{gate}_diag", component)
        _expect(diag, (hidden,), f"w_{gate}_diag", component)
        out[f"weight_c{gate}"] = diag.clone()
    return out


def torch_lstm_to_tf(params: Mapping[str, Any], *, forget_bias: float = 0.0) -> dict[str, torch.Tensor]:
    """One torch LSTM layer-direction -> TF ``LSTMCell`` variables (the inverse of `tf_lstm_to_torch`).

    ``forget_bias`` is subtracted from the forget block: pass the forget bias the TF cell will add
    at run time minus the one the torch layout already runs with (``config.forget_bias``).
    """
    component = "torch_lstm_to_tf"
    w_ih, w_hh = _get(params, "weight_ih", component), _get(params, "weight_hh", component)
    kernel = torch.cat([w_ih.T, w_hh.T], 0)  # (I+P, 4H), torch's blocks
    out = {"kernel": relayout(kernel, "LSTM", "torch", "tf", dim=1)}
    bias = _sum_biases(params, w_ih.shape[0], w_ih, component)
    out["bias"] = relayout(_add_forget_bias(bias, -forget_bias), "LSTM", "torch", "tf")
    if "weight_hr" in params:
        out["projection/kernel"] = _get(params, "weight_hr", component).T.contiguous()
    if any(k in params for k in ("weight_ci", "weight_cf", "weight_co")):
        for gate in PEEPHOLE_ORDERS["tf"]:
            out[f"w_{gate}_diag"] = _get(params, f"weight_c{gate}", component).clone()
    return out


_NORM_SCOPES = {"i": "input", "f": "forget", "g": "transform", "o": "output"}  # TF's norm scope of each gate
_NORMS = tuple(_NORM_SCOPES[gate] for gate in gate_order("LSTM", "torch"))  # in torch's block order


def tf_ln_lstm_to_torch(params: Mapping[str, Any], *, forget_bias: float = 0.0) -> dict[str, torch.Tensor]:
    """TF ``LayerNormBasicLSTMCell`` (layer_norm=True) variables -> one rnnkit ``LSTM(layer_norm=True, bias=False)``
    layer-direction: ``weight_ih``, ``weight_hh``, ``weight_ln_gates``, ``bias_ln_gates`` (forget bias folded
    into its f block when ``forget_bias`` is given), ``weight_ln_cell``, ``bias_ln_cell``."""
    component = "tf_ln_lstm_to_torch"
    kernel = _get(params, "kernel", component)
    if kernel.dim() != 2 or kernel.shape[1] % 4 or kernel.shape[0] <= kernel.shape[1] // 4:
        raise ValueError(f"{component}: 'kernel' must be (input + units, 4 * units), got {tuple(kernel.shape)}")
    hidden = kernel.shape[1] // 4
    weights = relayout(kernel, "LSTM", "tf", "torch", dim=1)  # (I+H, 4H), torch's blocks
    out: dict[str, torch.Tensor] = {}
    out["weight_ih"], out["weight_hh"] = _split_rows(weights, kernel.shape[0] - hidden)
    norms = {}
    for scope in (*_NORMS, "state"):
        for part in ("gamma", "beta"):
            norms[scope, part] = _get(params, f"{scope}/{part}", component)
            _expect(norms[scope, part], (hidden,), f"{scope}/{part}", component)
    out["weight_ln_gates"] = torch.cat([norms[s, "gamma"] for s in _NORMS])
    out["bias_ln_gates"] = _add_forget_bias(torch.cat([norms[s, "beta"] for s in _NORMS]), forget_bias)
    out["weight_ln_cell"], out["bias_ln_cell"] = norms["state", "gamma"].clone(), norms["state", "beta"].clone()
    return out


def torch_ln_lstm_to_tf(params: Mapping[str, Any], *, forget_bias: float = 0.0) -> dict[str, torch.Tensor]:
    """One rnnkit ``LSTM(layer_norm=True)`` layer-direction -> TF ``LayerNormBasicLSTMCell`` variables.

    TF's cell has no bias under layer norm: non-zero ``bias_ih``/``bias_hh`` (added before the norm)
    are refused, and so is a projection (``weight_hr``). ``forget_bias`` is subtracted from the forget norm's shift.
    """
    component = "torch_ln_lstm_to_tf"
    if "weight_hr" in params:
        raise ValueError(f"{component}: weight_hr (proj_size): TF's LayerNormBasicLSTMCell has no projection")
    for name in ("bias_ih", "bias_hh"):
        if name in params and bool(_get(params, name, component).any()):
            raise ValueError(f"{component}: non-zero {name}: TF's LayerNormBasicLSTMCell has no bias before its norms")
    w_ih, w_hh = _get(params, "weight_ih", component), _get(params, "weight_hh", component)
    out = {"kernel": relayout(torch.cat([w_ih.T, w_hh.T], 0), "LSTM", "torch", "tf", dim=1)}
    gains = _get(params, "weight_ln_gates", component).chunk(4)
    shifts = _add_forget_bias(_get(params, "bias_ln_gates", component), -forget_bias).chunk(4)
    for k, scope in enumerate(_NORMS):
        out[f"{scope}/gamma"], out[f"{scope}/beta"] = gains[k].clone(), shifts[k].clone()
    out["state/gamma"] = _get(params, "weight_ln_cell", component).clone()
    out["state/beta"] = _get(params, "bias_ln_cell", component).clone()
    return out


def tf_gru_to_torch(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """TF ``GRUCell`` variables -> one torch-layout GRU layer-direction, exact for ``GRU(reset_after=False)``.

    ``params``: ``gates/kernel (I+H, 2H)`` (blocks r, u), ``gates/bias (2H,)``,
    ``candidate/kernel (I+H, H)``, ``candidate/bias (H,)``. Returns torch's rows.
    """
    component = "tf_gru_to_torch"
    gates = _get(params, "gates/kernel", component)
    if gates.dim() != 2 or gates.shape[1] % 2:
        raise ValueError(f"{component}: 'gates/kernel' must be (input + units, 2 * units), got {tuple(gates.shape)}")
    hidden = gates.shape[1] // 2
    input_size = gates.shape[0] - hidden
    if input_size <= 0:
        raise ValueError(f"{component}: 'gates/kernel' has {gates.shape[0]} rows, not more than units={hidden}")
    candidate = _get(params, "candidate/kernel", component)
    _expect(candidate, (input_size + hidden, hidden), "candidate/kernel", component)
    gates_bias, candidate_bias = _get(params, "gates/bias", component), _get(params, "candidate/bias", component)
    _expect(gates_bias, (2 * hidden,), "gates/bias", component)
    _expect(candidate_bias, (hidden,), "candidate/bias", component)
    kernel = relayout(torch.cat([gates, candidate], 1), "GRU", "tf", "torch", dim=1)  # (I+H, 3H), torch's blocks
    w_ih, w_hh = _split_rows(kernel, input_size)
    bias = relayout(torch.cat([gates_bias, candidate_bias]), "GRU", "tf", "torch")
    return {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": bias, "bias_hh": torch.zeros_like(bias)}


def torch_gru_to_tf(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """One torch-layout GRU layer-direction (reset-before math) -> TF ``GRUCell`` variables."""
    component = "torch_gru_to_tf"
    w_ih, w_hh = _get(params, "weight_ih", component), _get(params, "weight_hh", component)
    hidden = w_hh.shape[1]
    kernel = relayout(torch.cat([w_ih.T, w_hh.T], 0), "GRU", "torch", "tf", dim=1)  # (I+H, 3H): gates, candidate
    bias = relayout(_sum_biases(params, 3 * hidden, w_ih, component), "GRU", "torch", "tf")
    return {
        "gates/kernel": kernel[:, : 2 * hidden].contiguous(),
        "gates/bias": bias[: 2 * hidden].clone(),
        "candidate/kernel": kernel[:, 2 * hidden :].contiguous(),
        "candidate/bias": bias[2 * hidden :].clone(),
    }


def tf_rnn_to_torch(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """TF ``BasicRNNCell`` ``kernel (I+H, H)``, ``bias (H,)`` -> one torch RNN layer-direction."""
    component = "tf_rnn_to_torch"
    kernel = _get(params, "kernel", component)
    if kernel.dim() != 2 or kernel.shape[0] <= kernel.shape[1]:
        raise ValueError(f"{component}: 'kernel' must be (input + units, units), got {tuple(kernel.shape)}")
    hidden = kernel.shape[1]
    bias = _get(params, "bias", component)
    _expect(bias, (hidden,), "bias", component)
    w_ih, w_hh = _split_rows(kernel, kernel.shape[0] - hidden)
    return {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": bias.clone(), "bias_hh": torch.zeros_like(bias)}


def torch_rnn_to_tf(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """One torch RNN layer-direction -> TF ``BasicRNNCell`` variables."""
    component = "torch_rnn_to_tf"
    w_ih, w_hh = _get(params, "weight_ih", component), _get(params, "weight_hh", component)
    return {
        "kernel": torch.cat([w_ih.T, w_hh.T], 0).contiguous(),
        "bias": _sum_biases(params, w_ih.shape[0], w_ih, component),
    }
