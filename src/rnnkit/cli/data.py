"""Training data: text corpora as character streams, contiguous batches for truncated BPTT, the adding problem.

Character streams. The corpus is split once: the first ``1 - val_fraction`` of the characters train, the
rest is held out. A global batch of ``B`` rows cuts the training stream into ``B`` contiguous rows; batch
``j`` of an epoch is columns ``[j*T, (j+1)*T)`` of every row (targets shifted by one), so row ``b`` of batch
``j+1`` continues row ``b`` of batch ``j`` and the recurrent state can be carried across. Under
torch.distributed, rank ``r`` of ``W`` takes rows ``[r*B/W, (r+1)*B/W)`` of every batch.

The default corpus needs no download: a fixed list of the Python standard library's own modules, read from
the running interpreter's installation (about 1 MB of text).
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from dataclasses import dataclass

import torch

from .errors import EXIT_DATA, CLIError

__all__ = ["Corpus", "load_corpus", "Stream", "adding_batch", "DEFAULT_CORPUS_FILES"]

# Present in CPython 3.10 to 3.13; sorted; a missing one is skipped (the hash in the checkpoint records what ran).
DEFAULT_CORPUS_FILES = (
    "argparse.py",
    "calendar.py",
    "collections/__init__.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "inspect.py",
    "random.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
    "typing.py",
)


@dataclass(frozen=True)
class Corpus:
    """The text, its vocabulary (sorted distinct characters), a description and a SHA-256 of the text."""

    text: str
    vocab: str
    source: str
    sha256: str

    def encode(self, text: str) -> torch.Tensor:
        index = {ch: i for i, ch in enumerate(self.vocab)}
        return torch.tensor([index[ch] for ch in text], dtype=torch.long)


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        raise CLIError(f"data file {path!r} does not exist", EXIT_DATA)
    if os.path.isdir(path):
        raise CLIError(f"data file {path!r} is a directory; pass text files", EXIT_DATA)
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise CLIError(f"data file {path!r} is empty", EXIT_DATA)
    if b"\0" in raw[:65536]:
        raise CLIError(f"data file {path!r} is not a text file (it contains NUL bytes)", EXIT_DATA)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CLIError(
            f"data file {path!r} is not UTF-8 text (undecodable byte at offset {err.start})", EXIT_DATA
        ) from None


def load_corpus(paths: list[str] | None) -> Corpus:
    """The concatenated text of ``paths`` (UTF-8 text files), or the default stdlib corpus if none."""
    if paths:
        text = "".join(_read_text(p) for p in paths)
        source = ", ".join(paths)
    else:
        root = sysconfig.get_paths()["stdlib"]
        found = [os.path.join(root, name) for name in DEFAULT_CORPUS_FILES if os.path.isfile(os.path.join(root, name))]
        if not found:
            raise CLIError(f"no default corpus: none of the standard library files are under {root}", EXIT_DATA)
        text = "".join(_read_text(p) for p in found)
        source = f"Python standard library ({len(found)} files under {root})"
    return Corpus(text, "".join(sorted(set(text))), source, hashlib.sha256(text.encode("utf-8")).hexdigest())


class Stream:
    """Contiguous ``(rows, T)`` batches of a token stream for truncated BPTT (see the module docstring)."""

    def __init__(self, ids: torch.Tensor, batch: int, seq_len: int, what: str):
        rows_len = (len(ids) - 1) // batch
        self.batches_per_epoch = rows_len // seq_len
        if self.batches_per_epoch < 1:
            need = batch * seq_len + 1
            raise CLIError(
                f"--seq-len {seq_len} with --batch {batch} needs at least {need:,} characters of {what}, "
                f"but it has {len(ids):,}; lower --seq-len or --batch, or add data",
                EXIT_DATA,
            )
        self.x = ids[: batch * rows_len].view(batch, rows_len)  # (B, L)
        self.y = ids[1 : batch * rows_len + 1].view(batch, rows_len)  # (B, L)
        self.seq_len = seq_len

    def batch(self, step: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Batch ``step`` (counting from 0 over all epochs) for ``rows``: ``(x, y, starts_epoch)``, each ``(b, T)``."""
        j = step % self.batches_per_epoch
        cols = slice(j * self.seq_len, (j + 1) * self.seq_len)
        return self.x[rows, cols], self.y[rows, cols], j == 0


def split(ids: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held_out)``: the last ``val_fraction`` of the stream is held out (at least 2 characters)."""
    n_val = max(2, math.ceil(len(ids) * val_fraction))
    if len(ids) - n_val < 2:
        raise CLIError(f"the corpus has {len(ids):,} characters: too few to hold out {n_val:,} and train", EXIT_DATA)
    return ids[:-n_val], ids[-n_val:]


def adding_batch(batch: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997): inputs ``(batch, seq_len, 2)``, targets ``(batch,)``.

    Channel 0 holds ``seq_len`` values from U(0, 1); channel 1 marks two of them, one in each half of the
    sequence; the target is the sum of the two marked values. Predicting the mean 1.0 scores
    ``Var(U1 + U2) = 1/6 = 0.167``.
    """
    values = torch.rand(batch, seq_len, generator=generator)  # (B, T)
    half = seq_len // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, seq_len, (batch,), generator=generator)
    marks = torch.zeros(batch, seq_len)
    rows = torch.arange(batch)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]  # (B,)
    return torch.stack([values, marks], dim=-1), target  # (B, T, 2), (B,)
