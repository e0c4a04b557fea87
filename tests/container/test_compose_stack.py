"""The compose stack as a user runs it, with deploy/test/compose.test.yaml for this machine:
s3rver for MinIO, host networking, the image built here. Authentication and TLS are on, as
compose.yaml sets them: the test copies the token and CA out as a user would, and every call
it makes uses them."""

from __future__ import annotations

import re
import time

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
    print(f"compose stop trainer: {stop_s:.1f} s")
