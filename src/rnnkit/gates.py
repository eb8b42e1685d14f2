"""Gate layouts as data: the one table of gate orders, and the one re-layout every converter and the engine use.

A recurrent layer's weights hold one block per gate, stacked along one axis (torch's rows, TF's and Keras's
columns). Each system stacks them in its own order; the table ``GATE_ORDERS`` says which, per family and
layout, in the layout's own letters:

======  ==============================  ==========================  ===========================
layout  system                          LSTM                        GRU
======  ==============================  ==========================  ===========================
tf      TF1 cells (``kernel`` columns)  i, j, f, o                  r, u (``gates/``), c (``candidate/``)
keras   Keras 3 (``kernel`` columns)    i, f, c, o                  z, r, h
torch   torch.nn / rnnkit layers (rows) i, f, g, o                  r, z, n
onnx    ONNX operators (``W``/``R``)    i, o, f, c                  z, r, h
kernel  rnnkit's fused C++ kernels      i, g, f, o                  r, z, n
======  ==============================  ==========================  ===========================

A simple RNN has one block in every layout. Letters name the same gate across layouts through ``ALIASES``
(torch's letters are the canonical ones: TF's ``j``, Keras's and ONNX's ``c`` are ``g``, TF's ``u`` is ``z``,
``h``/``c`` of a GRU are ``n``). ``PEEPHOLE_ORDERS`` does the same for an LSTM's three peephole diagonals.

* `gate_order` ``(family, layout)``: the blocks in canonical letters;
* `permutation` ``(family, src, dst)``: for each block of ``dst``, its index in ``src``; the kernels' ``gate_order``
  argument is ``permutation("LSTM", layout, "kernel")`` (where each kernel gate sits in the weights it reads);
* `relayout` ``(x, family, src, dst, dim)``: the blocks of ``x`` along ``dim`` reordered, differentiable
  (``chunk`` + ``cat``), always a new tensor;
* `add_to_gate`: a value added to one gate's block (TF's ``forget_bias`` folded into a bias);
* `split_kernel` and `tf_lstm_as_torch`: TF's fused kernel ``(I + P, G*H)`` as the engine reads it, one autograd
  node each (the torch path's weights, and the fused kernels' ``x @ W`` views).

Example::

    >>> from rnnkit.gates import gate_order, permutation, relayout
    >>> gate_order("LSTM", "tf")
    ('i', 'g', 'f', 'o')
    >>> permutation("LSTM", "tf", "torch"), permutation("LSTM", "torch", "onnx")
    ((0, 2, 1, 3), (0, 3, 1, 2))
    >>> relayout(torch.arange(4.0), "LSTM", "tf", "torch")   # one number per block
    tensor([0., 2., 1., 3.])
    >>> relayout(torch.arange(6.0), "GRU", "torch", "keras")  # blocks r, z, n -> z, r, h
    tensor([2., 3., 0., 1., 4., 5.])
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FAMILIES",
    "LAYOUTS",
    "GATE_ORDERS",
    "ALIASES",
    "PEEPHOLE_ORDERS",
    "gate_count",
    "gate_order",
    "gate_index",
    "permutation",
    "relayout",
    "gate_block",
    "add_to_gate",
    "split_kernel",
    "tf_lstm_as_torch",
]

FAMILIES = ("LSTM", "GRU", "RNN")
LAYOUTS = ("tf", "keras", "torch", "onnx", "kernel")

#: family -> layout -> its gate blocks in order, in the layout's own letters (the one place each order is written)
GATE_ORDERS: dict[str, dict[str, str]] = {
    "LSTM": {"tf": "ijfo", "keras": "ifco", "torch": "ifgo", "onnx": "iofc", "kernel": "igfo"},
    "GRU": {"tf": "ruc", "keras": "zrh", "torch": "rzn", "onnx": "zrh", "kernel": "rzn"},
    "RNN": {layout: "h" for layout in LAYOUTS},
}
#: family -> a layout's letter -> the canonical (torch's) letter of the same gate
ALIASES: dict[str, dict[str, str]] = {"LSTM": {"j": "g", "c": "g"}, "GRU": {"u": "z", "c": "n", "h": "n"}, "RNN": {}}
#: an LSTM's peephole diagonals (input, forget, output gates) per layout: TF's ``w_{i,f,o}_diag``, torch-layout
#: ``weight_c{i,f,o}``, the kernels' ``peep`` rows, ONNX's ``P``
PEEPHOLE_ORDERS: dict[str, str] = {"tf": "ifo", "torch": "ifo", "kernel": "ifo", "onnx": "iof"}


def _check(family: str, layout: str) -> None:
    if family not in GATE_ORDERS:
        raise ValueError(f"rnnkit.gates: family must be one of {FAMILIES}, got {family!r}")
    if layout not in GATE_ORDERS[family]:
        raise ValueError(f"rnnkit.gates: layout must be one of {LAYOUTS}, got {layout!r}")


def gate_count(family: str) -> int:
    """The number of gate blocks: 4 (LSTM), 3 (GRU), 1 (RNN)."""
    _check(family, "torch")
    return len(GATE_ORDERS[family]["torch"])


def gate_order(family: str, layout: str) -> tuple[str, ...]:
    """The gate blocks of ``layout`` in canonical (torch's) letters: ``gate_order("GRU", "keras")`` is z, r, n."""
    _check(family, layout)
    aliases = ALIASES[family]
    return tuple(aliases.get(letter, letter) for letter in GATE_ORDERS[family][layout])


def gate_index(family: str, layout: str, gate: str) -> int:
    """The block index of ``gate`` (any layout's letter: ``"f"``, ``"j"``, ``"u"`` ...) in ``layout``."""
    return gate_order(family, layout).index(ALIASES[family].get(gate, gate))


def permutation(family: str, src: str, dst: str) -> tuple[int, ...]:
    """For each block of ``dst``, its index among ``src``'s blocks (``dst = [src[k] for k in permutation]``)."""
    have = gate_order(family, src)
    return tuple(have.index(g) for g in gate_order(family, dst))


def relayout(x: Tensor, family: str, src: str, dst: str, dim: int = 0) -> Tensor:
    """``x`` with its gate blocks along ``dim`` reordered from ``src``'s order to ``dst``'s (a new tensor).

    Differentiable (``chunk`` and ``cat``); ``ValueError`` when ``x.shape[dim]`` is not whole blocks.
    """
    order = permutation(family, src, dst)
    if x.shape[dim] % len(order):
        raise ValueError(
            f"rnnkit.gates.relayout: dimension {dim} of size {x.shape[dim]} is not {len(order)} equal {family} blocks"
        )
    blocks = x.chunk(len(order), dim=dim)
    return torch.cat([blocks[k] for k in order], dim=dim)


def gate_block(size: int, family: str, layout: str, gate: str) -> slice:
    """The slice of ``gate``'s block in a ``layout`` axis of ``size`` (``gate_count(family)`` blocks)."""
    n = size // gate_count(family)
    k = gate_index(family, layout, gate)
    return slice(k * n, (k + 1) * n)


def add_to_gate(x: Tensor, value: float, family: str, layout: str, gate: str) -> Tensor:
    """``x`` (1-D, whole gate blocks) with ``value`` added to ``gate``'s block: a copy, or ``x`` when ``value`` is 0.

    TF's ``forget_bias`` folded into a stored bias: ``add_to_gate(bias, 1.0, "LSTM", "torch", "f")``.
    """
    if not value:
        return x
    x = x.clone()
    x[gate_block(x.shape[0], family, layout, gate)] += value
    return x


# -- TF's fused kernel as the engine reads it -------------------------------------------------------------------
class _SplitKernel(torch.autograd.Function):
    """TF kernel ``(I + R, N)`` -> ``w_x (I, N)``, ``w_h (R, N)``: two views, one autograd node.

    Its backward returns the two gradients joined as the kernel's without a copy when they are adjacent rows of
    one buffer (the fused kernels write them so). Slicing under autograd instead gives each slice a zero-filled
    gradient of the whole kernel and then adds them: at small sizes those fills cost more than the recurrent
    kernel's own backward over a step.
    """

    @staticmethod
    def forward(ctx: Any, depth: int, kernel: Tensor) -> Any:
        ctx.depth, ctx.shape = depth, kernel.shape
        return kernel[:depth], kernel[depth:]

    @staticmethod
    def backward(ctx: Any, g_x: Tensor | None, g_h: Tensor | None) -> Any:
        joined = _joined_rows(g_x, g_h)
        if joined is not None:
            return None, joined
        like = g_x if g_x is not None else g_h
        assert like is not None
        rows, width = ctx.shape
        g_x = g_x if g_x is not None else like.new_zeros(ctx.depth, width)
        g_h = g_h if g_h is not None else like.new_zeros(rows - ctx.depth, width)
        return None, torch.cat([g_x, g_h])  # (I + R, N)


def _joined_rows(top: Tensor | None, bottom: Tensor | None) -> Tensor | None:
    """``cat([top, bottom])`` without a copy when ``bottom``'s rows directly follow ``top``'s in memory."""
    if top is None or bottom is None or not (top.is_contiguous() and bottom.is_contiguous()):
        return None
    same = top.untyped_storage().data_ptr() == bottom.untyped_storage().data_ptr()
    if not same or top.shape[1] != bottom.shape[1] or bottom.storage_offset() != top.storage_offset() + top.numel():
        return None
    return top.as_strided((top.shape[0] + bottom.shape[0], top.shape[1]), top.stride(), top.storage_offset())


def split_kernel(depth: int, kernel: Tensor) -> tuple[Tensor, Tensor]:
    """``(w_x (I, N), w_h (R, N))``: the row blocks of a TF kernel ``(I + R, N)``, as views.

    Example::

        >>> w_x, w_h = split_kernel(3, torch.randn(3 + 4, 16))
        >>> tuple(w_x.shape), tuple(w_h.shape)
        ((3, 16), (4, 16))
    """
    if torch.is_grad_enabled() and kernel.requires_grad:
        return _SplitKernel.apply(depth, kernel)
    return kernel[:depth], kernel[depth:]


_PERMS: dict[tuple[torch.device, str, str], Tensor] = {}


def _block_index(device: torch.device, src: str, dst: str) -> Tensor:
    """`permutation` ``("LSTM", src, dst)`` as an index tensor on ``device`` (made once per device)."""
    idx = _PERMS.get((device, src, dst))
    if idx is None:
        idx = _PERMS[device, src, dst] = torch.tensor(permutation("LSTM", src, dst), device=device)
    return idx


class _TFKernelAsTorch(torch.autograd.Function):
    """TF's LSTM ``kernel (I + P, 4H)``, ``bias (4H,)`` -> torch's ``w_ih (4H, I)``, ``w_hh (4H, P)``, ``b_ih (4H,)``.

    One autograd node instead of a graph of slices and cats (per call, the graph's own bookkeeping cost more
    than the copies at small sizes): forward is a block gather on the contiguous kernel plus one transposing
    copy per weight; backward is the inverse block gather applied to the gradients. ``forget_bias`` is added to
    torch's forget block, as ``b_f + forget_bias`` in TF's cell.
    """

    @staticmethod
    def forward(ctx: Any, kernel: Tensor, bias: Tensor, depth: int, forget_bias: float) -> Any:
        ctx.depth, ctx.width = depth, kernel.shape[0]
        n = bias.shape[0] // 4
        perm = _block_index(kernel.device, "tf", "torch")
        k = kernel.contiguous().view(kernel.shape[0], 4, n).index_select(1, perm)  # (I + P, 4, H), torch's blocks
        k = k.view(kernel.shape[0], 4 * n)  # (I + P, 4H)
        w_ih = k[:depth].t().contiguous()  # (4H, I)
        w_hh = k[depth:].t().contiguous()  # (4H, P)
        b_ih = bias.view(4, n).index_select(0, perm)  # (4, H)
        if forget_bias:
            b_ih[gate_index("LSTM", "torch", "f")] += forget_bias
        return w_ih, w_hh, b_ih.view(4 * n)

    @staticmethod
    def backward(ctx: Any, g_ih: Tensor | None, g_hh: Tensor | None, g_b: Tensor | None) -> Any:
        depth, width = ctx.depth, ctx.width
        like = next(g for g in (g_ih, g_hh, g_b) if g is not None)
        rows = like.shape[0]
        g_ih = g_ih if g_ih is not None else like.new_zeros(rows, depth)
        g_hh = g_hh if g_hh is not None else like.new_zeros(rows, width - depth)
        g_b = g_b if g_b is not None else like.new_zeros(rows)
        # Differentiable ops, so that double backward works too.
        perm = _block_index(like.device, "torch", "tf")
        g = torch.cat([g_ih, g_hh], 1)  # (4H, I + P) in torch's blocks
        g_kernel = g.t().reshape(width, 4, rows // 4).index_select(1, perm).reshape(width, rows)  # (I + P, 4H)
        g_bias = g_b.view(4, -1).index_select(0, perm).view(-1)
        return (
            g_kernel if ctx.needs_input_grad[0] else None,
            g_bias if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


_TORCH_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tf_lstm_as_torch(cell: Any, forget_bias: float, has_proj: bool) -> list[Tensor]:
    """TF kernel ``(I + P, 4H)`` (i, j, f, o) + bias + forget_bias -> torch's ``w_ih, w_hh, b_ih, b_hh(, w_hr)``.

    Exact: ``W_ih = reorder(kernel[:I]).T``, ``W_hh = reorder(kernel[I:]).T``, ``b_ih = reorder(bias + forget_bias
    on f)``, ``b_hh = 0``. Without autograd the result is cached per cell until a parameter changes.

    Example::

        >>> cell = rnnkit.BasicLSTMCell(4, input_size=3)
        >>> w_ih, w_hh, b_ih, b_hh = tf_lstm_as_torch(cell, 1.0, has_proj=False)
        >>> torch.equal(w_ih, relayout(cell.kernel[:3], "LSTM", "tf", "torch", dim=1).t())
        True
        >>> torch.equal(b_ih, add_to_gate(relayout(cell.bias, "LSTM", "tf", "torch"), 1.0, "LSTM", "torch", "f"))
        True
    """
    kernel, bias = cell.kernel, cell.bias
    proj = cell.projection.kernel if has_proj else None
    grad = torch.is_grad_enabled() and (
        kernel.requires_grad or bias.requires_grad or (proj is not None and proj.requires_grad)
    )
    if not grad:
        key = (id(kernel), kernel._version, id(bias), bias._version, forget_bias)
        if proj is not None:
            key += (id(proj), proj._version)
        hit = _TORCH_WEIGHTS.get(cell)
        if hit is not None and hit[0] == key:
            return hit[1]
    w_ih, w_hh, b_ih = _TFKernelAsTorch.apply(kernel, bias, cell.input_depth, forget_bias)
    params = [w_ih, w_hh, b_ih, torch.zeros_like(b_ih)]
    if proj is not None:
        params.append(proj.t())
    if not grad:
        _TORCH_WEIGHTS[cell] = (key, params)
    return params
