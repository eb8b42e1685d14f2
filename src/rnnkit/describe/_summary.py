"""``summary(module, input_shape)``: every parameter tensor, its formula, gate layout, and every shape."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..cells import RNNCell
from ._cell_summary import cell_summary
from ._layer_summary import layer_mode, layer_summary
from ._table import Summary, as_shape

__all__ = ["summary"]


def summary(module: nn.Module, input_shape: Sequence[int], *, title: str | None = None) -> Summary:
    """Describe a recurrent module for inputs of ``input_shape``: every parameter, formula, gate order, shape.

    ``module``: an rnnkit cell (``BasicLSTMCell``, ``MultiRNNCell``, wrappers, ...; built for the input depth
    if it is not yet) with ``input_shape`` ``(batch, input_depth)`` or ``(batch, time, input_depth)``; or a
    torch.nn-style ``RNN``/``LSTM``/``GRU`` (torch's or rnnkit's) with ``(seq_len, batch, input_size)``
    (``(batch, seq_len, input_size)`` if ``batch_first``) or unbatched ``(seq_len, input_size)``.

    Returns a ``Summary``: ``print(s)`` shows the table; ``s.total_params``, ``s.rows``, ``s.shapes`` give
    the numbers; ``s.diagram("stack.svg")`` draws the unrolled stack.

    Example::

        >>> s = summary(rnnkit.BasicRNNCell(128), (32, 100))
        >>> s.total_params
        29312
    """
    shape = as_shape(input_shape, "summary")
    if isinstance(module, RNNCell):
        return cell_summary(module, shape, title)
    mode = layer_mode(module)
    if mode is None:
        raise TypeError(
            f"summary: expected an rnnkit RNNCell or a torch.nn-style RNN/LSTM/GRU layer, got {type(module).__name__}"
        )
    return layer_summary(module, mode, shape, title)
