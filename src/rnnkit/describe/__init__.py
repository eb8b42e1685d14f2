"""Describe recurrent stacks: parameter formulas, gate orders, state structures, shapes and diagrams.

``summary(module, input_shape)`` is the Python side of ``rnnkit explain``::

    >>> s = rnnkit.describe.summary(rnnkit.BasicLSTMCell(128), (32, 100))
    >>> s.total_params, [r.name for r in s.rows]
    (117248, ['kernel', 'bias'])
    >>> print(s)   # the table, shapes, state and notes
    BasicLSTMCell(128) on inputs (32, 100)  [TF1 vocabulary]
    ...
"""

from ._layer_summary import layer_mode
from ._summary import summary
from ._table import Summary
from .diagram import StackLayer
from .formulas import ParamRow, cell_rows, layer_rows

__all__ = ["summary", "Summary", "StackLayer", "ParamRow", "cell_rows", "layer_rows", "layer_mode"]
