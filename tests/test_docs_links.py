"""The documentation's links lead somewhere: every relative link in README.md,
docker/README.md and docs/ names a file of the repository, and every
``#anchor`` a heading of the Markdown file it names (as GitHub makes anchors).
A newcomer following the guides, or an operator following the runbook from an
alert, must not land on a section that was renamed or moved."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.paths import REPOSITORY, heading_anchors

DOCUMENTS = sorted(
    [
        REPOSITORY / "README.md",
        REPOSITORY / "docker" / "README.md",
        *(REPOSITORY / "docs").glob("*.md"),
    ]
)
#: A Markdown link's target: ``[text](target)``.
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: A target with a scheme (https:, mailto:) leads outside the repository.
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:")


def broken_links(document: Path) -> list[str]:
    """The relative links of ``document`` whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(document.read_text(encoding="utf-8")):
        if SCHEME.match(target):
            continue
        file, _, anchor = target.partition("#")
        path = (document.parent / file).resolve() if file else document
        if not path.exists() or (
            anchor and path.suffix == ".md" and anchor not in heading_anchors(path)
        ):
            broken.append(target)
    return broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_every_relative_link_resolves(document: Path) -> None:
    assert not broken_links(document)


def test_the_runbook_sends_the_operator_to_sections() -> None:
    """The runbook's actions point into the guides by section (and the check
    above finds each of them)."""
    runbook = REPOSITORY / "docs" / "runbook.md"
    sections = re.findall(r"\]\(([\w./-]*)#([\w-]+)\)", runbook.read_text(encoding="utf-8"))
    assert len(sections) >= 20


def test_a_renamed_heading_is_found(tmp_path: Path) -> None:
    """The check itself: a link to a heading that is not there, or to a file
    that is not there, is reported; one to a heading that is, is not."""
    (tmp_path / "guide.md").write_text("# Guide\n\n## 12. When a mapping cannot say it\n")
    (tmp_path / "index.md").write_text(
        "[ok](guide.md#12-when-a-mapping-cannot-say-it) "
        "[old](guide.md#9-when-a-mapping-cannot-say-it) [gone](missing.md) "
        "[web](https://example.org/x#y) [self](#nowhere)"
    )
    assert broken_links(tmp_path / "index.md") == [
        "guide.md#9-when-a-mapping-cannot-say-it",
        "missing.md",
        "#nowhere",
    ]
