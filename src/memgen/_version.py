"""The version of memgen (one place, imported by every floor that records it)."""

__version__ = "0.1.0"
