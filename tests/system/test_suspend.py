"""Stopping everything at once, as a Kueue suspend does: SIGTERM to the learner, its shards and the checkpoint
service in the same moment. The services go on serving for serve_after_sigterm_s, so the learner's final cut
commits, and the run resumes from it."""

from __future__ import annotations

import os
import signal

from rewind import CheckpointClient
from tests.support.processes import ServiceProcess
from tests.support.trainer import BUFFER_FLAGS, TrainerProcess

RUN = ("tdmpc2", "pendulum-v1-seed1")
LINGER = ("--serve-after-sigterm-s", "20")


def start(tmp_path, store: str) -> tuple[list[ServiceProcess], ServiceProcess]:
    shards = [ServiceProcess(tmp_path, *BUFFER_FLAGS, *LINGER) for _ in range(2)]
    ckpt = ServiceProcess(tmp_path, "--store", store, *LINGER, group="ckpt")
    return shards, ckpt


def test_a_run_stopped_all_at_once_commits_its_final_cut_and_resumes_from_it(tmp_path):
    store = f"file://{tmp_path}/store"
    shards, ckpt = start(tmp_path, store)
    addresses = ",".join(s.address for s in shards)
    trainer = TrainerProcess(tmp_path, "", ckpt.address, "--buffer-addresses", addresses, "--steps", "100000",
                             "--stop-grace-s", "60")
    try:
        before = trainer.wait_until_step(220)
        for proc in (trainer.proc, *(s.proc for s in shards), ckpt.proc):  # the whole run, in one moment
            os.kill(proc.pid, signal.SIGTERM)
        assert trainer.wait() == 0, trainer.output()
        assert "stopped: Pendulum-v1 step" in trainer.output()
        for service in (*shards, ckpt):
            assert service.proc.wait(timeout=120) == 0  # each drained after serving the final cut's calls
    finally:
        trainer.stop()
        for service in (*shards, ckpt):
            service.stop()
    shards, ckpt = start(tmp_path, store)  # the run admitted again: new services, the same store
    try:
        with CheckpointClient(ckpt.address) as client:
            final = client.lookup(*RUN, "latest").checkpoint
        assert final.step > before and len([b for b in final.buffers if b.buffer == "buffer"]) == 2
        again = TrainerProcess(tmp_path, "", ckpt.address, "--buffer-addresses", ",".join(s.address for s in shards),
                               "--steps", str(final.step + 30), "--resume-from-checkpoint", "latest")
        assert again.wait() == 0, again.output()
        assert f"resuming {final.path} at step {final.step}" in again.output()
    finally:
        for service in (*shards, ckpt):
            service.stop()
