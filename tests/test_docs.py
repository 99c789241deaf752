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


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", "*.js", "*.html", "*.yaml", ".ci/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def test_design_document_exists_with_numbered_sections():
    sections = {int(n) for n in SECTION.findall(DESIGN.read_text())}
    assert sections and sections == set(range(1, max(sections) + 1)), sorted(sections)


def test_no_citation_points_outside_the_repository():
    offenders = [
        f"{path.relative_to(ROOT)}:{lineno}"
        for path in _tracked_text_files()
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if SHARED_SHEET in line
    ]
    assert not offenders, f"cite docs/design.md, not {SHARED_SHEET}: {offenders}"


def test_every_design_citation_names_an_existing_section():
    sections = {int(n) for n in SECTION.findall(DESIGN.read_text())}
    bad = []
    for path in _tracked_text_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in re.finditer(r"design(?:\.md)? ((?:§\s*\d+(?:,\s*|\s+and\s+)?)+)", line):
                for number in re.findall(r"§\s*(\d+)", match.group(1)):
                    if int(number) not in sections:
                        bad.append(f"{path.relative_to(ROOT)}:{lineno} cites §{number}")
    assert not bad, bad
