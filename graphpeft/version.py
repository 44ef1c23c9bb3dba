"""graphpeft's version (a leaf: every module may import it, so the package root need not be imported)."""

__version__ = "0.1.0"
