"""The documentation pages (docs/, the MkDocs site) that tests read their commands and files from."""

from __future__ import annotations

import re

from tests.support.paths import REPO

DOCS = REPO / "docs"


def page(path: str) -> str:
    """A page's Markdown, by its path under docs/ (e.g. "how-to/grpcurl.md")."""
    return (DOCS / path).read_text()


def section(path: str, heading: str) -> str:
    """The Markdown under a page's `## heading` (any level), up to the next heading as high or higher.

    Raises:
        AssertionError: the page has no such heading (a test must not pass on an empty section).
    """
    lines, level, fenced = [], 0, False
    for line in page(path).splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        found = None if fenced else re.match(r"(#+) (.*?)(?: \{#[\w-]+\})?$", line.rstrip("\n"))
        if level and found and len(found.group(1)) <= level:
            break
        if level:
            lines.append(line)
        elif found and found.group(2) == heading:
            level = len(found.group(1))
    assert level, f"docs/{path} has no heading {heading!r}"
    return "".join(lines)


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash blocks in some Markdown, in order."""
    return re.findall(r"```bash\n(.*?)```", text, re.S)
