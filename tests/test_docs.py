"""The documents a user reads first: every relative link in README.md and docs/*.md points to a
file of the repository, and the README stays short enough to read in five minutes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FORTHCOMING = {"docs/recipe.md", "docs/scale-out.md", "docs/adaptation.md", "docs/datasets.md"}
"""Topic pages the index links before they are written; a link to any other missing file fails."""
README_MAX_LINES = 220


def local_targets(document: Path) -> list[str]:
    """Targets of the markdown links in ``document`` that name a local file (no URL, no pure anchor)."""
    targets = []
    for target in LINK.findall(document.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_link_extraction_skips_urls_and_anchors_and_drops_fragments(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](https://x.org/a.md) [b](#top) [c](../c.md#part) ![d](img/d.gif) [e](mailto:x@y)\n")
    assert local_targets(page) == ["../c.md", "img/d.gif"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_to_a_file(document):
    assert local_targets(document), f"{document.name} links to nothing"
    missing = []
    for target in local_targets(document):
        path = (document.parent / target).resolve()
        name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)
        if not path.exists() and name not in FORTHCOMING:
            missing.append(target)
    assert not missing, f"{document.relative_to(REPO)}: links to missing files {missing}"


def test_docs_index_links_every_topic_page():
    index = {(REPO / "docs" / t).resolve() for t in local_targets(REPO / "docs" / "README.md")}
    pages = {p.resolve() for p in (REPO / "docs").glob("*.md") if p.name != "README.md"}
    assert pages <= index, f"docs/README.md does not link {sorted(p.name for p in pages - index)}"


def test_readme_is_short():
    lines = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"
