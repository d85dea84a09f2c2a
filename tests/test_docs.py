"""The README and the docs/ pages: the commands they show parse with the real `trail` parser, and their links
reach a file and a heading that exist (no broker, no model)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from streams.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "ARCHITECTURE.md", REPO / "SECURITY.md", *sorted((REPO / "docs").glob("*.md"))]
CODE_BLOCK = re.compile(r"```.*?```", re.S)


def documented_commands() -> list[tuple[str, str]]:
    """(page, command line) for every `.venv/bin/trail ...` line of a bash block, comment and `&` cut off."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip().removesuffix("&").strip()
                if line.startswith(".venv/bin/trail "):
                    commands.append((page.relative_to(REPO).as_posix(), line))
    return commands


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {heading_anchor(h) for h in re.findall(r"^#+ (.*)$", CODE_BLOCK.sub("", page.read_text()), re.M)}


def test_the_readme_shows_the_two_commands():
    front = (REPO / "README.md").read_text()
    assert "make demo" in front and "make test" in front


def test_every_docs_page_is_reached_from_the_readme():
    front = (REPO / "README.md").read_text()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name}" in front, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page, command", documented_commands())
def test_a_documented_command_parses(page, command):
    args = build_parser().parse_args(shlex.split(command)[1:])   # argparse exits 2 on an unknown flag or value
    assert args.func.__qualname__ != "add_unavailable.<locals>.run", f"{page}: {command}: subcommand unavailable"


def test_documented_commands_are_found():
    pages = {page for page, _ in documented_commands()}
    assert len(documented_commands()) >= 30 and "README.md" in pages and len(pages) >= 5


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_reaches_a_file_and_heading(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", CODE_BLOCK.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to a missing file: {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: link to a missing heading: {target}"
