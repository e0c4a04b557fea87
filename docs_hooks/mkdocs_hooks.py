"""MkDocs hooks: generated reference pages, and the benchmark plots from where the benchmarks write them.

- A `<!-- rewind:NAME -->` marker, alone on its line, is replaced by the Markdown that
  `docs_hooks.reference.GENERATED[NAME]` makes (cli, settings, client-variables). An unknown marker
  fails the build, so a page never ships with a hole in it.
- `bench/results/*.png` are served as `images/bench/*.png`: the plots stay where `bench/` writes them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

# MkDocs loads this file by its path; the repository root makes `docs_hooks` importable as the tests import it.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from docs_hooks import reference  # noqa: E402

BENCH_PLOTS = Path(_ROOT, "bench", "results")
MARKER = re.compile(r"^<!-- rewind:([a-z-]+) -->$", re.M)
_made: dict[str, str] = {}  # marker name -> its Markdown, made once per build


def _generated(name: str, page: str) -> str:
    if name not in reference.GENERATED:
        raise PluginError(f"{page}: unknown marker <!-- rewind:{name} -->; known: {', '.join(reference.GENERATED)}")
    if name not in _made:
        _made[name] = reference.GENERATED[name](reference.build_parser())
    return _made[name]


def on_pre_build(config) -> None:
    _made.clear()  # `mkdocs serve` builds again in the same process


def on_files(files, config):
    for plot in sorted(BENCH_PLOTS.glob("*.png")):
        files.append(File.generated(config, f"images/bench/{plot.name}", abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    def fill(marker: re.Match) -> str:
        # A class of their own: stylesheets/extra.css keeps the generated tables' flags on one line.
        return f'<div class="generated" markdown>\n\n{_generated(marker.group(1), page.file.src_uri)}\n\n</div>'

    return MARKER.sub(fill, markdown)
