"""The CPU image, built from deploy/docker/Dockerfile and run as the Kubernetes pods run it."""

from __future__ import annotations

import time

import pytest

from rewind import CheckpointClient, TrainerClient
from tests.support.containers import IMAGE, docker, inspect, logs, run_hardened, wait_healthy
from tests.support.processes import free_port

QUICK_TRAINER = ["-e", "REWIND_MODEL_SIZE=tiny", "-e", "REWIND_STEPS=100000", "-e", "REWIND_PROGRESS=false",
                 "-e", "REWIND_TORCH_THREADS=1"]


@pytest.fixture
def containers():
    started: list[str] = []

    def run(name: str, *args: str) -> str:
        started.append(run_hardened(name, *args))
        return name

    yield run
    for name in started:
        docker("rm", "-f", name, check=False)


def test_each_service_runs_hardened_turns_healthy_and_the_trainer_commits_on_sigterm(image, containers):
    ports = {name: free_port() for name in ("buffer", "ckpt", "trainer")}
    buffer = containers("rewind-test-buffer", "-e", f"REWIND_PORT={ports['buffer']}", IMAGE, "buffer", "serve")
    ckpt = containers("rewind-test-ckpt", "-e", f"REWIND_PORT={ports['ckpt']}", "-e", "REWIND_STORE=file:///tmp/store",
                      IMAGE, "ckpt", "serve")
    trainer = containers(
        "rewind-test-trainer", "--tmpfs", "/var/lib/rewind/runs:uid=10001,gid=10001,mode=0750",
        "-e", f"REWIND_PORT={ports['trainer']}", "-e", f"REWIND_BUFFER_ADDRESS=127.0.0.1:{ports['buffer']}",
        "-e", f"REWIND_CHECKPOINT_ADDRESS=127.0.0.1:{ports['ckpt']}", *QUICK_TRAINER, IMAGE, "train")
    for name in (buffer, ckpt, trainer):
        wait_healthy(name)
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
        config = inspect(name)["HostConfig"]
        assert (config["ReadonlyRootfs"], config["CapDrop"]) == (True, ["ALL"])
    with TrainerClient(f"127.0.0.1:{ports['trainer']}", timeout=60) as client:
        step, path = client.checkpoint(wait=True, timeout=120)
    assert path == f"file:///tmp/store/tdmpc2/pendulum-v1-seed1/step-{step:010d}"
    started = time.monotonic()
    docker("stop", "-t", "60", trainer)
    stop_s = time.monotonic() - started
    state = inspect(trainer)["State"]
    output = logs(trainer)
    assert state["ExitCode"] == 0, output[-3000:]
    assert "stopping at step" in output and "rewind: error" not in output, output[-3000:]
    with CheckpointClient(f"127.0.0.1:{ports['ckpt']}") as ckpt_client:
        latest = ckpt_client.lookup("tdmpc2", "pendulum-v1-seed1", "latest").checkpoint
    # committed on the way out (a step already saved is not saved twice), within --stop-grace-s
    assert latest.step >= step and f"stopping at step {latest.step} (SIGTERM)" in output and stop_s < 20


def test_rewind_health_inside_the_image_answers_in_well_under_a_second(image, containers):
    port = free_port()
    buffer = containers("rewind-test-health", "-e", f"REWIND_PORT={port}", IMAGE, "buffer", "serve")
    wait_healthy(buffer)
    timings = []
    for _ in range(5):
        started = time.monotonic()
        docker("exec", buffer, "rewind", "health", "--timeout", "4")
        timings.append(time.monotonic() - started)
    assert sorted(timings)[2] < 1.0, timings  # the median, docker exec's own start-up included
