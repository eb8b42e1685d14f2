"""One registry of cells and options: drives gradcheck, dtype, state-dict and golden-name tests.

Each entry builds a fresh cell; ``INPUT_DEPTH`` is the depth every entry is run on.
"""

from __future__ import annotations

import rnnkit as rk

INPUT_DEPTH = 3

CELLS = {
    "basic_rnn": lambda: rk.BasicRNNCell(4),
    "basic_rnn_relu": lambda: rk.BasicRNNCell(4, activation="relu"),
    "basic_lstm": lambda: rk.BasicLSTMCell(4),
    "basic_lstm_concat_state": lambda: rk.BasicLSTMCell(4, forget_bias=0.5, state_is_tuple=False),
    "lstm": lambda: rk.LSTMCell(4),
    "lstm_peephole": lambda: rk.LSTMCell(4, use_peepholes=True),
    "lstm_full": lambda: rk.LSTMCell(5, use_peepholes=True, cell_clip=0.8, num_proj=3, proj_clip=0.6),
    "lstm_proj_concat_state": lambda: rk.LSTMCell(4, num_proj=2, state_is_tuple=False),
    "gru": lambda: rk.GRUCell(4),
    "layer_norm_lstm": lambda: rk.LayerNormBasicLSTMCell(4),
    "layer_norm_lstm_off": lambda: rk.LayerNormBasicLSTMCell(4, layer_norm=False),
    "multi": lambda: rk.MultiRNNCell([rk.BasicLSTMCell(4), rk.GRUCell(3), rk.BasicRNNCell(2)]),
    "multi_concat_state": lambda: rk.MultiRNNCell(
        [rk.BasicLSTMCell(4, state_is_tuple=False), rk.GRUCell(3)], state_is_tuple=False
    ),
    "dropout_wrapper": lambda: rk.DropoutWrapper(rk.LSTMCell(4, num_proj=2), 0.7, 0.8, 0.9),
    "residual_wrapper": lambda: rk.ResidualWrapper(rk.GRUCell(INPUT_DEPTH)),
}
