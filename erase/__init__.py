"""erase: make trained models forget."""

__version__ = "0.1.0"
