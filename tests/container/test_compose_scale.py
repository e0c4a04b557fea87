"""The scale stack (compose.yaml with compose.scale.yaml) as a user runs it, on this machine's override files
(deploy/test/compose.test.yaml, deploy/test/compose.scale.test.yaml): two shards, three collectors and a
learner train; a collector killed and started again carries on, a shard whose process dies is restarted
by its policy and restored by the learner from its last cut, and after `down` and `up` the learner resumes
from its final cut and the collectors from their state files. Authentication and TLS are on."""

from __future__ import annotations

import os
import re
import signal
import ssl
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewind import TrainerClient
from rewind.errors import PermissionDenied, RewindError
from rewind.security import ClientSecurity
from tests.support.containers import COMPOSE_FILES, SECRETS_DIR, build_args, client_security, docker, inspect, logs

PROJECT = "rewind-scale-test"
# compose.yaml, compose.scale.yaml, then this machine's overrides of each.
FILES = [*COMPOSE_FILES[:2], "-f", "compose.scale.yaml", *COMPOSE_FILES[2:],
         "-f", "deploy/test/compose.scale.test.yaml"]
LEARNER, SHARD, COLLECTOR = (f"{PROJECT}-{name}-1" for name in ("learner", "shard-1", "collector-1"))
COLLECTORS = [f"{PROJECT}-collector-{i}-1" for i in range(3)]
LEARNER_ADDRESS, LEARNER_METRICS = "127.0.0.1:50053", "https://127.0.0.1:50073/metrics"
CUT = r"s3://rewind/checkpoints/tdmpc2/compose-scale/step-\d{10}"
T = TypeVar("T")


@pytest.fixture
def stack(image):
    args = build_args()
    env = {"REWIND_IMAGE": image, "REWIND_S3_IMAGE": args["REWIND_S3_IMAGE"], "PYTHON_IMAGE": args["PYTHON_IMAGE"],
           "TORCH_INDEX_CPU": args["TORCH_INDEX_CPU"],
           # Small and quick: a tiny model, the learner on one CPU, each collector on one, a short seeding,
           # one evaluation episode, a cut every 2 episodes; the shards serve 5 s after SIGTERM, not 30.
           "REWIND_MODEL_SIZE": "tiny", "REWIND_TRAINER_CPUS": "1", "REWIND_COLLECTOR_CPUS": "1",
           "REWIND_SEED_STEPS": "400", "REWIND_EVAL_EPISODES": "1", "REWIND_CHECKPOINT_INTERVAL_EPISODES": "2",
           "REWIND_SHARD_SERVE_AFTER_SIGTERM_S": "5",
           # Acting with the policy prior: with MPPI, three collectors on this 2-core machine took over 2
           # minutes for one 200-step episode among them.
           "REWIND_MPC": "false"}
    compose("down", "-v", "--remove-orphans", env=env)
    yield env
    compose("down", "-v", "--remove-orphans", env=env, check=False)


def compose(*args: str, env: dict[str, str], timeout: float = 600, check: bool = True):
    return docker("compose", "-p", PROJECT, *FILES, *args, timeout=timeout, check=check, env=env)


def poll(probe: Callable[[], T], what: str, timeout: float, every: float = 1.0) -> T:
    """probe() until it returns something true, which is returned; fail naming `what` (and the learner's log)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                                 f"learner's log:\n{logs(LEARNER)[-4000:]}")
        time.sleep(every)  # a poll interval: containers, logs and metrics push nothing


def status(security: ClientSecurity):
    with TrainerClient(LEARNER_ADDRESS, timeout=10, security=security) as client:
        return client.status()


def status_or_none(security: ClientSecurity):
    try:
        return status(security)
    except RewindError:
        return None  # not serving (yet)


def shard_states(secrets: Path) -> dict[str, float]:
    """The learner's rewind_trainer_replay_shards by state, from its /metrics over HTTPS (the CA, the read token)."""
    context = ssl.create_default_context(cafile=str(secrets / "ca.crt"))
    request = urllib.request.Request(LEARNER_METRICS, headers={
        "Authorization": f"Bearer {(secrets / 'read.token').read_text().strip()}"})
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        text = response.read().decode()
    return {sample.labels["state"]: sample.value for family in text_string_to_metric_families(text)
            if family.name == "rewind_trainer_replay_shards" for sample in family.samples}


def committed(log: str) -> list[str]:
    """The cuts a learner's log says it committed, oldest first."""
    return re.findall(rf"checkpoint ({CUT}) committed", log)


def test_scale_stack_trains_through_a_lost_collector_and_shard_and_resumes_after_down_and_up(stack, tmp_path):
    started = time.monotonic()
    compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env=stack, timeout=400)
    print(f"\nscale stack up, every service healthy: {time.monotonic() - started:.0f} s")
    secrets = tmp_path / "rewind-secrets"
    compose("cp", f"checkpoint:{SECRETS_DIR}", str(secrets), env=stack)
    read = client_security(secrets, "read.token")

    # The collectors hold their own token and the CA, nothing else; that token adds episodes and gets
    # weights, and may not read the learner's status.
    for name in COLLECTORS:
        assert docker("exec", name, "ls", SECRETS_DIR).stdout.split() == ["ca.crt", "collector.token"], name
    assert (secrets / "collector.token").read_text().startswith("collector:")
    with pytest.raises(PermissionDenied):
        status(client_security(secrets, "collector.token"))

    # The learner updates on what the three collectors bring, and commits its first cut.
    first = poll(lambda: (s := status(read)).last_checkpoint.path and s.updates > 0 and s,
                 "the learner's first cut and updates", timeout=240)
    assert first.collectors == 3 and first.step > 0 and re.fullmatch(CUT, first.last_checkpoint.path), first
    assert shard_states(secrets) == {"live": 2, "down": 0, "answering": 0}
    print(f"first cut at step {first.last_checkpoint.step}, {first.updates} updates: "
          f"{time.monotonic() - started:.0f} s")

    # A collector killed (`docker kill`: a stop, which its restart policy leaves alone) and started again
    # carries on from its state file.
    poll(lambda: "episode 0: return" in logs(COLLECTOR), "collector-1's first episode", timeout=120)
    docker("kill", COLLECTOR)
    compose("start", "collector-1", env=stack)
    resumed = poll(lambda: re.search(r"collector-1 carries on from episode (\d+)", logs(COLLECTOR)),
                   "collector-1 to carry on", timeout=60)
    assert int(resumed.group(1)) >= 1

    # A shard whose process dies (SIGKILL, as the OOM killer sends it) is restarted by its policy; the
    # learner restores it from its last cut, readmits it and goes on.
    before = status(read)
    restarts = inspect(SHARD)["RestartCount"]
    os.kill(inspect(SHARD)["State"]["Pid"], signal.SIGKILL)
    poll(lambda: (i := inspect(SHARD))["RestartCount"] > restarts and i["State"]["Running"],
         "shard-1 restarted by its policy", timeout=60)
    restored = poll(lambda: re.search(rf"shard shard-1:50151 answers again: restored from ({CUT}) and readmitted",
                                      logs(LEARNER)), "the learner to restore shard-1", timeout=120)
    assert restored.group(1) in committed(logs(LEARNER))
    poll(lambda: shard_states(secrets) == {"live": 2, "down": 0, "answering": 0}, "both shards live",
         timeout=60)
    # (Updates, not the step: the step never goes back, so it stays until the collectors have brought
    # again what the restored shard took in after its cut.)
    after = poll(lambda: (s := status(read)).updates > before.updates and s.step >= before.step and s,
                 "the learner to go on after the shard's restore", timeout=120)
    print(f"collector and shard lost and back (shard-1 restored from {restored.group(1)} at step {before.step}), "
          f"learner at step {after.step}, {after.updates} updates: {time.monotonic() - started:.0f} s")

    # Stopping (`stop`, then `down`, volumes kept): compose stops the collectors, then the learner, whose
    # final cut commits while the shards and the checkpoint service still serve, then them. First some
    # progress past the last cut, so that there is a final cut to take.
    poll(lambda: (s := status(read)).step > s.last_checkpoint.step, "a step past the last cut", timeout=120)
    stopping = time.monotonic()
    compose("stop", env=stack, timeout=300)
    print(f"compose stop: {time.monotonic() - stopping:.0f} s")
    learner_log = logs(LEARNER)
    assert inspect(LEARNER)["State"]["ExitCode"] == 0, learner_log[-3000:]
    for name in COLLECTORS:
        assert inspect(name)["State"]["ExitCode"] == 0, logs(name)[-2000:]
    stopped_at = int(re.findall(r"stopping at step (\d+)", learner_log)[-1])
    # The step it stopped at is in the store: cut on its way out, or (when a periodic cut took that step
    # in the meantime) already.
    final = committed(learner_log)[-1]
    assert final.endswith(f"step-{stopped_at:010d}") and "commit within the grace time" not in learner_log, \
        learner_log[-3000:]
    on_the_way_out = bool(committed(learner_log.rsplit("stopping at step", 1)[1]))
    compose("down", env=stack, timeout=300)
    compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env=stack, timeout=400)
    line = poll(lambda: re.search(rf"resuming ({CUT}) at step (\d+) \(update (\d+)", logs(LEARNER)),
                "the learner to resume", timeout=120)
    cut, step, updates = line.group(1), int(line.group(2)), int(line.group(3))
    assert cut == final and step == stopped_at, (line.group(0), final, stopped_at)
    print(f"stopped at step {stopped_at}, cut {'on the way out' if on_the_way_out else 'before'}; resumed at "
          f"update {updates} (the last status before the stop said {after.updates})")
    resumed_status = poll(lambda: status_or_none(read), "the resumed learner's status", timeout=60)
    assert resumed_status.resumed_from == cut
    for index, name in enumerate(COLLECTORS):
        poll(lambda name=name, index=index: re.search(rf"collector-{index} carries on from episode [1-9]",
                                                      logs(name)), f"collector-{index} to carry on", timeout=60)
    # It goes on: it updates, and the shards take the collectors' episodes of the new generation. (Its step
    # may stay a while: it never goes back, and a shard restored from an older cut holds fewer steps.)
    later = poll(lambda: (s := status(read)).updates > updates and s, "the resumed learner to update", timeout=60)
    sent = poll(lambda: [m for name in COLLECTORS for m in re.finditer(
        r"episode (\d+): return \S+, policy version (\d+)", logs(name).split("carries on from episode", 1)[1])],
        "a collector's episode after the resume", timeout=120)
    assert all(int(version) >= updates for _, version in (m.groups() for m in sent)), [m.group(0) for m in sent]
    assert shard_states(secrets) == {"live": 2, "down": 0, "answering": 0}
    print(f"resumed from {cut} at step {step} (update {updates}), then {later.updates} updates and "
          f"{len(sent)} episode(s) sent: {time.monotonic() - started:.0f} s in all")
