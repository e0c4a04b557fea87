"""Write a PEP 503 "simple" index for the wheels in a folder: <root>/simple/<project>/index.html.

    python3 deploy/test/simple_index.py WHEELS_DIR INDEX_DIR

Served on 127.0.0.1 (python3 -m http.server), it lets the image build install torch with
`--index-url` from pip's local find-links, where the PyTorch index cannot be reached.
"""

from __future__ import annotations

import hashlib
import html
import re
import sys
from pathlib import Path


def project(wheel: str) -> str:
    """The normalised project name of a distribution file (PEP 503)."""
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def page(links: list[str]) -> str:
    return "<!DOCTYPE html>\n<html><body>\n" + "".join(f"{link}<br>\n" for link in links) + "</body></html>\n"


def write_index(wheels: Path, root: Path) -> list[str]:
    files: dict[str, list[Path]] = {}
    for path in sorted(wheels.iterdir()):
        if path.name.endswith((".whl", ".tar.gz")):
            files.setdefault(project(path.name), []).append(path.resolve())
    simple = root / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    (simple / "index.html").write_text(page([f'<a href="{name}/">{name}</a>' for name in sorted(files)]))
    for name, paths in files.items():
        folder = simple / name
        folder.mkdir(exist_ok=True)
        links = []
        for path in paths:
            link = folder / path.name
            if not link.exists():
                link.symlink_to(path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            links.append(f'<a href="{html.escape(path.name)}#sha256={digest}">{html.escape(path.name)}</a>')
        (folder / "index.html").write_text(page(links))
    return sorted(files)


if __name__ == "__main__":
    print("index of:", ", ".join(write_index(Path(sys.argv[1]), Path(sys.argv[2]))))
