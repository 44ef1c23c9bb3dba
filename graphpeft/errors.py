"""Errors raised by graphpeft.

Every error names what went wrong and how to fix it. They all derive from
:class:`GraphPeftError`, so ``except graphpeft.errors.GraphPeftError`` catches
anything graphpeft raises on purpose.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GraphPeftError(Exception):
    """Base class of every error graphpeft raises on purpose."""


class RuleError(GraphPeftError, ValueError):
    """A rule file, a rule or a pattern is malformed (unknown key, bad value, bad glob)."""


class MatchError(GraphPeftError, ValueError):
    """Rules and the model's graph disagree: a rule matches nothing, or two rules claim one site."""


class TraceError(GraphPeftError, RuntimeError):
    """The model could not be exported to a graph."""


class CallError(GraphPeftError, TypeError):
    """A call to an adapted model used arguments it cannot take."""


class AdapterError(GraphPeftError, ValueError):
    """An adapter name or adapter state is invalid (unknown name, bad characters, merged state)."""


class LoadError(GraphPeftError, ValueError):
    """An adapter directory cannot be loaded onto this model; the model is left untouched."""


class SaveError(GraphPeftError, OSError):
    """An adapter directory cannot be written; any previous directory is left intact."""


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The up-to-``n`` entries of ``choices`` that look most like ``word``."""
    choices = list(dict.fromkeys(choices))
    # abbreviations first ('rank' -> 'r'), then spelling neighbours ('loar' -> 'lora')
    prefixed = [c for c in choices if word and c and (word.startswith(c) or c.startswith(word))]
    similar = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    found = list(dict.fromkeys(prefixed + similar))
    if not found:
        found = [c for c in choices if word and (word in c or c in word)]
    return found[:n]


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """`` (did you mean 'x' or 'y'?)`` or an empty string."""
    found = closest(word, choices, n)
    if not found:
        return ""
    return " (did you mean " + " or ".join(repr(f) for f in found) + "?)"


class UsageError(GraphPeftError, ValueError):
    """A tool (explain, viz, the CLI) was given an argument it cannot use: wrong object, level or path."""
