"""The CPU image, built from deploy/docker/Dockerfile and run as the Kubernetes pods run it:
hardened, with the token and TLS files mounted read-only and the same variables, the probes'
plaintext health port, and nothing answered without a token."""

from __future__ import annotations

import statistics
import time

import pytest

from rewind import BufferClient, CheckpointClient, TrainerClient
from rewind.errors import Unauthenticated, Unavailable
from rewind.security import ClientSecurity
from tests.support.containers import (
    IMAGE,
    SECRETS_DIR,
    client_security,
    docker,
    inspect,
    logs,
    make_secrets,
    run_hardened,
    wait_healthy,
)
from tests.support.processes import free_port

QUICK_TRAINER = ["-e", "REWIND_MODEL_SIZE=tiny", "-e", "REWIND_STEPS=100000", "-e", "REWIND_PROGRESS=false",
                 "-e", "REWIND_TORCH_THREADS=1"]


@pytest.fixture
def secrets(tmp_path):
    """A set from `rewind secrets init`'s code, readable by uid 10001, as the pods' Secrets are."""
    return make_secrets(tmp_path / "secrets")


@pytest.fixture
def containers(secrets):
    started: list[str] = []

    def run(name: str, *args: str) -> str:
        started.append(run_hardened(name, *args, secrets=secrets))
        return name

    yield run
    for name in started:
        docker("rm", "-f", name, check=False)


def ports(*names: str) -> dict[str, tuple[int, int]]:
    """A free (service, health) port pair for each name: the pods' REWIND_PORT and REWIND_HEALTH_PORT."""
    return {name: (free_port(), free_port()) for name in names}


def port_args(pair: tuple[int, int]) -> list[str]:
    return ["-e", f"REWIND_PORT={pair[0]}", "-e", f"REWIND_HEALTH_PORT={pair[1]}"]


def assert_refuses_strangers(call, ca: str) -> None:
    """TLS without a token: UNAUTHENTICATED; plaintext: no answer (the port speaks only TLS)."""
    with pytest.raises(Unauthenticated):
        call(ClientSecurity(tls_ca_file=ca))
    with pytest.raises(Unavailable):
        call(ClientSecurity())


def test_each_service_runs_hardened_turns_healthy_refuses_strangers_and_the_trainer_commits_on_sigterm(
        image, containers, secrets):
    port = ports("buffer", "ckpt", "trainer")
    buffer = containers("rewind-test-buffer", *port_args(port["buffer"]), IMAGE, "buffer", "serve")
    buffer_address = f"127.0.0.1:{port['buffer'][0]}"
    ckpt = containers("rewind-test-ckpt", *port_args(port["ckpt"]), "-e", "REWIND_STORE=file:///tmp/store",
                      "-e", f"REWIND_BUFFER_ADDRESSES={buffer_address}", IMAGE, "ckpt", "serve")
    trainer = containers(
        "rewind-test-trainer", "--tmpfs", "/var/lib/rewind/runs:uid=10001,gid=10001,mode=0750",
        *port_args(port["trainer"]), "-e", f"REWIND_BUFFER_ADDRESS={buffer_address}",
        "-e", f"REWIND_CHECKPOINT_ADDRESS=127.0.0.1:{port['ckpt'][0]}", *QUICK_TRAINER, IMAGE, "train")
    for name in (buffer, ckpt, trainer):
        wait_healthy(name)
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
        config = inspect(name)["HostConfig"]
        assert (config["ReadonlyRootfs"], config["CapDrop"]) == (True, ["ALL"])
        assert f"{SECRETS_DIR}:ro" in " ".join(config["Binds"])
        assert "authentication is off" not in logs(name)
    security = client_security(secrets)

    # Every service: TLS only, and a token for everything but health.
    def buffer_stats(sec):
        with BufferClient(buffer_address, "buffer", timeout=10, security=sec) as client:
            return client.stats()

    def checkpoint_runs(sec):
        with CheckpointClient(f"127.0.0.1:{port['ckpt'][0]}", timeout=10, security=sec) as client:
            return client.list_runs()

    def trainer_status(sec):
        with TrainerClient(f"127.0.0.1:{port['trainer'][0]}", timeout=10, security=sec) as client:
            return client.status()

    for call in (buffer_stats, checkpoint_runs, trainer_status):
        assert_refuses_strangers(call, security.tls_ca_file)
        call(security)  # with the token, each answers

    with TrainerClient(f"127.0.0.1:{port['trainer'][0]}", timeout=60, security=security) as client:
        step, path = client.checkpoint(wait=True, timeout=120)
    assert path == f"file:///tmp/store/tdmpc2/pendulum-v1-seed1/step-{step:010d}"
    started = time.monotonic()
    docker("stop", "-t", "60", trainer)
    stop_s = time.monotonic() - started
    state = inspect(trainer)["State"]
    output = logs(trainer)
    assert state["ExitCode"] == 0, output[-3000:]
    assert "stopping at step" in output and "rewind: error" not in output, output[-3000:]
    with CheckpointClient(f"127.0.0.1:{port['ckpt'][0]}", security=security) as ckpt_client:
        latest = ckpt_client.lookup("tdmpc2", "pendulum-v1-seed1", "latest").checkpoint
    # committed on the way out (a step already saved is not saved twice), within --stop-grace-s
    assert latest.step >= step and f"stopping at step {latest.step} (SIGTERM)" in output and stop_s < 20


def test_the_image_refuses_to_serve_on_every_interface_without_tokens(image):
    # The image listens on 0.0.0.0; with no token files a service must not start at all.
    result = docker("run", "--rm", "--network", "none", "--user", "10001:10001", IMAGE, "buffer", "serve",
                    check=False, timeout=120)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "no tokens" in result.stderr and "--write-tokens-file" in result.stderr, result.stderr


def test_rewind_health_inside_the_image_answers_in_well_under_a_second(image, containers):
    pair = ports("buffer")["buffer"]
    buffer = containers("rewind-test-health", *port_args(pair), IMAGE, "buffer", "serve")
    wait_healthy(buffer)
    # The pods' probes (the plaintext health port), then compose's health check (TLS on the service's port).
    for how, extra in (("health port", []), ("TLS", ["-e", "REWIND_HEALTH_PORT=-1"])):
        timings = []
        for _ in range(5):
            started = time.monotonic()
            out = docker("exec", *extra, buffer, "rewind", "health", "--timeout", "4").stdout.strip()
            timings.append(time.monotonic() - started)
            assert out == "SERVING", (how, out)
        assert statistics.median(timings) < 1.0, (how, timings)  # docker exec's own start-up included
