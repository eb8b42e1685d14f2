"""Clear errors for bad input: each names the component, what was expected and what came."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnkit.cells.torch_layout import TorchGRUCell, TorchLSTMCell
from rnnkit.layers import GRU, LSTM, RNN


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: LSTM(4, 3, proj_size=3), ValueError, r"LSTM: proj_size has to be smaller than hidden_size \(3\)"),
        (lambda: LSTM(4, 3, proj_size=-1), ValueError, "LSTM: proj_size must be greater than zero.*, got -1"),
        (lambda: GRU(4, 3, dropout=1.5), ValueError, r"GRU: dropout should be a number in range \[0, 1\].*got 1.5"),
        (lambda: RNN(4, 3, dropout=-0.1), ValueError, r"RNN: dropout should be a number in range \[0, 1\]"),
        (lambda: RNN(4, 3, dropout=True), ValueError, "dropout should be a number"),
        (lambda: RNN(4, 3, nonlinearity="sigmoid"), ValueError, "RNN: Unknown nonlinearity 'sigmoid'"),
        (lambda: RNN(0, 3), ValueError, "RNN: input_size must be greater than zero.*, got 0"),
        (lambda: GRU(4, 2.5), ValueError, "GRU: hidden_size should be of type int.*, got: float \\(2.5\\)"),
        (lambda: LSTM(4, 3, num_layers=0), ValueError, "LSTM: num_layers must be greater than zero.*, got 0"),
        (lambda: LSTM(4, 3, bias=1), TypeError, "LSTM: bias should be of type bool, got: int 1"),
        (lambda: GRU(4, 3, reset_after="no"), TypeError, "GRU: reset_after must be a bool"),
        (lambda: LSTM(4, 3, recurrent_dropout=1.0), ValueError, r"LSTM: recurrent_dropout must be .* \[0, 1\)"),
        (lambda: GRU(4, 3, zoneout=-0.5), ValueError, r"GRU: zoneout must be a number in \[0, 1\)"),
        (lambda: LSTM(4, 3, cell_clip=-1), ValueError, "LSTM: cell_clip must be a non-negative number or None"),
        (lambda: LSTM(4, 3, forget_bias="1"), TypeError, "LSTM: forget_bias must be a number"),
        (
            lambda: LSTM(4, 3, layer_norm=True, peepholes=True),
            ValueError,
            "LSTM: layer_norm=True cannot be combined with peepholes=True",
        ),
        (
            lambda: LSTM(4, 3, layer_norm=True, cell_clip=1.0),
            ValueError,
            "LSTM: layer_norm=True cannot be combined with cell_clip=1.0",
        ),
    ],
)
def test_constructor_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_input_errors():
    lstm = LSTM(4, 3, num_layers=2)
    with pytest.raises(ValueError, match=r"LSTM: .*expected input with input_size=4 .* got shape \(5, 2, 6\)"):
        lstm(torch.randn(5, 2, 6))
    with pytest.raises(ValueError, match=r"LSTM: expected input of rank 3 \(seq_len, batch, input_size\) or rank 2"):
        lstm(torch.randn(5, 2, 4, 1))
    with pytest.raises(TypeError, match=r"LSTM: input has dtype torch.int64, but the parameters are torch.float32"):
        lstm(torch.ones(5, 2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"input has dtype torch.float64, but the parameters are torch.float32"):
        lstm(torch.randn(5, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="expected input to be a tensor or a PackedSequence, got list"):
        lstm([[1.0] * 4])
    with pytest.raises(ValueError, match=r"PackedSequence data with input_size=4 .* got shape \(6, 3\)"):
        lstm(pack_padded_sequence(torch.randn(3, 2, 3), [3, 3]))


def test_hidden_state_errors():
    lstm = LSTM(4, 3, num_layers=2, proj_size=2, bidirectional=True)
    x = torch.randn(5, 2, 4)
    h, c = torch.zeros(4, 2, 2), torch.zeros(4, 2, 3)
    with pytest.raises(ValueError, match=r"LSTM: Expected hidden\[0\] size \(4, 2, 2\), got \[2, 2, 2\]: h_0 must be"):
        lstm(x, (h[:2], c))
    with pytest.raises(ValueError, match=r"LSTM: Expected hidden\[1\] size \(4, 2, 3\), got \[4, 2, 2\]: c_0 must be"):
        lstm(x, (h, h))
    with pytest.raises(ValueError, match=r"h_0 must be \(num_layers \* num_directions, size\)"):
        lstm(x[:, 0], (h, c))  # unbatched input wants 2-D states
    with pytest.raises(TypeError, match=r"LSTM: expected hx to be a tuple \(h_0, c_0\), got Tensor"):
        lstm(x, h)
    with pytest.raises(TypeError, match="LSTM: h_0 has dtype torch.float64, but the parameters are torch.float32"):
        lstm(x, (h.double(), c))
    gru = GRU(4, 3)
    with pytest.raises(ValueError, match=r"GRU: Expected hidden size \(1, 2, 3\), got \[1, 3\]: hx must be"):
        gru(x, torch.zeros(1, 3))


def test_lengths_errors():
    gru = GRU(4, 3, batch_first=True)
    x = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"GRU: lengths values must be in \[0, 5\] .* got min 1, max 6"):
        gru(x, lengths=[6, 1])
    with pytest.raises(ValueError, match=r"GRU: lengths values must be in \[0, 5\] .* got min -1"):
        gru(x, lengths=[-1, 2])
    with pytest.raises(ValueError, match=r"GRU: lengths must have shape \(batch,\) = \(2,\), got \(3,\)"):
        gru(x, lengths=[5, 2, 3])
    with pytest.raises(TypeError, match="GRU: lengths must hold integers, got dtype torch.float32"):
        gru(x, lengths=torch.tensor([5.0, 2.0]))
    packed = pack_padded_sequence(x, [5, 2], batch_first=True)
    with pytest.raises(ValueError, match="lengths= cannot be combined with a PackedSequence input"):
        gru(packed, lengths=[5, 2])
    assert gru(x[0], lengths=3)[0].shape == (5, 3)  # unbatched input takes a single length


def test_torch_layout_cell_errors():
    with pytest.raises(ValueError, match="TorchGRUCell: weight_ih must have a positive multiple of 3 rows, got 4"):
        TorchGRUCell({"weight_ih": torch.zeros(4, 2), "weight_hh": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match=r"TorchLSTMCell: for .* expected weights .*'weight_hh': \(8, 2\)"):
        TorchLSTMCell({"weight_ih": torch.zeros(8, 3), "weight_hh": torch.zeros(8, 3)})
    with pytest.raises(ValueError, match=r"expected weights .*'bias_hh'"):
        TorchLSTMCell({"weight_ih": torch.zeros(8, 3), "weight_hh": torch.zeros(8, 2), "bias_ih": torch.zeros(8)})
