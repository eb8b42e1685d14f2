"""``rnnkit.RNN`` and ``rnnkit.GRU``: ``torch.nn.RNN``/``torch.nn.GRU`` drop-ins on rnnkit's cells and runner."""

from __future__ import annotations

from typing import Any

from ..cells.torch_layout import TorchGRUCell, TorchRNNCell
from ._base import RNNLayer

__all__ = ["RNN", "GRU"]


def _refuse_projection(name: str, proj_size: Any) -> None:
    """torch.nn's ``RNN``/``GRU`` take no ``proj_size`` and refuse it with a ``ValueError``; so do these."""
    if proj_size is not None:
        raise ValueError(
            f"{name}: proj_size argument is only supported for LSTM, not RNN or GRU (it projects the LSTM's h); "
            f"got proj_size={proj_size!r}"
        )


class RNN(RNNLayer):
    r"""Multi-layer Elman RNN with ``torch.nn.RNN``'s contract (arguments, shapes, parameter names, init)::

        h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)          act: 'tanh' or 'relu'

    Layer ``k + 1`` reads layer ``k``'s output (both directions concatenated), with ``dropout`` between layers
    in training. Parameters per layer ``k`` (``_reverse`` for the backward direction): ``weight_ih_l{k}``
    ``(H, input_size)`` for ``k = 0``, ``(H, num_directions * H)`` after; ``weight_hh_l{k}`` ``(H, H)``;
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` ``(H,)``; all ``U(-1/sqrt(H), 1/sqrt(H))``.

    ``output, h_n = rnn(input, h_0=None, *, lengths=None)``: ``input`` ``(seq_len, batch, input_size)``
    (``(batch, seq_len, input_size)`` with ``batch_first``), ``(seq_len, input_size)`` unbatched, or a
    ``PackedSequence``; ``h_0`` and ``h_n`` ``(num_layers * num_directions, batch, H)``; ``output``
    ``(seq_len, batch, num_directions * H)`` from the last layer (a ``PackedSequence`` for one).
    ``lengths`` (``(batch,)`` ints) gives TF's variable-length semantics on padded input: zero outputs past
    each end, ``h_n`` at each last valid step, the backward direction reversed within each length.

    Beyond torch: ``recurrent_dropout`` (one mask per sequence on the ``h`` the recurrent matmul reads) and
    ``zoneout`` (training: each unit keeps its previous state with that probability; eval: the expectation).
    ``proj_size`` is refused with torch's ``ValueError`` (LSTM only). Bad arguments raise the classes torch.nn
    raises for them (``rnnkit.errors``).

    Example::

        >>> import torch
        >>> from rnnkit import RNN
        >>> rnn = RNN(100, 20, 3)
        >>> tuple(rnn.weight_ih_l0.shape), tuple(rnn.weight_ih_l1.shape)
        ((20, 100), (20, 20))
        >>> output, h_n = rnn(torch.randn(5, 2, 100))
        >>> tuple(output.shape), tuple(h_n.shape)
        ((5, 2, 20), (3, 2, 20))
    """

    cell_class = TorchRNNCell
    _extra_options = {"nonlinearity": "tanh"}
    _step_options = ("nonlinearity",)

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh", bias: bool = True,
        batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device: Any = None,
        dtype: Any = None, *, recurrent_dropout: float = 0.0, zoneout: float = 0.0, proj_size: None = None,
    ):  # fmt: skip
        _refuse_projection("RNN", proj_size)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(
            mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
            device, dtype, recurrent_dropout, zoneout,
        )  # fmt: skip
        self._create_parameters(device, dtype)



class GRU(RNNLayer):
    r"""Multi-layer GRU with ``torch.nn.GRU``'s contract, or TF's GRU math with ``reset_after=False``::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr),  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))         # reset_after=True (torch, cuDNN)
        n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)         # reset_after=False (TF1 GRUCell, Keras)
        h' = (1 - z) * n + z * h

    Parameters per layer ``k`` as torch (gate blocks r, z, n): ``weight_ih_l{k}`` ``(3H, input_size)`` (then
    ``(3H, num_directions * H)``), ``weight_hh_l{k}`` ``(3H, H)``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` ``(3H,)``;
    ``reset_after`` changes the math, not the parameters. Forward, ``lengths=``, ``step``, ``recurrent_dropout``
    and ``zoneout`` as ``RNN``.

    Example::

        >>> import torch
        >>> from rnnkit import GRU
        >>> gru = GRU(10, 16, num_layers=2, batch_first=True, reset_after=False)
        >>> output, h_n = gru(torch.randn(4, 7, 10), lengths=[7, 3, 5, 1])
        >>> tuple(output.shape), tuple(h_n.shape)
        ((4, 7, 16), (2, 4, 16))
    """

    cell_class = TorchGRUCell
    _extra_options = {"reset_after": True}
    _step_options = ("reset_after",)

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, batch_first: bool = False,
        dropout: float = 0.0, bidirectional: bool = False, device: Any = None, dtype: Any = None, *,
        reset_after: bool = True, recurrent_dropout: float = 0.0, zoneout: float = 0.0, proj_size: None = None,
    ):  # fmt: skip
        _refuse_projection("GRU", proj_size)
        if not isinstance(reset_after, bool):
            raise TypeError(f"GRU: reset_after must be a bool, got {reset_after!r}")
        self.reset_after = reset_after
        super().__init__(
            "GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
            device, dtype, recurrent_dropout, zoneout,
        )  # fmt: skip
        self._create_parameters(device, dtype)
