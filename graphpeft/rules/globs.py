"""Shell globs as RE2 regexes that mean exactly what :func:`fnmatch.fnmatchcase` means.

Translated here, not through :func:`fnmatch.translate` and Python's ``re``: RE2 reads some of that
output differently, and graphpeft matches every glob on RE2 (:mod:`.bounded_regex`).
"""

from __future__ import annotations


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
