"""The docs cannot rot: the Python API example runs, and every relative link resolves."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
# [text](target) and ![alt](target), with an optional "title"; text may hold one level of [].
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python blocks of a Markdown page."""
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)


def links(page: Path) -> list[str]:
    """Every link target of a page, outside code."""
    found = []
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        found += LINK.findall(INLINE_CODE.sub("", line))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "N"))
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for a page's headings (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_the_pages_exist() -> None:
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    for page in ("docs/api.md", "docs/results.md", "docs/benchmarks.md", "docs/configuration.md"):
        assert page in names, f"{page} is missing"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.relative_to(REPO)})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


def test_the_link_checker_sees_links_and_anchors() -> None:
    """Guard the checker itself: it must find links and compute GitHub's anchors."""
    assert "docs/api.md" in links(REPO / "README.md")
    assert slug("Multi30k EN-DE, `model=small` (Table 1)") == "multi30k-en-de-modelsmall-table-1"
    assert slug("Adding a position encoding") == "adding-a-position-encoding"


def test_the_api_example_runs(capsys) -> None:
    """docs/api.md's example is run as written: compose, build, search, print."""
    blocks = python_blocks((REPO / "docs" / "api.md").read_text(encoding="utf-8"))
    assert len(blocks) == 1, f"docs/api.md should hold one ```python example, found {len(blocks)}"
    code = compile(blocks[0], str(REPO / "docs" / "api.md"), "exec")
    exec(code, {"__name__": "__docs_example__"})  # noqa: S102 - the page's own example
    assert capsys.readouterr().out.strip(), "the example printed nothing"
