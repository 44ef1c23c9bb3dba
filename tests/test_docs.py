"""The docs a newcomer reads are tested: every ```python block of README.md and docs/*.md runs, in order within its
page and in a fresh namespace per page, on tiny models built from configs; links between pages resolve; the repository
paths the pages name exist.

A block that cannot run here (it needs the demo's assets, several processes, a GPU) is marked with
``<!-- not-run: reason -->`` on the line before its fence; it is still compiled, so its syntax is checked.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
PAGE_IDS = [str(page.relative_to(ROOT)) for page in PAGES]

FENCE = re.compile(r"^(\s*)(`{3,})\s*(\S*)")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:graphpeft|tests|examples|benchmarks|passes|docs)/[\w./-]*\w)`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
README_MOST_LINES = 150


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, its first code line (1-based) and its text."""

    language: str
    line: int
    source: str
    not_run_reason: str | None


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order, with the ``not-run`` reason written on the line before it."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, language = opening.groups()
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
        marker = NOT_RUN.match(lines[index - 1].strip()) if index > 0 else None
        reason = marker.group(1) if marker else None
        blocks.append(Block(language, index + 2, "\n".join(body) + "\n", reason))
        index = end + 1
    return blocks


def python_blocks(page: Path) -> list[Block]:
    return [block for block in fenced_blocks(page) if block.language == "python"]


def compiled(page: Path, block: Block) -> CodeType:
    """The block compiled so that a traceback names the page and the line of the page that failed."""
    padded = "\n" * (block.line - 1) + block.source
    return compile(padded, str(page), "exec")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKC", text).lower().replace("`", "")
    text = "".join(char for char in text if char.isalnum() or char in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of ``page``'s headings (outside code blocks), with GitHub's -1, -2 suffixes for repeats."""
    found: set[str] = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        heading = HEADING.match(line)
        if heading and not in_code:
            base = slug(heading.group(2))
            name, count = base, 0
            while name in found:
                count += 1
                name = f"{base}-{count}"
            found.add(name)
    return found


def prose(page: Path) -> str:
    """``page`` without its fenced blocks (links and paths inside code are code, not references)."""
    kept, in_code = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            kept.append(line)
    return "\n".join(kept)


def local_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page)) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_page_has_a_snippet_that_runs(page):
    assert any(block.not_run_reason is None for block in python_blocks(page)), f"{page.name} has no runnable snippet"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_page_snippets_run_in_order(page, tmp_path, monkeypatch):
    """Each runnable block executes in the page's own namespace, in a scratch working directory; a not-run block is
    compiled only."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in python_blocks(page):
        code = compiled(page, block)
        if block.not_run_reason is None:
            exec(code, namespace)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_not_run_markers_give_a_reason_and_sit_on_a_python_block(page):
    lines = [*page.read_text(encoding="utf-8").splitlines(), ""]
    misplaced = []
    for index, line in enumerate(lines[:-1]):
        if line.strip().startswith("<!-- not-run"):
            marker, fence = NOT_RUN.match(line.strip()), FENCE.match(lines[index + 1])
            if not (marker and marker.group(1) and fence and fence.group(3) == "python"):
                misplaced.append(f"line {index + 1}: {line.strip()}")
    assert misplaced == []


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_links_between_pages_resolve(page):
    broken = []
    for target in local_links(page):
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading with that anchor)")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_repository_paths_named_in_the_text_exist(page):
    named = set(REPO_PATH.findall(page.read_text(encoding="utf-8")))
    assert sorted(path for path in named if not (ROOT / path).exists()) == []


def test_readme_links_every_docs_page():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in local_links(README)}
    assert sorted(page.name for page in PAGES[1:] if page.resolve() not in linked) == []


def test_readme_stays_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= README_MOST_LINES


def test_slug_follows_githubs_anchor_rules():
    assert slug("Training with transformers' Trainer") == "training-with-transformers-trainer"
    assert slug("The main job: `make demo`") == "the-main-job-make-demo"
    assert slug("Several adapters, mixed-adapter batches") == "several-adapters-mixed-adapter-batches"


def test_fenced_blocks_finds_language_first_line_and_marker(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- not-run: needs a GPU -->\n```python\nx = 1\n```\n\n```toml\na = 1\n```\n")
    first, second = fenced_blocks(page)
    assert (first.language, first.line, first.source, first.not_run_reason) == ("python", 4, "x = 1\n", "needs a GPU")
    assert (second.language, second.not_run_reason) == ("toml", None)
