"""TF1 variables -> rnnkit cells a user built: ``tf_variable_names`` and ``load_tf_variables`` (like TF's
``Saver.restore`` into a graph of cells). A cell's TF variable name is its scope plus its parameter name with
``/`` for ``.`` (see ``rnnkit.convert.tf_cells``); wrappers add no scope, as in TF.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..cells import GRUCell, MultiRNNCell, RNNCell, RNNCellWrapper
from ._tf_variables import _SCOPE_OF
from .tf_cells import TFCellStack, _as_stack

__all__ = ["tf_variable_names", "load_tf_variables"]


def _scope_name(cell: RNNCell) -> str:
    if type(cell).__name__ in _SCOPE_OF:
        return _SCOPE_OF[type(cell).__name__]
    raise TypeError(f"load_tf_variables: no TF scope name known for a {type(cell).__name__}")


def _walk(module: RNNCell, tf_prefix: str, param_prefix: str) -> list[tuple[RNNCell, str, str]]:
    """``(leaf cell, its TF scope, its parameter prefix)`` for every leaf under ``module``."""
    if isinstance(module, MultiRNNCell):
        out = []
        for k, child in enumerate(module.cells):
            if module.first_layer_of(k) == k:  # a repeated cell's variables live once, in its first layer's scope
                out += _walk(child, f"{tf_prefix}/multi_rnn_cell/cell_{k}", f"{param_prefix}cell_{k}.")
        return out
    if isinstance(module, RNNCellWrapper):
        return _walk(module.cell, tf_prefix, f"{param_prefix}cell.")
    return [(module, f"{tf_prefix}/{_scope_name(module)}", param_prefix)]


def _roots(stack: TFCellStack) -> list[tuple[RNNCell, str]]:
    """``(runnable cell, its TF scope)`` for every direction/layer the runner calls separately."""
    if stack.topology == "unidirectional":
        return [(stack.cell_fw, stack.scope)]
    if stack.topology == "bidirectional":
        return [(stack.cell_fw, f"{stack.scope}/fw"), (stack.cell_bw, f"{stack.scope}/bw")]
    out = []
    for k, (fw, bw) in enumerate(zip(stack.cells_fw, stack.cells_bw, strict=True)):
        base = f"{stack.scope}/cell_{k}/bidirectional_rnn"
        out += [(fw, f"{base}/fw"), (bw, f"{base}/bw")]
    return out


def _user_stack(cells: Any, scope: str | None, component: str) -> TFCellStack:
    if isinstance(cells, TFCellStack):
        return (
            cells
            if scope is None
            else TFCellStack(
                cells.topology, cells.cells_fw, cells.cells_bw, multi_rnn_cell=cells.multi_rnn_cell, scope=scope
            )
        )
    stack = _as_stack(cells, component)
    if isinstance(cells, (tuple, list)):  # keep the user's own (wrapped) cells as the runnable ones
        fw, bw = cells
        if isinstance(fw, RNNCell):
            stack.cell_fw, stack.cell_bw = fw, bw
    else:
        stack.cell_fw = cells
    if scope is not None:
        stack.scope = scope.strip("/")
    return stack


def tf_variable_names(cells: Any, scope: str | None = None) -> dict[str, str]:
    """``{rnnkit parameter name: TF1 variable name}`` for a cell, a MultiRNNCell, a ``(fw, bw)`` pair ...

    Parameter names are relative to each runnable cell (``cell_0.kernel``), prefixed ``fw.``/``bw.``
    for two directions and ``fw.k.``/``bw.k.`` for stacked bidirectional layers.
    """
    stack = _user_stack(cells, scope, "tf_variable_names")
    names = {}
    roots = _roots(stack)
    for index, (root, tf_scope) in enumerate(roots):
        prefix = _root_prefix(stack, index)
        for leaf, leaf_scope, param_prefix in _walk(root, tf_scope, ""):
            for name, _ in leaf.named_parameters():
                names[f"{prefix}{param_prefix}{name}"] = f"{leaf_scope}/{name.replace('.', '/')}"
    return names


def _root_prefix(stack: TFCellStack, index: int) -> str:
    if stack.topology == "unidirectional":
        return ""
    side = "fw" if index % 2 == 0 else "bw"
    return f"{side}." if stack.topology == "bidirectional" else f"{side}.{index // 2}."


def load_tf_variables(cells: Any, variables: Mapping[str, Any], scope: str | None = None) -> Any:
    """Copy TF1 variables into rnnkit cells you built yourself (like ``Saver.restore``); returns ``cells``.

    ``cells``: a cell or ``MultiRNNCell`` (run with ``dynamic_rnn``, default scope ``"rnn"``), a
    ``(cell_fw, cell_bw)`` pair (``bidirectional_dynamic_rnn``, ``"bidirectional_rnn"``), a
    ``(cells_fw, cells_bw)`` pair of lists (``stack_bidirectional_dynamic_rnn``,
    ``"stack_bidirectional_rnn"``) or a `TFCellStack`. Cells that are not built yet are built for
    the input depth the variables imply. Every parameter must find its variable with its shape:
    errors name the TF variable, the cell and both shapes. Variables the cells do not use
    (optimizer slots, other layers) are ignored, as TF's ``Saver`` ignores them.

    Example::

        >>> from rnnkit.convert import LayerConfig, torch_to_tf
        >>> tf_vars = torch_to_tf(torch.nn.LSTM(3, 4, num_layers=2).state_dict(), LayerConfig("LSTM", 3, 4, 2))
        >>> cell = rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(4) for _ in range(2)])
        >>> _ = load_tf_variables(cell, tf_vars)     # or read_tf_checkpoint("ckpt"); returns the cell
        >>> torch.equal(cell.cells[1].kernel, tf_vars["rnn/multi_rnn_cell/cell_1/basic_lstm_cell/kernel"])
        True
    """
    stack = _user_stack(cells, scope, "load_tf_variables")
    for root, tf_scope in _roots(stack):
        leaves = _walk(root, tf_scope, "")
        if not root.built:
            first, leaf_scope, _ = leaves[0]
            kernel_name = f"{leaf_scope}/{'gates/kernel' if isinstance(first, GRUCell) else 'kernel'}"
            if kernel_name not in variables:
                raise ValueError(f"load_tf_variables: missing variable {kernel_name!r} (to build the unbuilt cell)")
            depth = int(variables[kernel_name].shape[0]) - first.output_size
            if depth <= 0:
                raise ValueError(
                    f"load_tf_variables: {kernel_name!r} has shape {tuple(variables[kernel_name].shape)}, too few "
                    f"rows for a {type(first).__name__} with output size {first.output_size}"
                )
            root.build(depth)
        for leaf, leaf_scope, _ in leaves:
            _assign(leaf, leaf_scope, variables)
    return cells


def _assign(leaf: RNNCell, leaf_scope: str, variables: Mapping[str, Any]) -> None:
    pending = []
    for name, param in leaf.named_parameters():
        tf_name = f"{leaf_scope}/{name.replace('.', '/')}"
        if tf_name not in variables:
            present = sorted(v for v in variables if v.startswith(leaf_scope + "/"))
            raise ValueError(
                f"load_tf_variables: missing variable {tf_name!r} (shape {tuple(param.shape)}) for the "
                f"{type(leaf).__name__}'s {name!r}; variables under {leaf_scope!r}: {present}"
            )
        value = variables[tf_name]
        value = value.detach() if isinstance(value, torch.Tensor) else torch.from_numpy(value.copy())
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"load_tf_variables: variable {tf_name!r} has shape {tuple(value.shape)}, but the "
                f"{type(leaf).__name__}'s {name!r} expects {tuple(param.shape)}"
            )
        pending.append((param, value))
    with torch.no_grad():
        for param, value in pending:
            param.copy_(value)
