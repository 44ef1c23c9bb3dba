"""Bounded pattern matching: every regex and glob graphpeft takes from a file or a user runs in bounded time.

Python's ``re`` backtracks: ``(.+)+!`` against a 30-character module name runs for hours. graphpeft
matches with RE2 (google-re2), whose time is linear in the name, and keeps Python's meaning:

- a regex must be valid Python syntax (so it means what the user tested, ``re.fullmatch`` or PEFT's
  ``re.match(rf"(.*\\.)?({key})$", name)``), and the spellings whose meaning differs between the engines
  are rewritten to Python's meaning (``{,n}`` -> ``{0,n}``, ``\\Z`` -> ``\\z``, a ``[`` inside a class or a
  ``{`` that does not start a repeat stays literal);
- a regex that needs a backtracking engine (a lookaround, backreference, atomic group, possessive
  quantifier or conditional group: multimodal PEFT configs write ``^(?!.*vision).*q_proj``) runs on the
  ``regex`` module instead, in its ``re``-compatible mode (V0), under a time limit: each name may take
  :data:`BACKTRACKING_SECONDS_PER_NAME` of CPU time, and each pattern may spend
  :data:`BACKTRACKING_BUDGET_SECONDS` in all, refilled at :data:`BACKTRACKING_REFILL_PER_SECOND` per second
  (so one pass over a model's names costs a pattern about two seconds at most; a sane lookaround takes
  microseconds per name). Over the limit the match is an error saying the pattern backtracks
  catastrophically and how to rewrite it. That engine unrolls counted repeats, so such a regex may spell at
  most :data:`MAX_UNROLLED_PIECES` pieces. A regex without those constructs stays on RE2, however it would
  backtrack in Python;
- what only Python's compiler refuses (a look-behind of no fixed width) is refused here too, and so is
  verbose mode ``(?x)`` (the rewriting does not read its spaces and comments);
- ``\\d \\w \\s \\b`` and case-insensitive matching mean the same in the engines on printable ASCII
  names only: a name outside that range meets such a pattern with an error instead of a different answer;
- globs follow :func:`fnmatch.fnmatchcase` exactly (translated by :mod:`.globs`, not through ``re``).

The compile functions take the graphpeft error class to raise (``RuleError`` for rules, ``LoadError`` on
the load path), so a bad pattern reads as a problem of the input it came from.
"""

from __future__ import annotations

import functools
import re
import re._parser as re_parser
import threading
import time
from dataclasses import dataclass, field
from re._constants import (
    ASSERT,
    ASSERT_NOT,
    ATOMIC_GROUP,
    BRANCH,
    GROUPREF,
    GROUPREF_EXISTS,
    MAX_REPEAT,
    MIN_REPEAT,
    POSSESSIVE_REPEAT,
    SUBPATTERN,
)
from typing import Any

import re2
import regex

from .globs import glob_to_re2
from .options import shown

MAX_PATTERN_LENGTH = 4096
BACKTRACKING_SECONDS_PER_NAME = 0.25  # CPU seconds, as the regex module counts its timeout
BACKTRACKING_BUDGET_SECONDS = 2.0
BACKTRACKING_REFILL_PER_SECOND = 0.2  # of wall-clock time: a long-lived process keeps using a sane pattern
MAX_UNROLLED_PIECES = 10_000  # the regex module spells a{n} out n times (a{10**6}: a second, 300 MB)
_LOOKBEHIND_MAX = 2**32 - 1  # Python's "looks too much behind"

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr

# RE2's refusal of a regex that needs no backtracking (its error text) -> why, in the user's words
_REASONS = (
    (re.compile(r"invalid escape sequence: \\b"), "uses [\\b] (a backspace in Python; write \\x08)"),
    (re.compile(r"invalid repetition size"), "repeats a piece more than 1000 times"),
    (re.compile(r"pattern too large"), "compiles to a program too large to run"),
)
# a repeat as Python reads it ({,n} is {0,n}, which RE2 would read as text); any other { is a literal
_QUANTIFIER = re.compile(r"\{(\d*)(,?)(\d*)\}")
_NEEDS_BACKTRACKING = {
    ASSERT: "a lookaround assertion",
    ASSERT_NOT: "a lookaround assertion",
    GROUPREF: "a backreference",
    GROUPREF_EXISTS: "a conditional group",
    ATOMIC_GROUP: "an atomic group",
    POSSESSIVE_REPEAT: "a possessive quantifier",
}
_REWRITE_ADVICE = "rewrite it so that no repeated piece can match the same text in two ways (as (a|aa)+ or (a+)+ can)"
_INLINE_FLAGS = re.compile(r"\(\?([a-zA-Z]*(?:-[a-zA-Z]*)?)[:)]")
_ASCII_PRINTABLE = re.compile(r"[ -~]*")


class _Budget:
    """CPU seconds a pattern may still spend on the backtracking engine: a bucket of
    :data:`BACKTRACKING_BUDGET_SECONDS`, refilled at :data:`BACKTRACKING_REFILL_PER_SECOND` of wall-clock time."""

    def __init__(self) -> None:
        self._left = BACKTRACKING_BUDGET_SECONDS
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def allowance(self) -> float:
        """Seconds the next match may run: the per-name limit, or what is left of the budget if less."""
        with self._lock:
            now = time.monotonic()
            self._left = min(
                BACKTRACKING_BUDGET_SECONDS, self._left + (now - self._at) * BACKTRACKING_REFILL_PER_SECOND
            )
            self._at = now
            return min(BACKTRACKING_SECONDS_PER_NAME, self._left)

    def spend(self, seconds: float) -> None:
        with self._lock:
            self._left -= seconds


@dataclass(frozen=True)
class Matcher:
    """A compiled pattern. ``matches(name)`` answers as Python would (``re.fullmatch``, PEFT's key
    test or ``fnmatch.fnmatchcase``): on RE2 in time linear in ``name``, or, for a regex that needs
    backtracking, on the ``regex`` module within its time budget."""

    text: str  # what the user wrote
    what: str  # "pattern regex", "target_modules", ...: names the pattern in messages
    error: type[Exception]
    program: Any  # the compiled RE2 program, or the regex module's for a pattern that needs backtracking
    whole: bool  # match the whole name (else a prefix, as re.match)
    ascii_only: str | None  # the construct that needs a printable-ASCII name, if any
    dollar: bool  # uses $, which differs between the engines before a trailing newline
    empty_boundary: bool  # uses \B, which Python never matches in an empty name
    backtracking: str | None = None  # the construct that needs the backtracking engine, if any
    budget: _Budget | None = field(default=None, compare=False)

    def matches(self, name: str) -> bool:
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError:
            raise self._refuse(name, "is not valid Unicode text") from None
        if self.ascii_only and not (name.isascii() and name.isprintable()):
            raise self._refuse(
                name,
                f"holds characters outside printable ASCII, where {self.ascii_only} means "
                "something else in Python; spell those characters out",
            )
        if self.dollar and "\n" in name:
            raise self._refuse(name, "holds a newline, where $ means something else in Python; use \\Z")
        if self.empty_boundary and not name:
            raise self._refuse(name, "is empty, where \\B means something else in Python")
        if self.budget is not None:
            return self._backtracked(name, self.budget)
        found = self.program.fullmatch(encoded) if self.whole else self.program.match(encoded)
        return found is not None

    def _backtracked(self, name: str, budget: _Budget) -> bool:
        allowance = budget.allowance()
        if allowance <= 0:
            raise self._too_slow(name, allowance)
        started = time.process_time()
        try:
            run = self.program.fullmatch if self.whole else self.program.match
            return run(name, timeout=allowance, concurrent=True) is not None
        except TimeoutError:
            raise self._too_slow(name, allowance) from None
        finally:
            budget.spend(time.process_time() - started)

    def _refuse(self, name: str, why: str) -> Exception:
        return self.error(f"{self.what} {shown(self.text)} cannot be matched against name {shown(name)}: it {why}")

    def _too_slow(self, name: str, allowance: float) -> Exception:
        spent = (
            f"takes more than {BACKTRACKING_SECONDS_PER_NAME} s of CPU time on name {shown(name)}"
            if allowance >= BACKTRACKING_SECONDS_PER_NAME
            else f"has used up its budget of {BACKTRACKING_BUDGET_SECONDS} s of CPU time (at name {shown(name)})"
        )
        return self.error(
            f"{self.what} {shown(self.text)} {spent}: it uses {self.backtracking}, so it runs on a backtracking "
            f"engine, where it backtracks catastrophically.\n  Fix: {_REWRITE_ADVICE}, "
            f"or write it without {self.backtracking} (then it runs on RE2, in linear time)"
        )


def _checked_text(text: Any, what: str, error: type[Exception]) -> str:
    if not isinstance(text, str):
        raise error(f"{what} must be a string, got {type(text).__name__}")
    if len(text) > MAX_PATTERN_LENGTH:
        raise error(
            f"{what} {shown(text)} is {len(text)} characters long; patterns are limited to "
            f"{MAX_PATTERN_LENGTH} characters (use a shorter glob, or several patterns)"
        )
    return text


def _compile_re2(text: str, original: str, what: str, error: type[Exception]) -> Any:
    try:
        return re2.compile(text, _OPTIONS)
    except (re2.error, UnicodeEncodeError) as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        reason = next((why for found, why in _REASONS if found.search(detail)), f"is refused by RE2 ({detail})")
        raise error(
            f"{what} {shown(original)} {reason}, which graphpeft does not match; patterns run in linear time (RE2)"
        ) from None


def _compile_backtracking(text: str, pieces: int, named: str, construct: str, error: type[Exception]) -> Any:
    if pieces > MAX_UNROLLED_PIECES:
        raise error(
            f"{named} uses {construct}, so it runs on a backtracking engine, which spells counted repeats out: "
            f"{pieces} pieces, more than {MAX_UNROLLED_PIECES}; lower the repeat counts"
        )
    try:
        return regex.compile(text, regex.V0)
    except (regex.error, RecursionError, MemoryError, OverflowError) as exc:
        raise error(f"{named} uses {construct} and does not compile on the backtracking engine: {exc}") from None


@dataclass
class _Survey:
    """What Python's parse of a regex holds that decides where and whether graphpeft runs it."""

    backtracking: str | None = None  # the first construct only a backtracking engine runs
    verbose: bool = False  # (?x): whitespace and # comments, which the rewriting below does not read
    lookbehind_width: bool = False  # a look-behind of no fixed width, which Python's compiler refuses

    def walk(self, items: Any) -> int:
        """Record what ``items`` (a parsed subpattern) hold; return how many pieces they spell once
        counted repeats are written out (the regex module does that with the minimum count)."""
        pieces = 0
        for op, av in items:
            self.backtracking = self.backtracking or _NEEDS_BACKTRACKING.get(op)
            if op in (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT):
                pieces += max(1, av[0]) * self.walk(av[2])
            elif op is SUBPATTERN:
                self.verbose |= bool(av[1] & re.VERBOSE)
                pieces += self.walk(av[3])
            elif op in (ASSERT, ASSERT_NOT):
                low, high = av[1].getwidth()
                self.lookbehind_width |= av[0] < 0 and (low != high or low > _LOOKBEHIND_MAX)
                pieces += self.walk(av[1])
            elif op is ATOMIC_GROUP:
                pieces += self.walk(av)
            elif op is BRANCH:
                pieces += sum(self.walk(branch) for branch in av[1])
            elif op is GROUPREF_EXISTS:
                pieces += self.walk(av[1]) + (self.walk(av[2]) if av[2] is not None else 0)
            else:
                pieces += 1
        return pieces


@dataclass
class _Traits:
    """What a Python regex uses whose meaning depends on the name it meets (see :class:`Matcher`)."""

    ascii_only: str | None = None
    dollar: bool = False
    empty_boundary: bool = False
    ignorecase: bool = False
    code_escape: bool = False  # \\x.., \\u...., octal: may spell a non-ASCII character

    def escape(self, letter: str, in_class: bool) -> None:
        if letter in "dDwWsSbB":
            self.ascii_only = self.ascii_only or f"\\{letter}"
            self.empty_boundary |= letter == "B" and not in_class
        self.code_escape |= letter in "xuUN01234567"


def _python_meaning(text: str, end_of_text: str) -> tuple[str, _Traits]:
    """The spelling of the Python regex ``text`` that RE2 and the regex module read as Python does
    (``end_of_text``: the engine's spelling of Python's ``\\Z``), and the constructs whose meaning
    depends on the name."""
    out: list[str] = []
    traits = _Traits()
    i, in_class = 0, False
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            traits.escape(text[i + 1], in_class)
            end = text.index("}", i) + 1 if text.startswith("N{", i + 1) else i + 2  # \N{NAME} is one piece
            out.append(end_of_text if text[i + 1] == "Z" and not in_class else text[i:end])
            i = end
        elif in_class:
            in_class = char != "]"
            out.append("\\[" if char == "[" else char)  # the engines would read [:alpha:] inside a class
            i += 1
        elif char == "[":
            opening = "[^" if text.startswith("[^", i) else "["
            literal_bracket = text.startswith("]", i + len(opening))  # []...] and [^]...] hold a ]
            out.append(opening + ("\\]" if literal_bracket else ""))
            i += len(opening) + literal_bracket
            in_class = True
        elif char == "{":
            repeat = _QUANTIFIER.match(text, i)
            if repeat and repeat.group(0) != "{}":  # Python's repeat; any other { is a literal (regex: fuzzy)
                out.append("{" + (repeat.group(1) or "0") + repeat.group(2) + repeat.group(3) + "}")
                i = repeat.end()
            else:
                out.append("\\{")
                i += 1
        elif text.startswith("(?#", i):
            end = _comment_end(text, i + 3)
            out.append(text[i:end])  # a comment, verbatim: nothing in it is syntax
            i = end
        else:
            flags = _INLINE_FLAGS.match(text, i) if char == "(" else None
            if flags and "i" in flags.group(1):
                traits.ignorecase = True
                traits.ascii_only = traits.ascii_only or "case-insensitive matching"
            traits.dollar |= char == "$"
            out.append(char)
            i += 1
    return "".join(out), traits


def _comment_end(text: str, start: int) -> int:
    """Index just past the ``)`` closing a ``(?#`` comment whose text starts at ``start`` (Python reads
    a backslash and the character after it as one)."""
    i = start
    while text[i] != ")":
        i += 2 if text[i] == "\\" else 1
    return i + 1


@functools.lru_cache(maxsize=4096)
def _regex(text: str, what: str, error: type[Exception], whole: bool, shown_text: str) -> Matcher:
    named = f"{what} {shown(shown_text)}"
    survey = _Survey()
    try:
        # Python's parser, not re.compile: the compiler expands case-insensitive and wide classes code
        # point by code point (seconds per pattern); what only it refuses (look-behind widths) is checked here
        parsed = re_parser.parse(text)
        pieces = survey.walk(parsed)
    except re.error as exc:
        raise error(f"{named} does not compile: {exc}") from None
    except (RecursionError, OverflowError):
        raise error(f"{named} is nested too deeply to compile") from None
    if survey.lookbehind_width:
        raise error(f"{named} does not compile: look-behind requires fixed-width pattern")
    if survey.verbose or parsed.state.flags & re.VERBOSE:
        raise error(
            f"{named} uses verbose mode (?x), which graphpeft does not read; write it without spaces and comments"
        )
    rewritten, traits = _python_meaning(text, "\\Z" if survey.backtracking else "\\z")
    if traits.ignorecase and (traits.code_escape or not _ASCII_PRINTABLE.fullmatch(text)):
        raise error(
            f"{named} matches case-insensitively with non-ASCII characters or \\x/octal "
            "escapes, whose case rules differ between regex engines; write the cases out ([Qq])"
        )
    if survey.backtracking is None:
        program = _compile_re2(rewritten, shown_text, what, error)
        return Matcher(shown_text, what, error, program, whole, traits.ascii_only, traits.dollar, traits.empty_boundary)
    program = _compile_backtracking(rewritten, pieces, named, survey.backtracking, error)
    return Matcher(
        shown_text,
        what,
        error,
        program,
        whole,
        traits.ascii_only,
        traits.dollar,
        traits.empty_boundary,
        survey.backtracking,
        _Budget(),
    )


def compile_regex(text: Any, what: str, error: type[Exception]) -> Matcher:
    """A regex that must match the whole name, as ``re.fullmatch(text, name)``.

    Raises ``error`` naming ``what`` when the regex is not a string, is longer than
    :data:`MAX_PATTERN_LENGTH`, does not compile in Python, or is one RE2 refuses that needs no backtracking
    (``q{1001}``) or one that needs backtracking with more than :data:`MAX_UNROLLED_PIECES` pieces.
    """
    text = _checked_text(text, what, error)
    return _regex(text, what, error, True, text)  # type: ignore[arg-type]  # mypy takes a class for unhashable


def compile_peft_key(key: Any, what: str, error: type[Exception]) -> Matcher:
    """A PEFT ``rank_pattern``/``alpha_pattern`` key: matches as ``re.match(rf"(.*\\.)?({key})$", name)``."""
    key = _checked_text(key, what, error)
    return _regex(rf"(.*\.)?({key})$", what, error, False, key)  # type: ignore[arg-type]  # mypy takes a class for unhashable


@functools.lru_cache(maxsize=4096)
def _glob(text: str, what: str, error: type[Exception]) -> Matcher:
    program = _compile_re2(glob_to_re2(text), text, what, error)
    return Matcher(text, what, error, program, True, None, False, False)


def compile_glob(text: Any, what: str, error: type[Exception]) -> Matcher:
    """A shell glob on the whole name, as ``fnmatch.fnmatchcase(name, text)``."""
    return _glob(_checked_text(text, what, error), what, error)  # type: ignore[arg-type]  # mypy takes a class for unhashable
