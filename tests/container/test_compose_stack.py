"""The compose stack as a user runs it, with deploy/test/compose.test.yaml for this machine:
s3rver for MinIO, host networking, the image built here. Authentication and TLS are on, as
compose.yaml sets them: the test copies the token and CA out as a user would, and every call
it makes uses them."""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from rewind import BufferClient, CheckpointClient, TrainerClient
from rewind.errors import PermissionDenied, Unauthenticated, Unavailable
from rewind.security import ClientSecurity
from tests.support.containers import SECRETS_DIR, build_args, client_security, compose, docker, inspect, logs
from tests.support.processes import wait_for

TRAINER = "rewind-test-trainer-1"
PREFIX = "checkpoints/tdmpc2/compose/"
BUFFER, CHECKPOINT, TRAINER_ADDRESS = "127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"


@pytest.fixture
def stack(image):
    args = build_args()
    env = {"REWIND_IMAGE": image, "REWIND_S3_IMAGE": args["REWIND_S3_IMAGE"], "PYTHON_IMAGE": args["PYTHON_IMAGE"],
           "TORCH_INDEX_CPU": args["TORCH_INDEX_CPU"], "REWIND_TRAINER_CPUS": "1",
           "REWIND_CHECKPOINT_INTERVAL_EPISODES": "1"}
    compose("down", "-v", "--remove-orphans", env=env)
    yield env
    compose("down", "-v", "--remove-orphans", env=env, check=False)


def checkpoint_steps() -> list[int]:
    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1",
                      aws_access_key_id="S3RVER", aws_secret_access_key="S3RVER")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="rewind", Prefix=PREFIX).get("Contents", [])]
    return sorted({int(m.group(1)) for k in keys if (m := re.search(r"step-(\d+)/manifest\.json$", k))})


def buffer_stats(security: ClientSecurity):
    with BufferClient(BUFFER, "buffer", timeout=10, security=security) as client:
        return client.stats()


def checkpoint_runs(security: ClientSecurity):
    with CheckpointClient(CHECKPOINT, timeout=10, security=security) as client:
        return client.list_runs()


def trainer_status(security: ClientSecurity):
    with TrainerClient(TRAINER_ADDRESS, timeout=10, security=security) as client:
        return client.status()


def https_get(path: str, secrets: Path, port: int = 50072, token: str = "read.token") -> tuple[int, bytes]:
    """(status, body) of a GET on a service's HTTPS port, as a user on the host makes it (the CA, a token)."""
    context = ssl.create_default_context(cafile=str(secrets / "ca.crt"))
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {(secrets / token).read_text().strip()}")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run_history(secrets: Path) -> dict:
    status, body = https_get("/api/training-runs/tdmpc2/compose", secrets)
    assert status == 200, body[:500]
    return json.loads(body)


def test_up_trains_into_s3_down_and_up_resumes_and_stop_commits(stack, tmp_path):
    started = time.monotonic()
    compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env=stack, timeout=400)
    healthy_s = time.monotonic() - started
    print(f"\ncompose up -> every service healthy: {healthy_s:.0f} s")

    # The secrets job filled the volume as the service user, 0700 / 0600, and a user copies them out.
    listing = docker("exec", "rewind-test-checkpoint-1", "stat", "-c", "%n %u %a", SECRETS_DIR,
                     f"{SECRETS_DIR}/write.token", f"{SECRETS_DIR}/tls.key").stdout.split("\n")
    assert listing[:3] == [f"{SECRETS_DIR} 10001 700", f"{SECRETS_DIR}/write.token 10001 600",
                           f"{SECRETS_DIR}/tls.key 10001 600"], listing
    secrets = tmp_path / "rewind-secrets"
    compose("cp", f"checkpoint:{SECRETS_DIR}", str(secrets), env=stack)
    write, read = client_security(secrets), client_security(secrets, "read.token")

    # Every service speaks only TLS and answers only a token: nothing without one, nothing in plaintext.
    for call in (buffer_stats, checkpoint_runs, trainer_status):
        with pytest.raises(Unauthenticated):
            call(ClientSecurity(tls_ca_file=write.tls_ca_file))
        with pytest.raises(Unavailable):
            call(ClientSecurity())
        call(read)  # a read token reads
    with pytest.raises(PermissionDenied):  # ... and changes nothing
        with TrainerClient(TRAINER_ADDRESS, timeout=10, security=read) as trainer:
            trainer.checkpoint(wait=False)

    with TrainerClient(TRAINER_ADDRESS, timeout=60, security=write) as trainer:
        step, path = trainer.checkpoint(wait=True, timeout=300)
    assert path == f"s3://rewind/{PREFIX}step-{step:010d}" and step in checkpoint_steps()

    compose("down", env=stack, timeout=200)  # SIGTERM: the trainer commits a checkpoint on its way out
    compose("up", "-d", "--no-build", "--wait", "minio", env=stack, timeout=200)  # its data volume stayed
    before = checkpoint_steps()[-1]
    assert before >= step
    compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env=stack, timeout=400)
    resumed = f"resuming s3://rewind/{PREFIX}step-{before:010d} at step {before}"
    wait_for(lambda: resumed in logs(TRAINER), "the trainer to resume", timeout=120)
    # The secrets job ran again and kept the files: the token copied before still works.
    with TrainerClient(TRAINER_ADDRESS, timeout=60, security=write) as trainer:
        later, _ = trainer.checkpoint(wait=True, timeout=300)
    assert later > before  # the step continues
    # The history API over HTTPS on 127.0.0.1:50072: the committed checkpoints, the running state,
    # and the first session's checkpoints before the resume; nothing without a token.
    # (The trainer checkpoints every episode and keeps the last 3, so the list moves on as we look.)
    run = run_history(secrets)
    steps = [c["step"] for c in run["checkpoint_paths"]]
    assert steps == sorted(steps) and 1 <= len(steps) <= 3 and steps[-1] >= later, steps
    assert [c["path"] for c in run["checkpoint_paths"]] == [f"s3://rewind/{PREFIX}step-{s:010d}" for s in steps]
    assert run["state"] == "running" and run["status"]["resumed_from"] == f"s3://rewind/{PREFIX}step-{before:010d}"
    assert https_get("/api/training-runs", secrets, token="")[0] == 401
    status, page = https_get("/runs/tdmpc2/compose", secrets)
    assert status == 200 and b"<svg" in page and f"step-{later:010d}".encode() in page
    status, metrics = https_get("/metrics", secrets, port=50071)
    assert status == 200 and b'rewind_buffer_episodes_added_total{buffer="buffer"}' in metrics
    # The named volume trainer-runs took its owner from the image, so uid 10001 writes its metrics there.
    owner = docker("exec", TRAINER, "stat", "-c", "%u", "/var/lib/rewind/runs").stdout.strip()
    metrics = docker("exec", TRAINER, "head", "-1", "/var/lib/rewind/runs/tdmpc2/compose/metrics.csv").stdout
    assert owner == "10001" and metrics.startswith("step,episode,kind,episode_return"), (owner, metrics)

    started = time.monotonic()
    compose("stop", "trainer", env=stack, timeout=200)
    stop_s = time.monotonic() - started
    state = inspect(TRAINER)["State"]
    assert state["ExitCode"] == 0, logs(TRAINER)[-3000:]  # compose's REWIND_PREEMPT_EXIT_CODE: 0
    assert "the last checkpoint was not committed" not in logs(TRAINER)
    assert checkpoint_steps()[-1] >= later and stop_s < 60
    stopped = run_history(secrets)  # SIGTERM: the trainer's last status says so
    assert stopped["state"] == "preempted" and stopped["status"]["exit_code"] == 0, stopped["status"]
    assert stopped["checkpoint_paths"][-1]["step"] == checkpoint_steps()[-1]
    print(f"compose stop trainer: {stop_s:.1f} s")
