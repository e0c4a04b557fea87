"""The package's requirements and the one constraints file that pins what the suite runs with."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.paths import REPO

CONSTRAINTS = REPO / "deploy" / "docker" / "constraints.txt"


def constraint_pins() -> dict[str, str]:
    """name -> version of every line of the constraints file, each of which must be an exact pin."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def project_requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's requirements: the base ones and those of these extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]
