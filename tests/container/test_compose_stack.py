"""The compose stack as a user runs it, with deploy/test/compose.test.yaml for this machine:
s3rver for MinIO, host networking, the image built here."""

from __future__ import annotations

import re
import time

import boto3
import pytest

from rewind import TrainerClient
from tests.support.containers import build_args, compose, docker, inspect, logs
from tests.support.processes import wait_for

TRAINER = "rewind-test-trainer-1"
PREFIX = "checkpoints/tdmpc2/compose/"


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


def test_up_trains_into_s3_down_and_up_resumes_and_stop_commits(stack):
    started = time.monotonic()
    compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env=stack, timeout=400)
    healthy_s = time.monotonic() - started
    print(f"\ncompose up -> every service healthy: {healthy_s:.0f} s")
    with TrainerClient("127.0.0.1:50053", timeout=60) as trainer:
        step, path = trainer.checkpoint(wait=True, timeout=300)
    assert path == f"s3://rewind/{PREFIX}step-{step:010d}" and step in checkpoint_steps()

    compose("down", env=stack, timeout=200)  # SIGTERM: the trainer commits a checkpoint on its way out
    compose("up", "-d", "--no-build", "--wait", "minio", env=stack, timeout=200)  # its data volume stayed
    before = checkpoint_steps()[-1]
    assert before >= step
    compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env=stack, timeout=400)
    resumed = f"resuming s3://rewind/{PREFIX}step-{before:010d} at step {before}"
    wait_for(lambda: resumed in logs(TRAINER), "the trainer to resume", timeout=120)
    with TrainerClient("127.0.0.1:50053", timeout=60) as trainer:
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
