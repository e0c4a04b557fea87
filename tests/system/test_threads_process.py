"""`rewind train` under `taskset -c 0` uses one torch thread, unless --torch-threads says otherwise.

The trainer runs in a subprocess pinned to CPU 0 against a buffer and a
checkpoint service in this process; its status reports the choice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rewind import TrainerClient
from rewind.trainer.v1.trainer_pb2 import TrainerStatus
from rewind_buffer.server import serve as serve_buffers
from rewind_buffer.settings import BufferServiceSettings
from tests.support.configs import checkpoint_config
from tests.support.processes import free_port, rewind
from tests.support.trainer import AGENT_FLAGS

pytestmark = pytest.mark.skipif(shutil.which("taskset") is None or 0 not in os.sched_getaffinity(0),
                                reason="needs taskset and CPU 0 in this process's affinity mask")

BUFFERS = BufferServiceSettings(buffer_size=20_000, batch_size=8, min_history=0, horizon=3, port=0)


@pytest.fixture
def services(tmp_path) -> Iterator[tuple[str, str]]:
    """(buffer address, checkpoint address): both services in this process."""
    from rewind_checkpoint.server import serve as serve_checkpoints

    buffers = serve_buffers(BUFFERS)
    checkpoints = serve_checkpoints(checkpoint_config(f"file://{tmp_path}/store", max_message_mb=64))
    yield buffers.address, checkpoints.address
    buffers.stop(grace_s=0.5)
    checkpoints.stop(grace_s=0.5)


def pinned_trainer_status(tmp_path: Path, services: tuple[str, str], *args: str) -> tuple[TrainerStatus, str]:
    """Start `taskset -c 0 rewind train <args>`; its status and `rewind trainer status` once it serves."""
    buffer, ckpt = services
    port = free_port()
    # No REWIND_* variable from the caller's shell may choose the thread count for the trainer.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWIND_")}
    with open(tmp_path / f"trainer-{port}.log", "wb") as log:
        proc = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "rewind_cli", "train", "--model-size", "tiny",
             "--steps", "100000", "--seed-steps", "200", "--eval-episodes", "0", "--buffer-size", "20000",
             "--checkpoint-interval-episodes", "0", *AGENT_FLAGS, "--buffer-address", buffer,
             "--checkpoint-address", ckpt, "--out-dir", str(tmp_path / "runs"), "--port", str(port), "--http-port", "0",
             "--no-progress", *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        try:
            with TrainerClient(f"127.0.0.1:{port}", timeout=30) as client:
                client.wait_until_serving(timeout=180)
                status = client.status()
                printed = rewind("trainer", "status", "--address", f"127.0.0.1:{port}", timeout=60).stdout
                client.stop()
            assert proc.wait(timeout=180) == 0, (tmp_path / f"trainer-{port}.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    return status, printed


def test_a_trainer_pinned_to_one_cpu_uses_one_thread(tmp_path, services):
    status, printed = pinned_trainer_status(tmp_path, services)
    assert status.torch_threads == 1, status.torch_threads_reason
    assert status.torch_threads_reason.startswith("detected: ") and "affinity mask of 1 CPU" in \
        status.torch_threads_reason
    assert f"torch threads: 1 ({status.torch_threads_reason})" in printed.splitlines()


def test_an_explicit_thread_count_wins_over_the_affinity_mask(tmp_path, services):
    status, _ = pinned_trainer_status(tmp_path, services, "--torch-threads", "2")
    assert (status.torch_threads, status.torch_threads_reason) == (2, "torch_threads 2, set explicitly")
