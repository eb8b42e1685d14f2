"""rnnkit's version, in a module of its own: files rnnkit writes record it, without importing the whole package."""

__version__ = "0.1.0"
