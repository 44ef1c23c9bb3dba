"""Bounded pattern matching: every regex and glob graphpeft takes from a file or a user runs in linear time.

Python's ``re`` backtracks: ``(.+)+!`` against a 30-character module name runs for hours. graphpeft
matches with RE2 (google-re2), whose time is linear in the name, and keeps Python's meaning:

- a regex must be valid Python syntax as well (so it means what the user tested), and RE2 must accept it:
  backreferences, lookarounds, atomic groups and possessive quantifiers are refused with the reason;
- the spellings whose meaning differs between the engines are rewritten to RE2's spelling of Python's
  meaning (``{,n}`` -> ``{0,n}``, ``\\Z`` -> ``\\z``, ``[`` inside a class stays literal);
- ``\\d \\w \\s \\b`` and case-insensitive matching mean the same in both engines on printable ASCII
  names only: a name outside that range meets such a pattern with an error instead of a different answer;
- globs follow :func:`fnmatch.fnmatchcase` exactly (translated here, not through Python's ``re``).

The compile functions take the graphpeft error class to raise (``RuleError`` for rules, ``LoadError`` on
the load path), so a bad pattern reads as a problem of the input it came from.
"""

from __future__ import annotations

import functools
import re
import re._parser as re_parser
from dataclasses import dataclass
from typing import Any

import re2

from .options import shown

MAX_PATTERN_LENGTH = 4096

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr

# RE2's refusal (its error text) -> why, in the user's words
_REASONS = (
    (re.compile(r"invalid escape sequence: \\[1-9]"), "uses a backreference"),
    (re.compile(r"invalid perl operator: \(\?P(?:=|$)"), "uses a named backreference"),
    (re.compile(r"invalid perl operator: \(\?<?[=!]"), "uses a lookaround assertion"),
    (re.compile(r"invalid perl operator: \(\?>"), "uses an atomic group"),
    (re.compile(r"invalid perl operator: \(\?\("), "uses a conditional group"),
    (re.compile(r"bad repetition operator: (?:[*+?]|\{[\d,]*\})\+"), "uses a possessive quantifier"),
    (re.compile(r"invalid escape sequence: \\b"), "uses [\\b] (a backspace in Python; write \\x08)"),
    (re.compile(r"invalid repetition size"), "repeats a piece more than 1000 times"),
    (re.compile(r"pattern too large"), "compiles to a program too large to run"),
)
_EMPTY_MINIMUM = re.compile(r"\{,(\d*)\}")  # Python reads {,n} as {0,n}; RE2 as the literal text
_INLINE_FLAGS = re.compile(r"\(\?([a-zA-Z]*(?:-[a-zA-Z]*)?)[:)]")
_ASCII_PRINTABLE = re.compile(r"[ -~]*")


@dataclass(frozen=True)
class Matcher:
    """A compiled pattern. ``matches(name)`` answers as Python would (``re.fullmatch``, PEFT's key
    test or ``fnmatch.fnmatchcase``), in time linear in ``name``."""

    text: str  # what the user wrote
    what: str  # "pattern regex", "target_modules", ...: names the pattern in messages
    error: type[Exception]
    program: Any  # the compiled RE2 program
    whole: bool  # match the whole name (else a prefix, as re.match)
    ascii_only: str | None  # the construct that needs a printable-ASCII name, if any
    dollar: bool  # uses $, which differs between the engines before a trailing newline
    empty_boundary: bool  # uses \B, which Python never matches in an empty name

    def matches(self, name: str) -> bool:
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError:
            raise self._refuse(name, "is not valid Unicode text") from None
        if self.ascii_only and not (name.isascii() and name.isprintable()):
            raise self._refuse(name, f"holds characters outside printable ASCII, where {self.ascii_only} means "
                                     "something else in Python; spell those characters out")
        if self.dollar and "\n" in name:
            raise self._refuse(name, "holds a newline, where $ means something else in Python; use \\Z")
        if self.empty_boundary and not name:
            raise self._refuse(name, "is empty, where \\B means something else in Python")
        found = self.program.fullmatch(encoded) if self.whole else self.program.match(encoded)
        return found is not None

    def _refuse(self, name: str, why: str) -> Exception:
        return self.error(f"{self.what} {shown(self.text)} cannot be matched against name {shown(name)}: it {why}")


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


def _python_meaning(text: str) -> tuple[str, _Traits]:
    """RE2's spelling of the Python regex ``text``, and the constructs whose meaning depends on the name."""
    out: list[str] = []
    traits = _Traits()
    i, in_class = 0, False
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            traits.escape(text[i + 1], in_class)
            out.append("\\z" if text[i + 1] == "Z" and not in_class else text[i : i + 2])
            i += 2
        elif in_class:
            in_class = char != "]"
            out.append("\\[" if char == "[" else char)  # RE2 would read [:alpha:] inside a class
            i += 1
        elif char == "[":
            opening = "[^" if text.startswith("[^", i) else "["
            literal_bracket = text.startswith("]", i + len(opening))  # []...] and [^]...] hold a ]
            out.append(opening + ("\\]" if literal_bracket else ""))
            i += len(opening) + literal_bracket
            in_class = True
        elif char == "{" and (empty_minimum := _EMPTY_MINIMUM.match(text, i)):
            out.append("{0," + empty_minimum.group(1) + "}")
            i = empty_minimum.end()
        else:
            flags = _INLINE_FLAGS.match(text, i) if char == "(" else None
            if flags and "i" in flags.group(1):
                traits.ignorecase = True
                traits.ascii_only = traits.ascii_only or "case-insensitive matching"
            traits.dollar |= char == "$"
            out.append(char)
            i += 1
    return "".join(out), traits


@functools.lru_cache(maxsize=4096)
def _regex(text: str, what: str, error: type[Exception], whole: bool, shown_text: str) -> Matcher:
    try:
        # Python's parser, not re.compile: the compiler expands case-insensitive and wide classes code
        # point by code point (seconds per pattern); what only it refuses (lookbehind widths), RE2 refuses too
        re_parser.parse(text)
    except re.error as exc:
        raise error(f"{what} {shown(shown_text)} does not compile: {exc}") from None
    except (RecursionError, OverflowError):
        raise error(f"{what} {shown(shown_text)} is nested too deeply to compile") from None
    rewritten, traits = _python_meaning(text)
    program = _compile_re2(rewritten, shown_text, what, error)
    if traits.ignorecase and (traits.code_escape or not _ASCII_PRINTABLE.fullmatch(text)):
        raise error(
            f"{what} {shown(shown_text)} matches case-insensitively with non-ASCII characters or \\x/octal "
            "escapes, whose case rules differ between regex engines; write the cases out ([Qq])"
        )
    return Matcher(shown_text, what, error, program, whole, traits.ascii_only, traits.dollar, traits.empty_boundary)


def compile_regex(text: Any, what: str, error: type[Exception]) -> Matcher:
    """A regex that must match the whole name, as ``re.fullmatch(text, name)``.

    Raises ``error`` naming ``what`` when the regex is not a string, is longer than
    :data:`MAX_PATTERN_LENGTH`, does not compile in Python, or uses what RE2 cannot run in linear time.
    """
    text = _checked_text(text, what, error)
    return _regex(text, what, error, True, text)


def compile_peft_key(key: Any, what: str, error: type[Exception]) -> Matcher:
    """A PEFT ``rank_pattern``/``alpha_pattern`` key: matches as ``re.match(rf"(.*\\.)?({key})$", name)``."""
    key = _checked_text(key, what, error)
    return _regex(rf"(.*\.)?({key})$", what, error, False, key)


@functools.lru_cache(maxsize=4096)
def _glob(text: str, what: str, error: type[Exception]) -> Matcher:
    program = _compile_re2(glob_to_re2(text), text, what, error)
    return Matcher(text, what, error, program, True, None, False, False)


def compile_glob(text: Any, what: str, error: type[Exception]) -> Matcher:
    """A shell glob on the whole name, as ``fnmatch.fnmatchcase(name, text)``."""
    return _glob(_checked_text(text, what, error), what, error)


def glob_to_re2(glob: str) -> str:
    """The RE2 regex of a glob, read as :func:`fnmatch.translate` reads it (``*``, ``?``, ``[...]``, ``[!...]``)."""
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and (end := _class_end(glob, i)) is not None:
            out.append(_glob_class(glob[i:end]))
            i = end + 1
        else:
            out.append(_literal(char))
    return "(?s:" + "".join(out) + ")"


def _class_end(glob: str, start: int) -> int | None:
    """Index of the ``]`` closing the bracket expression that starts at ``start``, or None (a literal ``[``)."""
    j = start
    if j < len(glob) and glob[j] == "!":
        j += 1
    if j < len(glob) and glob[j] == "]":
        j += 1
    end = glob.find("]", j)
    return end if end >= 0 else None


def _glob_class(body: str) -> str:
    """RE2 class for the inside of a bracket expression, with fnmatch's ranges: a ``-`` joins the chars
    around it unless it comes first or right after a range; ranges running backwards are dropped."""
    chunks = [body]
    if "-" in body:
        chunks, start, k = [], 0, 2 if body[0] == "!" else 1
        while (k := body.find("-", k)) >= 0:
            chunks.append(body[start:k])
            start, k = k + 1, k + 3
        if body[start:]:
            chunks.append(body[start:])
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):
            if chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
    flat = "-".join(chunks)
    if not flat:
        return r"[^\x00-\x{10FFFF}]"  # nothing left: never matches
    if flat == "!":
        return "(?s:.)"
    negate = flat.startswith("!")
    if negate:
        chunks[0] = chunks[0][1:]
    members: list[tuple[str, str]] = []
    for index, chunk in enumerate(chunks):
        for position, char in enumerate(chunk):
            if index and not position:
                members[-1] = (members[-1][0], char)  # the range that crossed the '-'
            else:
                members.append((char, char))
    ranges = "".join(_literal(lo) if lo == hi else f"{_literal(lo)}-{_literal(hi)}" for lo, hi in members)
    return f"[{'^' if negate else ''}{ranges}]"


def _literal(char: str) -> str:
    return char if char.isascii() and (char.isalnum() or char == "_") else f"\\x{{{ord(char):x}}}"
