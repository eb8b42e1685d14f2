"""Describe recurrent stacks: parameter formulas, gate orders, state structures, shapes and diagrams.

``summary(module, input_shape)`` is the Python side of ``rnnkit explain``::

    >>> print(rnnkit.describe.summary(rnnkit.BasicLSTMCell(128), (32, 100)))   # doctest: +SKIP
"""

from ._table import StackLayer, Summary, layer_mode, summary
from .formulas import ParamRow, cell_rows, layer_rows

__all__ = ["summary", "Summary", "StackLayer", "ParamRow", "cell_rows", "layer_rows", "layer_mode"]
