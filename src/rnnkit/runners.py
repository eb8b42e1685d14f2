"""Runners: unroll any cell over time, TF1's ``dynamic_rnn`` family.

A runner knows nothing about gates. It validates once, builds the cell for the input depth,
and steps ``cell.call`` over time with TF's ``sequence_length`` semantics:

* outputs past a sequence's length are zeros;
* the returned state is the state at each sequence's last valid step (the initial state for
  length 0);
* a backward direction reverses each sequence within its own length, so it reads the valid
  steps last-to-first and its padding stays at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._structure import as_torch_dtype, check_float_dtype, check_placement, check_state, named_leaves
from .cells import RNNCell
from .engine import LayerStack, reverse_sequence, run_cell, run_stack
from .errors import DtypeError, InputValueError, NotATensorError, ShapeError

__all__ = ["dynamic_rnn", "static_rnn", "bidirectional_dynamic_rnn", "static_bidirectional_rnn"]
__all__ += ["stack_bidirectional_dynamic_rnn", "reverse_sequence"]


def _check_cell(cell: Any, component: str) -> RNNCell:
    if not isinstance(cell, RNNCell):
        raise TypeError(f"{component}: expected an rnnkit RNNCell, got {type(cell).__name__}")
    return cell


def _check_inputs(inputs: Any, component: str, time_major: bool) -> torch.Tensor:
    if isinstance(inputs, np.ndarray):  # TF's runners convert arrays (convert_to_tensor); TF code passes them
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor):
        raise NotATensorError(
            f"{component}: expected inputs to be a torch.Tensor (or a numpy array), got {type(inputs).__name__}"
        )
    check_float_dtype(inputs.dtype, f"{component} inputs")
    if inputs.dim() != 3:
        layout = "(time, batch, depth)" if time_major else "(batch, time, depth)"
        raise ShapeError(f"{component}: expected inputs of rank 3 {layout}, got shape {tuple(inputs.shape)}")
    return inputs


def _check_lengths(
    sequence_length: Any, batch: int, steps: int, device: torch.device, component: str, name: str = "sequence_length"
):
    """``sequence_length`` as a ``(batch,)`` int64 tensor on ``device``, each value in ``[0, steps]``.

    ``name`` is the argument's name in the caller's API, for the error messages. The lengths' device is
    ``check_placement``'s to check, before this reads their values.
    """
    if sequence_length is None:
        return None
    lengths = torch.as_tensor(sequence_length)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise DtypeError(f"{component}: {name} must hold integers, got dtype {lengths.dtype}")
    if lengths.shape != (batch,):
        # A rank other than 1 also in TF1's words ("must be a vector"), which code written against TF matches.
        what = "must be a vector and " if lengths.dim() != 1 else ""
        raise ShapeError(f"{component}: {name} {what}must have shape (batch,) = ({batch},), got {tuple(lengths.shape)}")
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > steps):
        raise InputValueError(
            f"{component}: {name} values must be in [0, {steps}] (the number of time steps), "
            f"got min {int(lengths.min())}, max {int(lengths.max())}"
        )
    return lengths.to(device=device, dtype=torch.int64)


def _check_dtype_argument(dtype: Any, inputs: torch.Tensor, component: str) -> None:
    if dtype is not None and as_torch_dtype(dtype) != inputs.dtype:
        raise DtypeError(f"{component}: dtype={as_torch_dtype(dtype)} but the inputs are {inputs.dtype}")


def _initial_state(
    cell: RNNCell, initial_state: Any, inputs: torch.Tensor, component: str, name: str = "initial_state"
) -> Any:
    """``initial_state`` checked against ``cell`` (structure, shape, then dtype and device), or zeros.

    ``cell`` must be built (its parameters are what the state's dtype and device are checked against).
    """
    if initial_state is None:
        check_placement(component, cell, [("inputs", inputs)])
        return cell.zero_state(inputs.shape[1], inputs.dtype, device=inputs.device)
    state = check_state(initial_state, cell.state_size, inputs.shape[1], f"{component} {name}")
    check_placement(component, cell, [("inputs", inputs), *named_leaves(state, name)])
    return state


def _build_checked(cell: RNNCell, x: torch.Tensor, component: str, shape: tuple[int, ...]) -> None:
    """Build ``cell`` for the depth of ``x``, or refuse if it is built for another (``shape``: for the message)."""
    if cell.built and x.shape[-1] != cell.input_depth:
        raise ShapeError(
            f"{component}: {type(cell).__name__} is built for input depth {cell.input_depth}, "
            f"got inputs of shape {shape}"
        )
    cell._build_for(x)


def _prepare(cell: Any, inputs: Any, sequence_length: Any, time_major: bool, component: str):
    """Shared set-up: check ``cell`` and ``inputs``, go time-major, build, check the lengths (device, then values)."""
    _check_cell(cell, component)
    inputs = _check_inputs(inputs, component, time_major)
    x = inputs if time_major else inputs.transpose(0, 1)  # (T, B, D)
    _build_checked(cell, x, component, tuple(inputs.shape))
    check_placement(component, None, [("inputs", x)], ("sequence_length", sequence_length))
    lengths = _check_lengths(sequence_length, x.shape[1], x.shape[0], x.device, component)
    return x, lengths


def _stack_states(
    layers: list[tuple[RNNCell, ...]], x: torch.Tensor, initial_states: Sequence[Sequence[Any]], component: str
) -> list[list[Any]]:
    """Check and build every (layer, direction)'s cell for the depth it will read (the input's, then the sum of
    the previous layer's output sizes), and its initial state (``None`` for zeros) -> the states per layer."""
    depth, states = x.shape[-1], []
    for k, cells in enumerate(layers):
        row = []
        for d, cell in enumerate(cells):
            where = f"{component} layer {k}" + ((" backward" if d else " forward") if len(cells) > 1 else "")
            _check_cell(cell, where)
            _build_checked(cell, x.new_empty(0, 0, depth), where, (x.shape[0], x.shape[1], depth))
            row.append(_initial_state(cell, initial_states[k][d], x, where))
        states.append(row)
        depth = sum(cell.output_size for cell in cells)
    return states


def dynamic_rnn(
    cell: RNNCell,
    inputs: torch.Tensor,
    sequence_length: Any = None,
    initial_state: Any = None,
    dtype: Any = None,
    parallel_iterations: int | None = None,
    swap_memory: bool = False,
    time_major: bool = False,
    scope: str | None = None,
) -> tuple[torch.Tensor, Any]:
    """Unroll ``cell`` over ``inputs``: TF1's ``tf.nn.dynamic_rnn``.

    Args:
        inputs: ``(batch, time, depth)``, or ``(time, batch, depth)`` with ``time_major=True``.
        sequence_length: optional ``(batch,)`` ints in ``[0, time]``.
        initial_state: a structure matching ``cell.state_size``; zeros when omitted.
        dtype: optional; must equal the inputs' dtype (TF needs it when no initial state is
            given; rnnkit takes the inputs' dtype).
        parallel_iterations, swap_memory, scope: accepted for TF compatibility, unused.

    Returns:
        ``(outputs, state)``: outputs ``(batch, time, cell.output_size)`` (time-major if
        ``time_major``), zero past each length; ``state`` the final state, in the structure of
        ``cell.state_size``, taken at each sequence's last valid step.

    Example::

        >>> import torch, rnnkit
        >>> cell = rnnkit.BasicLSTMCell(128)
        >>> outputs, state = rnnkit.dynamic_rnn(cell, torch.randn(32, 10, 100), sequence_length=[10] * 32)
        >>> tuple(outputs.shape), tuple(state.h.shape)
        ((32, 10, 128), (32, 128))
    """
    return _dynamic_rnn(cell, inputs, sequence_length, initial_state, dtype, time_major, "dynamic_rnn")


def _dynamic_rnn(
    cell: Any, inputs: Any, sequence_length: Any, initial_state: Any, dtype: Any, time_major: bool, component: str
) -> tuple[torch.Tensor, Any]:
    """``dynamic_rnn`` under the name of the runner the user called (``static_rnn`` goes through here too)."""
    x, lengths = _prepare(cell, inputs, sequence_length, time_major, component)
    _check_dtype_argument(dtype, x, component)
    state = _initial_state(cell, initial_state, x, component)
    out, state = run_cell(cell, x, state, lengths)
    return (out if time_major else out.transpose(0, 1)), state


def static_rnn(
    cell: RNNCell,
    inputs: Sequence[torch.Tensor],
    initial_state: Any = None,
    dtype: Any = None,
    sequence_length: Any = None,
    scope: str | None = None,
) -> tuple[list[torch.Tensor], Any]:
    """TF1's ``tf.nn.static_rnn``: ``inputs`` is a list of ``(batch, depth)`` tensors, one per step.

    Returns ``(outputs, state)`` with ``outputs`` a list of ``(batch, output_size)`` tensors;
    the semantics of ``sequence_length`` are ``dynamic_rnn``'s.
    """
    x = _stack_steps(inputs, "static_rnn")
    outputs, state = _dynamic_rnn(cell, x, sequence_length, initial_state, dtype, True, "static_rnn")
    return list(outputs.unbind(0)), state


def _stack_steps(inputs: Any, component: str) -> torch.Tensor:
    """The list of ``(batch, depth)`` steps as one time-major ``(T, B, D)`` tensor; the steps must agree in
    shape, dtype and device (``torch.stack`` would promote a dtype silently)."""
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (list, tuple)) or not inputs:
        raise TypeError(
            f"{component}: expected a non-empty list of (batch, depth) tensors, got {type(inputs).__name__}"
        )
    inputs = [torch.from_numpy(step) if isinstance(step, np.ndarray) else step for step in inputs]  # as TF converts
    for t, step in enumerate(inputs):
        if not isinstance(step, torch.Tensor):
            raise NotATensorError(
                f"{component}: expected inputs[{t}] to be a torch.Tensor (or a numpy array), got {type(step).__name__}"
            )
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) != 1:
        raise ShapeError(f"{component}: all time steps must have one shape, got {sorted(shapes)}")
    check_placement(component, None, [(f"inputs[{t}]", step) for t, step in enumerate(inputs)])
    with torch.autocast("cpu", enabled=False):  # (one dtype, nothing to cast; autocast refuses the other low one)
        return torch.stack(list(inputs))  # (T, B, D)


def bidirectional_dynamic_rnn(
    cell_fw: RNNCell,
    cell_bw: RNNCell,
    inputs: torch.Tensor,
    sequence_length: Any = None,
    initial_state_fw: Any = None,
    initial_state_bw: Any = None,
    dtype: Any = None,
    parallel_iterations: int | None = None,
    swap_memory: bool = False,
    time_major: bool = False,
    scope: str | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[Any, Any]]:
    """TF1's ``tf.nn.bidirectional_dynamic_rnn``: one forward and one backward unroll of the same inputs.

    The backward cell reads each sequence reversed within its length; its outputs are
    reversed back, so ``out_bw[:, t]`` is aligned with ``out_fw[:, t]``.

    Returns ``((out_fw, out_bw), (state_fw, state_bw))``, each output
    ``(batch, time, output_size)``; ``torch.cat(outputs, -1)`` gives the usual concatenation.
    Note that this over two ``MultiRNNCell``s is *not* a stacked bidirectional network in
    torch's sense (layer k+1 reading both directions of layer k): use
    ``stack_bidirectional_dynamic_rnn`` for that.
    """
    return _bidirectional_dynamic_rnn(
        cell_fw, cell_bw, inputs, sequence_length, initial_state_fw, initial_state_bw, dtype, time_major,
        "bidirectional_dynamic_rnn",
    )  # fmt: skip


def _bidirectional_dynamic_rnn(
    cell_fw: Any,
    cell_bw: Any,
    inputs: Any,
    sequence_length: Any,
    initial_state_fw: Any,
    initial_state_bw: Any,
    dtype: Any,
    time_major: bool,
    component: str,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[Any, Any]]:
    """``bidirectional_dynamic_rnn`` under the name of the runner the user called."""
    x, lengths = _prepare(cell_fw, inputs, sequence_length, time_major, f"{component} (forward)")
    _prepare(cell_bw, x, None, True, f"{component} (backward)")
    _check_dtype_argument(dtype, x, component)
    s_fw = _initial_state(cell_fw, initial_state_fw, x, f"{component} (forward)", "initial_state_fw")
    s_bw = _initial_state(cell_bw, initial_state_bw, x, f"{component} (backward)", "initial_state_bw")
    out_fw, s_fw = run_cell(cell_fw, x, s_fw, lengths)
    out_bw, s_bw = run_cell(cell_bw, x, s_bw, lengths, reverse=True)
    if not time_major:
        out_fw, out_bw = out_fw.transpose(0, 1), out_bw.transpose(0, 1)
    return (out_fw, out_bw), (s_fw, s_bw)


def static_bidirectional_rnn(
    cell_fw: RNNCell,
    cell_bw: RNNCell,
    inputs: Sequence[torch.Tensor],
    initial_state_fw: Any = None,
    initial_state_bw: Any = None,
    dtype: Any = None,
    sequence_length: Any = None,
    scope: str | None = None,
) -> tuple[list[torch.Tensor], Any, Any]:
    """TF1's ``tf.nn.static_bidirectional_rnn``: returns ``(outputs, state_fw, state_bw)`` with
    ``outputs`` a list of ``(batch, fw_size + bw_size)`` tensors."""
    component = "static_bidirectional_rnn"
    x = _stack_steps(inputs, component)
    (out_fw, out_bw), (s_fw, s_bw) = _bidirectional_dynamic_rnn(
        cell_fw, cell_bw, x, sequence_length, initial_state_fw, initial_state_bw, dtype, True, component
    )
    return list(torch.cat([out_fw, out_bw], -1).unbind(0)), s_fw, s_bw


def stack_bidirectional_dynamic_rnn(
    cells_fw: Sequence[RNNCell],
    cells_bw: Sequence[RNNCell],
    inputs: torch.Tensor,
    initial_states_fw: Sequence[Any] | None = None,
    initial_states_bw: Sequence[Any] | None = None,
    dtype: Any = None,
    sequence_length: Any = None,
    parallel_iterations: int | None = None,
    time_major: bool = False,
    scope: str | None = None,
    swap_memory: bool = False,
) -> tuple[torch.Tensor, tuple[Any, ...], tuple[Any, ...]]:
    """TF contrib's ``stack_bidirectional_dynamic_rnn``: stacked bidirectional layers.

    Layer ``k + 1`` reads ``concat(out_fw_k, out_bw_k)`` of layer ``k``: the topology of
    ``torch.nn.LSTM(num_layers=L, bidirectional=True)``. (A ``bidirectional_dynamic_rnn`` over
    two ``MultiRNNCell``s instead runs two independent deep stacks and concatenates only at the
    end: a different network, and a common porting trap.)

    Returns ``(outputs, states_fw, states_bw)``: ``outputs`` ``(batch, time, fw + bw)`` of the
    top layer, and one final state per layer and direction.
    """
    component = "stack_bidirectional_dynamic_rnn"
    cells_fw, cells_bw = list(cells_fw), list(cells_bw)
    if not cells_fw or len(cells_fw) != len(cells_bw):
        raise ValueError(
            f"{component}: expected as many backward as forward cells (at least one), "
            f"got {len(cells_fw)} forward and {len(cells_bw)} backward"
        )
    n = len(cells_fw)
    for name, states in (("initial_states_fw", initial_states_fw), ("initial_states_bw", initial_states_bw)):
        if states is not None and len(states) != n:
            raise ValueError(f"{component}: {name} must hold one state per layer ({n}), got {len(states)}")
    x, lengths = _prepare(cells_fw[0], inputs, sequence_length, time_major, component)
    _check_dtype_argument(dtype, x, component)
    initial_states = [
        (
            None if initial_states_fw is None else initial_states_fw[k],
            None if initial_states_bw is None else initial_states_bw[k],
        )
        for k in range(n)
    ]
    layers = list(zip(cells_fw, cells_bw, strict=True))
    out, states = run_stack(LayerStack(layers), x, _stack_states(layers, x, initial_states, component), lengths)
    out = out if time_major else out.transpose(0, 1)  # (B, T, fw + bw) of the top layer
    return out, tuple(s[0] for s in states), tuple(s[1] for s in states)
