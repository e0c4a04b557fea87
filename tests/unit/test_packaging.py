"""One distribution named rewind; nothing generic in site-packages; the entry point works."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from tests.support.paths import REPO


def run_outside_repo(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)


def test_distribution_and_entry_point():
    dist = metadata.distribution("rewind")
    assert dist.metadata["Name"] == "rewind"
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"rewind": "rewind_cli.main:main"}
    requires = dist.requires or []
    assert "torch==2.13.0" in requires


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
