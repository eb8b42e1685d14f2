"""Parameter readers: where a leaf spec finds its cell's weights, for the fused kernels and for torch's.

A leaf spec (``rnnkit.engine.lowering``) knows a kernel family's math; a *reader* knows a parameter layout. The
fused kernels take ``x @ W`` matrices ``w_x (I, G * H)``, ``w_h (R, G * H)`` and one bias with gate blocks in
``gate_order``; torch's kernels take its flat weights ``[w_ih, w_hh, b_ih, b_hh(, w_hr)]``. Two layouts cover
rnnkit's cells:

* ``TF_KERNEL``: TF1's one ``kernel (I + R, G * H)`` (input rows first) and one ``bias``; LSTM blocks i, j, f, o;
  peepholes ``w_i_diag``, ``w_f_diag``, ``w_o_diag``; projection ``projection.kernel``; the layer norms of
  ``LayerNormBasicLSTMCell``. (TF's ``GRUCell`` has two kernels: ``TF_GRU_KERNELS``.)
* ``TORCH_WEIGHTS``: torch.nn's ``weight_ih (G * H, I)``, ``weight_hh``, ``bias_ih``, ``bias_hh``, ``weight_hr``;
  LSTM blocks i, f, g, o; peepholes ``weight_ci``, ``weight_cf``, ``weight_co``.

Every reader reads the cell's tensors when called, so autograd sees the cell's own parameters.

Example::

    >>> import torch, rnnkit
    >>> from rnnkit.engine.params import TF_KERNEL
    >>> cell = rnnkit.BasicRNNCell(3, input_size=2)
    >>> w_x, w_h = TF_KERNEL.matrices(cell)
    >>> tuple(w_x.shape), tuple(w_h.shape)
    ((2, 3), (3, 3))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..gates import permutation, relayout, split_kernel, tf_lstm_as_torch
from .precision import widened

__all__ = ["TF_KERNEL", "TORCH_WEIGHTS", "TF_GRU_KERNELS", "TFKernel", "TorchWeights", "TFGRUKernels"]


class TFKernel:
    """TF1's layout: one ``kernel (I + R, N)`` and one ``bias (N,)``; ``forget_bias`` is never stored."""

    gate_order = permutation("LSTM", "tf", "kernel")  # where each kernel gate sits in TF's columns
    stores_forget_bias = False  # torch's kernel gets it folded into the bias (tf_lstm_as_torch)

    def matrices(self, cell: Any) -> tuple[Tensor, Tensor]:
        """``(w_x (I, N), w_h (R, N))``: views of the kernel's row blocks."""
        return split_kernel(cell.input_depth, cell.kernel)

    def bias(self, cell: Any) -> Tensor:
        return cell.bias

    def peepholes(self, cell: Any) -> Tensor:
        """``(3, H)``: the diagonal peephole weights of gates i, f, o."""
        return torch.stack([cell.w_i_diag, cell.w_f_diag, cell.w_o_diag])

    def projection(self, cell: Any) -> Tensor:
        return cell.projection.kernel  # (H, P)

    def layer_norms(self, cell: Any, units: int) -> tuple[Tensor | None, Tensor, Tensor]:
        """``(bias, gamma (5, H), beta (5, H))``: norms of i, g, f, o (the kernels' TF order) and of ``c``."""
        # TF's norms are named after its gates i, j, f, o; the kernels take them in their order, then c's ("state")
        tf_names = ("input", "transform", "forget", "output")
        norms = [getattr(cell, tf_names[k]) for k in self.gate_order] + [cell.state]
        return None, torch.stack([m.gamma for m in norms]), torch.stack([m.beta for m in norms])

    def flat(self, cell: Any) -> tuple[list[Tensor], bool]:
        """torch's ``[w_ih, w_hh, b_ih, b_hh]`` of a one-block cell (the Elman RNN): the kernel's blocks transposed."""
        depth, kernel, b = cell.input_depth, cell.kernel, cell.bias
        return [kernel[:depth].t(), kernel[depth:].t(), b, torch.zeros_like(b)], True

    def lstm_flat(self, spec: Any) -> tuple[list[Tensor], bool]:
        """torch's flat LSTM weights, TF's blocks reordered and ``forget_bias`` folded in (differentiably)."""
        return tf_lstm_as_torch(spec.cell, spec.forget_bias, spec.has_proj), True


class TorchWeights:
    """torch.nn's layout: ``weight_ih (N, I)``, ``weight_hh (N, R)``, optional ``bias_ih``, ``bias_hh``."""

    gate_order = permutation("LSTM", "torch", "kernel")  # where each kernel gate sits in torch's rows
    stores_forget_bias = True  # its biases are stored as they are: a forget_bias has no torch kernel

    def matrices(self, cell: Any) -> tuple[Tensor, Tensor]:
        return cell.weight_ih.t(), cell.weight_hh.t()

    def biases(self, cell: Any) -> tuple[Tensor | None, Tensor | None]:
        if not cell.bias:
            return None, None
        return cell.bias_ih, cell.bias_hh

    def bias(self, cell: Any) -> Tensor | None:
        """The one input-side bias ``bias_ih + bias_hh`` (both act alike outside a reset gate); of bf16 or fp16
        biases, summed in float32 (the kernels' compute dtype: ``precision``), so that no rounding enters here."""
        return widened(cell.bias_ih) + widened(cell.bias_hh) if cell.bias else None

    def peepholes(self, cell: Any) -> Tensor:
        return torch.stack([cell.weight_ci, cell.weight_cf, cell.weight_co])

    def projection(self, cell: Any) -> Tensor:
        return cell.weight_hr.t()  # (H, P)

    def layer_norms(self, cell: Any, units: int) -> tuple[Tensor | None, Tensor, Tensor]:
        # (4H,) gains and shifts of the gates in torch's block order, as rows in the kernels' order, then c's
        gains, shifts = (
            relayout(p, "LSTM", "torch", "kernel").view(4, units) for p in (cell.weight_ln_gates, cell.bias_ln_gates)
        )
        gamma = torch.cat([gains, cell.weight_ln_cell.unsqueeze(0)])
        beta = torch.cat([shifts, cell.bias_ln_cell.unsqueeze(0)])
        return self.bias(cell), gamma, beta

    def flat(self, cell: Any, projection: bool = False) -> tuple[list[Tensor], bool]:
        params = [cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if cell.bias else [])
        if projection:
            params.append(cell.weight_hr)
        return params, bool(cell.bias)

    def lstm_flat(self, spec: Any) -> tuple[list[Tensor], bool]:
        return self.flat(spec.cell, spec.has_proj)

    def gru(self, spec: Any) -> dict[str, Tensor | None]:
        w_x, w_h = self.matrices(spec.cell)  # (I, 3H), (H, 3H)
        if spec.reset_after:
            bias_x, bias_h = self.biases(spec.cell)
        else:  # reset-before: b_hn sits outside r * (...), so both biases act as one input-side bias.
            bias_x, bias_h = self.bias(spec.cell), None
        return dict(w_x=w_x, w_h=w_h, bias_x=bias_x, bias_h=bias_h, w_xn=None, w_hn=None)


class TFGRUKernels:
    """TF1's ``GRUCell``: ``gates/kernel (I + H, 2H)`` for r, u and ``candidate/kernel (I + H, H)``, read as views."""

    def gru(self, spec: Any) -> dict[str, Tensor | None]:
        cell = spec.cell
        w_x, w_h = split_kernel(cell.input_depth, cell.gates.kernel)
        w_xn, w_hn = split_kernel(cell.input_depth, cell.candidate.kernel)
        bias_x = torch.cat([cell.gates.bias, cell.candidate.bias])
        return dict(w_x=w_x, w_h=w_h, bias_x=bias_x, bias_h=None, w_xn=w_xn, w_hn=w_hn)


TF_KERNEL = TFKernel()
TORCH_WEIGHTS = TorchWeights()
TF_GRU_KERNELS = TFGRUKernels()
