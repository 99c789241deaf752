"""The design lives in the repository: every citation of a design section points at docs/design.md, and at a
section that exists there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
SHARED_SHEET = "DESIGN" + ".md"  # the shared sheet outside the repo, spelt so this file passes
SECTION = re.compile(r"^## (\d+)\. ", re.MULTILINE)


def _tracked_lines():
    """(path, line number, line) of every tracked text file."""
    names = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", "*.js", "*.html", "*.yaml", ".ci/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in names:
        path = ROOT / name
        if path.is_file():
            for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                yield path.relative_to(ROOT), lineno, line


def _sections() -> set[int]:
    return {int(n) for n in SECTION.findall(DESIGN.read_text())}


def test_design_document_exists_with_numbered_sections():
    sections = _sections()
    assert sections and sections == set(range(1, max(sections) + 1)), sorted(sections)


def test_no_citation_points_outside_the_repository():
    offenders = [f"{path}:{lineno}" for path, lineno, line in _tracked_lines() if SHARED_SHEET in line]
    assert not offenders, f"cite docs/design.md, not {SHARED_SHEET}: {offenders}"


def test_every_design_citation_names_an_existing_section():
    sections = _sections()
    bad = [
        f"{path}:{lineno} cites §{number}"
        for path, lineno, line in _tracked_lines()
        for match in re.finditer(r"design(?:\.md)? ((?:§\s*\d+(?:,\s*|\s+and\s+)?)+)", line)
        for number in re.findall(r"§\s*(\d+)", match.group(1))
        if int(number) not in sections
    ]
    assert not bad, bad
