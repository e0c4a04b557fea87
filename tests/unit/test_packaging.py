"""One distribution named rewind; nothing generic in site-packages; the entry point works."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from rewind_cli.main import EXTRA_OF_MODULE
from tests.support.packages import constraint_pins, project_requirements
from tests.support.paths import REPO

EXTRAS = ("services", "tensorboard", "dmc", "all", "docs", "dev")


def run_outside_repo(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)


def test_distribution_and_entry_point():
    dist = metadata.distribution("rewind")
    assert dist.metadata["Name"] == "rewind"
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"rewind": "rewind_cli.main:main"}


def test_requirements_are_ranges_that_admit_the_constraints():
    """The package asks for ranges (torch's from the lowest version tested to below 3); the exact tested
    versions live in the one constraints file, and each lies in its range."""
    pins = constraint_pins()
    installed = {(r.name, r.specifier) for r in map(Requirement, metadata.distribution("rewind").requires or [])}
    assert installed == {(r.name, r.specifier) for r in project_requirements(*EXTRAS)}, "stale: run make venv"
    for req in project_requirements(*EXTRAS):
        assert all(spec.operator != "==" for spec in req.specifier), f"{req}: an exact pin belongs in the constraints"
        if canonicalize_name(req.name) == "rewind":
            continue  # an extra made of other extras
        name = canonicalize_name(req.name)
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    [torch] = [r for r in project_requirements() if r.name == "torch"]
    floor = Version(next(s.version for s in torch.specifier if s.operator == ">="))
    assert {s.operator: s.version for s in torch.specifier}["<"] == "3"
    tested = Version(pins["torch"])
    assert (floor.major, floor.minor) == (tested.major, tested.minor), "torch's floor is the version the suite runs"
    torchrl_floor = next(Requirement(r) for r in metadata.requires("torchrl") if r.startswith("torch") and
                         Requirement(r).name == "torch" and Requirement(r).marker is None)
    assert torchrl_floor.specifier.contains(str(floor)), "torch's floor is below torchrl's own"


def test_extras_split_the_sdk_from_the_services_and_the_tools():
    base = {canonicalize_name(r.name) for r in project_requirements()}
    services = {canonicalize_name(r.name) for r in project_requirements("services")} - base
    assert {"torch", "grpcio", "protobuf"} <= base
    assert {"torchrl", "tensordict", "boto3", "fastapi", "uvicorn", "gymnasium"} <= services
    assert not base & {"pytest", "moto", "selenium", "tensorboard", "mkdocs", "dm-control", "torchrl", "boto3"}
    extras = metadata.metadata("rewind").get_all("Provides-Extra")
    assert set(extras) == set(EXTRAS)
    # The command line names each extra a missing module belongs to.
    for module, extra in EXTRA_OF_MODULE.items():
        assert extra in extras, module


def test_service_code_is_under_unique_names(tmp_path):
    result = run_outside_repo("import rewind, rewind_buffer.episode_buffer as b, rewind_runtime.host, rewind_cli.main; "
                              "print(rewind.BufferClient, b.EpisodeBuffer)", tmp_path)
    assert result.returncode == 0, result.stderr
    for generic in ("services", "buffer", "tests", "bench", "runtime", "cli"):
        result = run_outside_repo(f"import {generic}", tmp_path)
        assert result.returncode != 0, f"a generic top-level package {generic!r} is importable"


def test_layout_of_the_design():
    for path in ("pyproject.toml", "README.md", "proto", "services/buffer", "services/trainer",
                 "services/checkpoint", "deploy", "tests", "bench", "rewind", "runtime", "cli", ".ci/run", "Makefile"):
        assert (REPO / path).exists(), path


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
