"""``python -m rnnkit`` and ``torchrun -m rnnkit``: the command line (see ``rnnkit.cli``)."""

from rnnkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
