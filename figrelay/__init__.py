"""figrelay: a relay for the Fig settings manager's web hooks."""

__version__ = "0.1.0"
