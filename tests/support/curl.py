"""`buf curl`: calling a running service through reflection only, as a grpcurl user would."""

from __future__ import annotations

import json
import subprocess

from tests.support.paths import BUF

BUFFER_SERVICE = "rewind.buffer.v1.BufferService"


def curl(address: str, *args: str, data: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)


def call(address: str, method: str, data: dict, service: str = BUFFER_SERVICE) -> dict:
    result = curl(address, f"http://{address}/{service}/{method}", data=data)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)
