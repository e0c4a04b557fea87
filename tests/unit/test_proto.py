"""The API contract: buf lint (STANDARD) is clean and the committed stubs are fresh."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.paths import BUF, REPO

# Lines that only record which generator versions wrote the file.
VERSION_LINE = re.compile(r"Protobuf Python Version|_runtime_version\.|^\s*\d+,\s*$|GRPC_GENERATED_VERSION = ")


def test_buf_is_installed():
    assert BUF.exists(), "buf is missing: run `npm ci` (make test does it)"


def test_buf_lint_standard_is_clean():
    result = subprocess.run([str(BUF), "lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = (REPO / "buf.yaml").read_text()
    assert "STANDARD" in config


def _normalised(text: str) -> list[str]:
    return [line for line in text.splitlines() if not VERSION_LINE.search(line)]


def _stubs(root: Path) -> list[Path]:
    """The generated .py and .pyi files under root/rewind (not the bytecode Python caches beside them)."""
    return sorted(p.relative_to(root) for p in (root / "rewind").rglob("*_pb2*.py*") if p.suffix in (".py", ".pyi"))


def test_generated_stubs_are_not_stale(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "protogen.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    generated = _stubs(tmp_path)
    assert generated, "protogen produced nothing"
    committed = _stubs(REPO)
    assert generated == committed, "stub files differ from proto/: run `make proto` and commit"
    for rel in generated:
        fresh = _normalised((tmp_path / rel).read_text())
        assert fresh == _normalised((REPO / rel).read_text()), f"{rel} is stale: run `make proto` and commit"


def test_tensors_travel_as_bytes_not_repeated_floats():
    text = (REPO / "proto" / "rewind" / "tensor" / "v1" / "tensor.proto").read_text()
    assert "bytes data = 3;" in text
    # The one exception: a trainer's status carries its last few episode returns (at most 10 scalars).
    allowed = {"repeated double recent_returns = 9;"}
    for proto in (REPO / "proto").rglob("*.proto"):
        lines = [line.strip() for line in proto.read_text().splitlines()]
        numeric = [line for line in lines if line.startswith(("repeated float", "repeated double"))]
        assert set(numeric) <= allowed, (proto, numeric)
