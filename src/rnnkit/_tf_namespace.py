"""TF1 names for porting by changing one import: ``import rnnkit as tf``.

``tf.nn.rnn_cell.BasicLSTMCell``, ``tf.nn.dynamic_rnn``, ``tf.contrib.rnn.MultiRNNCell``,
``tf.contrib.rnn.stack_bidirectional_dynamic_rnn`` and ``tf.compat.v1.nn...`` all resolve to
rnnkit's own objects; nothing here adds behaviour.

The cells in ``nn.rnn_cell`` and ``contrib.rnn`` are the cell registry's (``rnnkit.cells.registry``): every
class registered with that namespace, looked up when the name is read, so a cell registered later shows up
too. The runners and ``LSTMStateTuple`` are fixed attributes.

Example::

    >>> import rnnkit as tf
    >>> tf.nn.rnn_cell.GRUCell is tf.contrib.rnn.GRUCell is tf.compat.v1.nn.rnn_cell.GRUCell
    True
    >>> "LayerNormBasicLSTMCell" in dir(tf.contrib.rnn), "LayerNormBasicLSTMCell" in dir(tf.nn.rnn_cell)
    (True, False)
"""

from __future__ import annotations

from typing import Any

from . import runners
from ._structure import LSTMStateTuple
from .cells import cell_entries

__all__ = ["TFNamespace", "TF_KINDS", "nn", "contrib", "compat"]

# The registry kinds TF1's modules export: cells, MultiRNNCell, wrappers and the abstract RNNCell.
TF_KINDS = ("leaf", "stack", "wrapper", "base")


class TFNamespace:
    """A TF1 module: fixed attributes, plus the registry's cells that declare ``namespace`` (read at access time).

    ``path`` is the module's name under ``rnnkit`` (``"nn.rnn_cell"``), for error messages and ``repr``.
    """

    def __init__(self, path: str, namespace: str | None = None, **attributes: Any):
        self._path = path
        self._namespace = namespace
        self.__dict__.update(attributes)

    def _cells(self) -> dict[str, type]:
        if self._namespace is None:
            return {}
        return {e.name: e.cls for e in cell_entries(TF_KINDS, self._namespace)}

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fixed attributes.
        if not name.startswith("_"):
            cls = self._cells().get(name)
            if cls is not None:
                return cls
        raise AttributeError(f"module 'rnnkit.{self.__dict__.get('_path', '?')}' has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        fixed = [k for k in self.__dict__ if not k.startswith("_")]
        return sorted({*fixed, *self._cells()})

    def __repr__(self) -> str:
        return f"<TF1 namespace rnnkit.{self._path}: {', '.join(dir(self))}>"


nn = TFNamespace(
    "nn",
    rnn_cell=TFNamespace("nn.rnn_cell", "nn.rnn_cell", LSTMStateTuple=LSTMStateTuple),
    dynamic_rnn=runners.dynamic_rnn,
    static_rnn=runners.static_rnn,
    bidirectional_dynamic_rnn=runners.bidirectional_dynamic_rnn,
    static_bidirectional_rnn=runners.static_bidirectional_rnn,
)
contrib = TFNamespace(
    "contrib",
    rnn=TFNamespace(
        "contrib.rnn",
        "contrib.rnn",
        LSTMStateTuple=LSTMStateTuple,
        stack_bidirectional_dynamic_rnn=runners.stack_bidirectional_dynamic_rnn,
        static_rnn=runners.static_rnn,
        static_bidirectional_rnn=runners.static_bidirectional_rnn,
    ),
)
compat = TFNamespace("compat", v1=TFNamespace("compat.v1", nn=nn, contrib=contrib))
