"""README.md is a landing page and the docs hold together: links resolve, flags exist."""

import re

from helpers import ROOT
from digitkit import cli

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose_lines(text):
    """The lines of a Markdown text outside code blocks and tables."""
    inside = False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and not line.startswith("|"):
            yield line


def anchors(path):
    """The anchors GitHub gives the headings of a Markdown file."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in prose_lines(path.read_text()) if line.startswith("#")}


def test_the_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:30])
    assert "pip install -r requirements.txt" in head and "python digit_classifier.py" in head
    assert "pip install -r requirements-dev.txt" in head and "pytest" in head
    long = [line for line in prose_lines(text) if len(line) > 100]
    assert not long, long


def test_every_relative_link_and_image_resolves():
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check offline
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.name}: {target}"
            if anchor:
                assert anchor in anchors(resolved), f"{page.name}: {target}"
            checked += 1
    assert checked > 30  # the pages do link to each other


def test_every_flag_the_readme_shows_exists():
    helped = set(re.findall(r"--[a-z][a-z-]*", cli.build_parser().format_help()))
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", (ROOT / "README.md").read_text()))
    assert shown and shown <= helped, shown - helped
