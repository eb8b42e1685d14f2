"""TF1 names for porting by changing one import: ``import rnnkit as tf``.

``tf.nn.rnn_cell.BasicLSTMCell``, ``tf.nn.dynamic_rnn``, ``tf.contrib.rnn.MultiRNNCell``,
``tf.contrib.rnn.stack_bidirectional_dynamic_rnn`` and ``tf.compat.v1.nn...`` all resolve to
rnnkit's own objects; nothing here adds behaviour.
"""

from __future__ import annotations

from types import SimpleNamespace

from . import runners
from ._structure import LSTMStateTuple
from .cells import (
    BasicLSTMCell,
    BasicRNNCell,
    DropoutWrapper,
    GRUCell,
    LayerNormBasicLSTMCell,
    LSTMCell,
    MultiRNNCell,
    ResidualWrapper,
    RNNCell,
)

_CORE_CELLS = {
    "RNNCell": RNNCell,
    "BasicRNNCell": BasicRNNCell,
    "BasicLSTMCell": BasicLSTMCell,
    "LSTMCell": LSTMCell,
    "GRUCell": GRUCell,
    "MultiRNNCell": MultiRNNCell,
    "DropoutWrapper": DropoutWrapper,
    "ResidualWrapper": ResidualWrapper,
    "LSTMStateTuple": LSTMStateTuple,
}
_RUNNERS = {
    "dynamic_rnn": runners.dynamic_rnn,
    "static_rnn": runners.static_rnn,
    "bidirectional_dynamic_rnn": runners.bidirectional_dynamic_rnn,
    "static_bidirectional_rnn": runners.static_bidirectional_rnn,
}

nn = SimpleNamespace(rnn_cell=SimpleNamespace(**_CORE_CELLS), **_RUNNERS)
contrib = SimpleNamespace(
    rnn=SimpleNamespace(
        **_CORE_CELLS,
        LayerNormBasicLSTMCell=LayerNormBasicLSTMCell,
        stack_bidirectional_dynamic_rnn=runners.stack_bidirectional_dynamic_rnn,
        static_rnn=runners.static_rnn,
        static_bidirectional_rnn=runners.static_bidirectional_rnn,
    )
)
compat = SimpleNamespace(v1=SimpleNamespace(nn=nn, contrib=contrib))
