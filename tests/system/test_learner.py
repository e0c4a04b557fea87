"""A run of 2 shards, 3 collectors and a learner (`rewind train --collectors 3`), as processes, through each kill
the issue names: the collectors (one by SIGTERM), a shard, the learner; then a SIGTERM and a final cut."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rewind import BufferClient, CheckpointClient, ShardedBufferClient
from tests.support.processes import ServiceProcess, rewind, wait_for
from tests.support.trainer import AGENT_FLAGS, TrainerProcess

RUN = ("tdmpc2", "pendulum-v1-seed1")


class Collector:
    """`rewind collect` c-<i> in a subprocess, its output appended to tmp_path/c-<i>.log (it survives restarts)."""

    def __init__(self, tmp_path: Path, i: int, shards: str, learner: str, ckpt: str) -> None:
        self.path = tmp_path / f"c-{i}.log"
        with open(self.path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rewind_cli", "collect", "--buffer-addresses", shards, "--learner-address",
                 learner, "--checkpoint-address", ckpt, "--run-id", RUN[1], "--collector-id", f"c-{i}", "--seed",
                 str(100 + i), "--state-dir", str(tmp_path / "collectors"), "--preempt-exit-code", "143"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def log(self) -> str:
        return self.path.read_text()

    def versions(self) -> list[tuple[int, int]]:
        """(version, generation) of every policy it took, in order."""
        found = re.findall(r"(?:acting with )?policy version (\d+) \(generation (\d+)\)", self.log())
        return [(int(v), int(g)) for v, g in found]

    def stacks(self) -> str:
        """Its log after it printed every thread's stack (SIGUSR1): what a collector that seems stuck does."""
        if self.proc.poll() is None:
            log = len(self.log())
            self.proc.send_signal(signal.SIGUSR1)
            wait_for(lambda: len(self.log()) > log, "its stacks", timeout=10)
        return self.log()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def learner_process(tmp_path: Path, shards: str, ckpt: str, *args: str, port: int = 0) -> TrainerProcess:
    return TrainerProcess(tmp_path, "", ckpt, "--buffer-addresses", shards, "--collectors", "3", "--steps", "1000000",
                          "--eval-freq", "1000000", "--checkpoint-interval-episodes", "3",
                          "--publish-weights-every", "20", *args, port=port)


def updates(learner: TrainerProcess) -> int:
    return learner.client.status().updates


def merged(shards: list[ServiceProcess]):
    """The shards' stats as one replay's (writers merged)."""
    with ShardedBufferClient([s.address for s in shards]) as replay:
        return replay.stats()


def shard_stats(address: str):
    with BufferClient(address) as client:
        return client.stats()


def test_a_learner_and_three_collectors_survive_each_kill_and_resume(tmp_path):
    shards = [ServiceProcess(tmp_path, "--serve-after-sigterm-s", "5") for _ in range(2)]
    ckpt = ServiceProcess(tmp_path, "--store", f"file://{tmp_path}/store", group="ckpt")
    addresses = ",".join(s.address for s in shards)
    learner = learner_process(tmp_path, addresses, ckpt.address)
    collectors: list[Collector] = []
    try:
        learner.client.wait_until_serving(timeout=120)
        at = f"127.0.0.1:{learner.port}"
        collectors = [Collector(tmp_path, i, addresses, at, ckpt.address) for i in range(3)]
        wait_for(lambda: updates(learner) >= 300, "the learner's first 300 updates", timeout=180)
        status = learner.client.status()
        assert status.collectors == 3 and status.step >= 200
        assert status.phase in ("learning", "checkpointing", "waiting for collectors")
        shown = rewind("trainer", "status", "--address", at)
        assert re.search(r"learner of 3 collector\(s\): \d+ updates", shown.stdout), shown.stdout + shown.stderr
        # Every episode records its collector and policy version; the learner's /metrics tell each one's lag.
        wait_for(lambda: all(any(w.writer == f"c-{i}" and w.latest_policy_version > 0 for w in stats.writers)
                             for i in range(3) for stats in [merged(shards)]), "episodes of every collector's "
                 "with a learned policy", timeout=120)
        http = re.search(r"serving HTTP on (http://127\.0\.0\.1:\d+)", learner.output())[1]
        text = urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode()
        lags = dict(re.findall(r'rewind_trainer_policy_lag\{[^}]*collector="(c-\d)"[^}]*\} (\S+)', text))
        assert sorted(lags) == ["c-0", "c-1", "c-2"] and all(float(v) >= 0 for v in lags.values()), text
        assert "rewind_trainer_policy_lag_mean{" in text and "rewind_trainer_limiter_retries_total{" in text

        # Every collector stopped, c-0 by SIGTERM (it drops its episode in progress and exits within 2 s, with
        # the exit code a Kubernetes Job's podFailurePolicy ignores), the others by SIGKILL: the learner waits on
        # the shards' limiters (it does not fail), and a restarted collector carries on from its state file
        # with a policy at least as new as the one it had.
        had = max(v for v, _ in collectors[0].versions())
        collectors[0].proc.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        assert collectors[0].proc.wait(timeout=60) == 143
        assert time.monotonic() - asked < 2.0
        sent = int(re.search(r"stopped: c-0 sent \d+ episode\(s\), next index (\d+)", collectors[0].log()).group(1))
        assert (tmp_path / "collectors" / "c-0.json").read_text() == f'{{"next_index": {sent}}}'
        for c in collectors[1:]:
            c.kill()
        wait_for(lambda: learner.client.status().phase == "waiting for collectors",
                 "the learner waiting for the shards' rate limiters", timeout=120)
        held = updates(learner)
        assert not all(shard_stats(s.address).rate_limiter.can_sample for s in shards)  # a limiter holds it
        assert learner.proc.poll() is None and updates(learner) == held
        collectors[0] = Collector(tmp_path, 0, addresses, at, ckpt.address)
        wait_for(lambda: updates(learner) > held + 50, "updates again once a collector is back", timeout=120)
        assert f"c-0 carries on from episode {sent}" in collectors[0].log()
        assert collectors[0].versions()[-1][0] >= had
        collectors[1:] = [Collector(tmp_path, i, addresses, at, ckpt.address) for i in (1, 2)]

        # A shard killed: learning goes on with the other at once; restarted empty on its port, it is restored
        # from the last cut and rejoins.
        wait_for(lambda: learner.client.status().last_checkpoint.step > 0, "a first cut", timeout=120)
        port = shards[1].port
        shards[1].kill()
        before, killed = updates(learner), time.monotonic()
        wait_for(lambda: updates(learner) > before + 5, "updates on the other shard", timeout=30)
        assert time.monotonic() - killed < 5.0
        shards[1] = ServiceProcess(tmp_path, "--serve-after-sigterm-s", "5", port=port)
        wait_for(lambda: shard_stats(shards[1].address).episodes > 0, "the shard restored", timeout=120)
        assert shard_stats(shards[1].address).generation == 1
        # The learner tells the collectors (GetWeights) which shards it samples: a collector that lost the shard
        # writes to it again once the learner restored it (its token may not read the shard's stats).
        wait_for(lambda: learner.client.weights().live_shards == (0, 1), "the shard readmitted", timeout=60)
        lost = [c for c in collectors if f"shard {shards[1].address} lost" in c.log()]
        wait_for(lambda: all("is back (the learner restored it)" in c.log() for c in lost),
                 "the collectors that lost the shard writing to it again", timeout=120)

        # The learner killed: resumed from its last cut at generation 2; the collectors' generation-1 writes are
        # refused until they hold the restored version (or newer).
        learner.proc.kill()
        learner.wait()
        learner = learner_process(tmp_path, addresses, ckpt.address, "--resume-from-checkpoint", "latest",
                                  port=learner.port)
        learner.client.wait_until_serving(timeout=120)
        wait_for(lambda: "(update " in learner.output(), "the resume", timeout=60)
        at_step, restored = map(int, re.search(r"at step (\d+) \(update (\d+): the policy version",
                                                learner.output()).groups())
        assert at_step > 0 and restored > 0
        try:
            wait_for(lambda: all(any(g == 2 for _, g in c.versions()) for c in collectors),
                     "every collector on generation 2", timeout=180)
        except AssertionError:
            raise AssertionError("not every collector on generation 2:\n" + "\n".join(
                f"c-{i}:\n{c.stacks()[-6000:]}" for i, c in enumerate(collectors))) from None
        for c in collectors:
            assert all(v >= restored for v, g in c.versions() if g == 2)
        assert all(shard_stats(s.address).generation == 2 for s in shards)
        wait_for(lambda: updates(learner) > restored + 50 and learner.client.status().step > at_step,
                 "updates and new episodes of the resumed learner", timeout=120)

        # SIGTERM: the learner's final cut commits and it exits 0.
        learner.proc.send_signal(signal.SIGTERM)
        assert learner.wait() == 0, learner.output()
        with CheckpointClient(ckpt.address) as client:
            final = client.lookup(*RUN, "latest").checkpoint
        assert final.step > at_step and final.extra["cut"]["generation"] == 2
        assert final.extra["policy_version"] > restored
    finally:
        for c in collectors:
            c.kill()
        learner.stop()
        for service in (*shards, ckpt):
            service.stop()


def test_one_command_runs_the_shards_the_collectors_and_the_learner_on_this_host(tmp_path):
    out = tmp_path / "runs"
    done = rewind("train", "--local-services", "--shards", "2", "--collectors", "2", "--model-size", "tiny",
                  "--action-repeat", "2", "--steps", "400", "--seed-steps", "200", "--eval-episodes", "1",
                  "--eval-freq", "400", "--out-dir", str(out), "--no-progress", "--port", "0", *AGENT_FLAGS,
                  timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Its step is what the collectors brought: 400 or a little past it (they run ahead within the limiters' window).
    finished = re.search(r"done: Pendulum-v1 step (\d+)/400, episode \d+, evaluation return", done.stdout)
    assert finished and 400 <= int(finished[1]) <= 1200, done.stdout
    assert "--collectors 2 --resume-from-checkpoint" in done.stdout  # a learner's checkpoint resumes a learner
    assert "started 2 collector(s)" in done.stderr
    folder = out / "tdmpc2" / "pendulum-v1-seed1" / "collectors"
    sent = 0
    for i in range(2):
        log = (folder / f"collector-{i}.log").read_text()
        found = re.search(rf"stopped: collector-{i} sent (\d+) episode\(s\), next index (\d+)", log)
        if "acting with policy version" in log:  # started acting (not still importing) when the run ended
            assert found, log[-2000:]  # SIGTERM at the end of the run: it stopped, it was not killed
        if found and int(found[2]):
            sent += int(found[1])
            assert (folder / f"collector-{i}.json").read_text() == f'{{"next_index": {found[2]}}}'
    assert sent >= 4  # 400 steps of 100-step episodes (action repeat 2) came from the two of them
