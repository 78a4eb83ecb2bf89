"""The library version, written into every checkpoint, packed file and run summary."""

__version__ = "0.1.0"
