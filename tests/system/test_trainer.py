"""The trainer through the real trio on 127.0.0.1: checkpoints, exact resume,
overrides, mismatches, SIGTERM, kill -9, the trainer service and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from google.protobuf import json_format
from safetensors.torch import load as load_safetensors

from rewind import BufferClient, CheckpointClient
from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from rewind_buffer.server import serve as serve_buffers
from rewind_buffer.settings import BufferServiceSettings
from rewind_trainer.api import train as rewind_train
from rewind_trainer.run import train
from rewind_trainer.service import Control
from rewind_trainer.settings import TrainSettings
from tests.support.configs import checkpoint_config
from tests.support.processes import ServiceProcess, wait_for
from tests.support.shared import computed_once
from tests.support.trainer import AGENT, BUFFER_FLAGS, TrainerProcess, assert_identical, params, tiny

BUFFERS = BufferServiceSettings(buffer_size=20_000, batch_size=8, min_history=0, horizon=3, port=0)


class Trio:
    """A buffer service and a checkpoint service in this process; the trainer runs here too."""

    def __init__(self, store_url: str) -> None:
        from rewind_checkpoint.server import serve as serve_checkpoints

        self.buffers = serve_buffers(BUFFERS)
        self.checkpoints = serve_checkpoints(checkpoint_config(store_url, max_message_mb=64))
        self.ckpt = CheckpointClient(self.checkpoints.address)

    def settings(self, out_dir: Path, **changes) -> TrainSettings:
        return tiny(buffer_address=self.buffers.address, checkpoint_address=self.checkpoints.address,
                    out_dir=str(out_dir), **changes)

    def fresh_buffers(self) -> None:
        """A new buffer service, as after a preemption (the old one's contents are gone)."""
        self.buffers.stop(grace_s=0.5)
        self.buffers = serve_buffers(BUFFERS)

    def close(self) -> None:
        self.ckpt.close()
        self.buffers.stop(grace_s=0.5)
        self.checkpoints.stop(grace_s=0.5)


@pytest.fixture
def trio(store_url):
    t = Trio(store_url)
    yield t
    t.close()


@pytest.fixture
def file_trio(tmp_path):
    t = Trio(f"file://{tmp_path}/store")
    yield t
    t.close()


@dataclasses.dataclass(frozen=True)
class Reference:
    """An uninterrupted run to step 600 (seed steps end at 200, episodes are 200 steps): its parameters, its
    episode count, the evaluation episodes its test_buffer holds and its last checkpoint (the record)."""

    params: dict[str, torch.Tensor]
    episode: int
    test_episodes: int
    checkpoint: checkpoint_pb2.Checkpoint


def run_reference(tmp: Path) -> Reference:
    t = Trio(f"file://{tmp}/store")
    try:
        result = train(t.settings(tmp / "runs", steps=600))
        test_episodes = BufferClient(t.buffers.address, "test_buffer").stats().episodes_added
        return Reference(params(result.agent), result.episode, test_episodes,
                         t.ckpt.lookup(which=result.checkpoint).checkpoint)
    finally:
        t.close()


def save_reference(ref: Reference, path: Path) -> None:
    torch.save({**dataclasses.asdict(ref), "checkpoint": ref.checkpoint.SerializeToString()}, path)


def load_reference(path: Path) -> Reference:
    saved = torch.load(path)
    return Reference(**{**saved, "checkpoint": checkpoint_pb2.Checkpoint.FromString(saved["checkpoint"])})


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """The uninterrupted run, made once for every test worker (it is deterministic: one torch thread)."""
    return computed_once(tmp_path_factory, "trainer-reference.pt", run_reference, save_reference, load_reference)


# -- exact resume ------------------------------------------------------------

def plain_path(checkpoint: str, cwd: Path) -> str:
    """How a user names the checkpoint with no selector: a relative path to a file in it, or its s3:// URL."""
    if checkpoint.startswith("file://"):
        return os.path.relpath(checkpoint.removeprefix("file://") + "/trainer.pt", cwd)
    return checkpoint


@pytest.mark.parametrize("named_by", ["latest", "plain path"])
def test_stopped_at_n_and_resumed_to_2n_is_bit_identical_to_an_uninterrupted_run(trio, reference, tmp_path,
                                                                                 named_by, monkeypatch):
    first = train(trio.settings(tmp_path / "runs", steps=300))
    assert (first.step, first.exit_code) == (300, 0)
    assert first.checkpoint.endswith("step-0000000300")  # the final save, in the middle of an episode
    trio.fresh_buffers()  # nothing survives but the checkpoint
    monkeypatch.chdir(tmp_path / "runs")
    which = "latest" if named_by == "latest" else plain_path(first.checkpoint, tmp_path / "runs")
    second = train(trio.settings(tmp_path / "runs", steps=600, resume_from_checkpoint=which),
                   explicit={"steps", "resume_from_checkpoint"})
    assert (second.step, second.resumed_from) == (600, first.checkpoint)
    assert_identical(params(second.agent), reference.params)
    assert second.episode == reference.episode == 3
    # The record is the same to the last digit and byte: the returns (the second episode spans the resume,
    # its rewards before step 300 went through trainer.pt) and the policy file's sha256.
    resumed, uninterrupted = trio.ckpt.lookup(which=second.checkpoint).checkpoint, reference.checkpoint
    returns = [json_format.MessageToDict(c.extra)["recent_returns"] for c in (resumed, uninterrupted)]
    assert len(returns[0]) == 3 and returns[0] == returns[1]
    assert resumed.metrics["episode_return"] == uninterrupted.metrics["episode_return"]
    assert policy_sha256(resumed) == policy_sha256(uninterrupted)


def test_a_finished_run_resumed_with_more_steps_evaluates_its_last_step_once(trio, reference, tmp_path):
    """Its last checkpoint (400: a multiple of the interval and of eval_freq, at an episode's end) holds the
    final evaluation, which the uninterrupted run does at 400 in its loop: the resumed run must not redo it."""
    first = train(trio.settings(tmp_path / "runs", steps=400, checkpoint_interval_steps=200))
    checkpoint = trio.ckpt.lookup(which=first.checkpoint).checkpoint
    assert (checkpoint.step, checkpoint.metrics["eval_return"]) == (400, first.eval_return)
    trio.fresh_buffers()
    second = train(trio.settings(tmp_path / "runs", steps=600, checkpoint_interval_steps=200,
                                 resume_from_checkpoint="latest"), explicit={"steps", "resume_from_checkpoint"})
    assert second.resumed_from == first.checkpoint
    assert_identical(params(second.agent), reference.params)
    assert BufferClient(trio.buffers.address, "test_buffer").stats().episodes_added == reference.test_episodes == 2


def policy_sha256(checkpoint) -> str:
    return next(f.sha256 for f in checkpoint.files if f.name == "policy.safetensors")


def test_a_checkpoint_holds_the_files_the_metrics_and_a_policy_for_deployment(file_trio, tmp_path):
    result = train(file_trio.settings(tmp_path / "runs", steps=420))
    found = file_trio.ckpt.lookup(which=result.checkpoint)
    names = {f.name for f in found.checkpoint.files}
    assert names == {"trainer.pt", "policy.safetensors", "buffer.snapshot", "test_buffer.snapshot"}
    # The buffers are saved as content-addressed blocks (the .snapshot files are their indexes).
    assert [(b.buffer, b.format) for b in found.checkpoint.buffers] == [("buffer", "blocks"),
                                                                         ("test_buffer", "blocks")]
    assert all(b.blocks for b in found.checkpoint.buffers)
    assert found.checkpoint.step == 420 and found.checkpoint.episode == 2
    assert found.checkpoint.metrics["eval_return"] == pytest.approx(result.eval_return)
    assert found.checkpoint.config["settings"]["task"] == "Pendulum-v1"
    policy = load_safetensors(file_trio.ckpt.read(result.checkpoint, "policy.safetensors"))
    model = result.agent.model.state_dict()
    assert policy.keys() == {k for k in model if not k.startswith("target_qs.")}
    assert all(torch.equal(policy[k], model[k]) for k in policy)
    # Both buffers went into the checkpoint as they were at the step.
    stats = BufferClient(file_trio.buffers.address).stats()
    assert stats.episodes_added == 2
    metrics = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,episode,kind,episode_return")
    assert (result.run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- overrides and mismatches --------------------------------------------------

def test_resume_applies_safe_overrides_and_records_them(file_trio, tmp_path):
    first = train(file_trio.settings(tmp_path / "runs", steps=250))
    file_trio.fresh_buffers()
    resumed = train(file_trio.settings(tmp_path / "runs", steps=300, learning_rate=1e-3, keep_last_n_checkpoints=1,
                                       resume_from_checkpoint=first.checkpoint),
                    explicit={"steps", "learning_rate", "keep_last_n_checkpoints", "resume_from_checkpoint"})
    assert resumed.step == 300
    assert resumed.settings.learning_rate == 1e-3
    assert [g["lr"] for g in resumed.agent.pi_optim.param_groups] == [1e-3]
    assert resumed.agent.optim.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.3)  # the encoder's scale
    checkpoint = file_trio.ckpt.lookup(which=resumed.checkpoint).checkpoint
    changes = json_format.MessageToDict(checkpoint.extra)["overrides"][0]["changes"]
    assert changes["learning_rate"] == {"from": 3e-4, "to": 1e-3}
    assert changes["steps"] == {"from": 250, "to": 300}
    assert checkpoint.resumed_from == first.checkpoint
    # keep_last_n_checkpoints=1 went to the service with the save
    assert [c.step for c in file_trio.ckpt.list("tdmpc2", "pendulum-v1-seed1")] == [300]


def test_resume_with_another_architecture_names_each_field_and_touches_nothing(file_trio, tmp_path):
    first = train(file_trio.settings(tmp_path / "runs", steps=210))
    before = BufferClient(file_trio.buffers.address).stats()
    with pytest.raises(FailedPrecondition) as info:
        train(file_trio.settings(tmp_path / "runs", steps=400, resume_from_checkpoint="latest", model_size="1",
                                 agent={**AGENT, "num_q": 3}),
              explicit={"steps", "resume_from_checkpoint", "model_size", "agent"})
    message = str(info.value)
    assert "model_size (checkpoint 'tiny', given '1')" in message
    assert "agent.num_q (checkpoint None, given 3)" in message
    assert [c.path for c in file_trio.ckpt.list("tdmpc2", "pendulum-v1-seed1")] == [first.checkpoint]
    after = BufferClient(file_trio.buffers.address).stats()
    assert (after.episodes_added, after.batches_sampled) == (before.episodes_added, before.batches_sampled)


def test_resume_with_another_task_shape_is_refused(file_trio, tmp_path):
    first = train(file_trio.settings(tmp_path / "runs", steps=210))
    with pytest.raises(FailedPrecondition, match=r"task \(checkpoint 'Pendulum-v1', given 'MountainCarContinuous"):
        train(file_trio.settings(tmp_path / "runs", resume_from_checkpoint=first.checkpoint,
                                 task="MountainCarContinuous-v0"),
              explicit={"resume_from_checkpoint", "task"})


def store_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["trainer", "buffer service"])
def test_resume_across_an_incompatible_torchrl_fails_at_start_naming_it(file_trio, tmp_path, monkeypatch, where):
    from rewind import versions

    quick = dict(seed_steps=1000, eval_episodes=0)
    first = train(file_trio.settings(tmp_path / "runs", steps=5, **quick))
    recorded = versions.current()["torchrl"]
    before_store = store_files(tmp_path / "store")
    before = BufferClient(file_trio.buffers.address).stats()
    other = {**versions.current(), "torchrl": "0.99.0"}
    # The resuming process (or the buffer service that would receive the buffers) runs another torchrl.
    monkeypatch.setattr("rewind.versions.current" if where == "trainer" else "rewind_buffer.servicer.current",
                        lambda: dict(other))
    with pytest.raises(FailedPrecondition) as info:
        train(file_trio.settings(tmp_path / "runs", steps=10, resume_from_checkpoint="latest", **quick),
              explicit={"steps", "resume_from_checkpoint"})
    message = str(info.value)
    assert message.startswith(f"resume_from_checkpoint: {first.checkpoint} was written with versions")
    if where == "trainer":
        assert f"torchrl {recorded}, this trainer runs 0.99.0" in message
    else:
        for name in ("buffer", "test_buffer"):
            assert f"buffer {name!r}: torchrl {recorded}, the buffer service at {file_trio.buffers.address} " \
                   "runs 0.99.0" in message
    assert f"install torchrl {'.'.join(recorded.split('.')[:2])}.x or start a new run" in message
    assert store_files(tmp_path / "store") == before_store  # nothing written: no checkpoint, no history
    after = BufferClient(file_trio.buffers.address).stats()
    assert (after.episodes_added, after.batches_sampled) == (before.episodes_added, before.batches_sampled)


def test_a_checkpoint_without_version_records_resumes_and_says_so(file_trio, tmp_path, caplog):
    quick = dict(seed_steps=1000, eval_episodes=0)
    first = train(file_trio.settings(tmp_path / "runs", steps=5, **quick))
    manifest = Path(first.checkpoint.removeprefix("file://")) / "manifest.json"
    body = json.loads(manifest.read_text())
    assert body["versions"]["torchrl"] and all(b["versions"] for b in body["buffers"])
    del body["versions"]  # as written before Rewind recorded versions
    for b in body["buffers"]:
        del b["versions"]
    manifest.write_text(json.dumps(body))
    file_trio.fresh_buffers()
    caplog.set_level("INFO", logger="rewind_trainer.plan")
    resumed = train(file_trio.settings(tmp_path / "runs", steps=10, resume_from_checkpoint=first.checkpoint, **quick),
                    explicit={"steps", "resume_from_checkpoint"})
    assert (resumed.step, resumed.resumed_from) == (10, first.checkpoint)
    [logged] = [r.getMessage() for r in caplog.records if "compatible" in r.getMessage()]
    assert logged.startswith(f"resume_from_checkpoint: {first.checkpoint} was written with other versions")
    assert "no version record" in logged
    # The new checkpoint records them again.
    assert file_trio.ckpt.lookup(which=resumed.checkpoint).checkpoint.versions["torchrl"]


def test_latest_without_a_checkpoint_starts_fresh_and_says_so(file_trio, tmp_path, caplog):
    caplog.set_level("INFO", logger="rewind_trainer.plan")
    result = train(file_trio.settings(tmp_path / "runs", steps=5, seed_steps=5, eval_episodes=0,
                                      resume_from_checkpoint="latest"))
    assert result.resumed_from == "" and result.step == 5
    assert "no checkpoint of tdmpc2/pendulum-v1-seed1 yet" in caplog.text and "starting fresh" in caplog.text


def test_a_fresh_run_never_writes_over_an_existing_run(file_trio, tmp_path):
    train(file_trio.settings(tmp_path / "runs", steps=5, seed_steps=5, eval_episodes=0))
    with pytest.raises(FailedPrecondition, match=r"run_id: tdmpc2/pendulum-v1-seed1 already has checkpoints"):
        train(file_trio.settings(tmp_path / "runs", steps=5, seed_steps=5, eval_episodes=0))


def test_a_corrupt_checkpoint_is_reported_as_data_loss(file_trio, tmp_path):
    first = train(file_trio.settings(tmp_path / "runs", steps=5, seed_steps=5, eval_episodes=0))
    trainer_pt = Path(first.checkpoint.removeprefix("file://")) / "trainer.pt"
    data = bytearray(trainer_pt.read_bytes())
    data[100] ^= 0xFF
    trainer_pt.write_bytes(bytes(data))
    with pytest.raises(DataLoss, match="trainer.pt"):
        train(file_trio.settings(tmp_path / "runs", resume_from_checkpoint=first.checkpoint),
              explicit={"resume_from_checkpoint"})
    with pytest.raises(NotFound):
        missing = first.checkpoint.replace("-0000000005", "-0000000099")
        train(file_trio.settings(tmp_path / "runs", resume_from_checkpoint=missing),
              explicit={"resume_from_checkpoint"})


def test_a_corrupt_checkpoint_named_by_path_falls_back_to_the_newest_good_one_and_says_so(file_trio, tmp_path,
                                                                                         caplog):
    quick = dict(seed_steps=1000, eval_episodes=0)
    good = train(file_trio.settings(tmp_path / "runs", steps=5, **quick))
    newer = train(file_trio.settings(tmp_path / "runs", steps=10, resume_from_checkpoint=good.checkpoint, **quick),
                  explicit={"steps", "resume_from_checkpoint"})
    trainer_pt = Path(newer.checkpoint.removeprefix("file://")) / "trainer.pt"
    data = bytearray(trainer_pt.read_bytes())
    data[100] ^= 0xFF
    trainer_pt.write_bytes(bytes(data))
    caplog.set_level("WARNING", logger="rewind_trainer.plan")
    third = train(file_trio.settings(tmp_path / "runs", steps=15, resume_from_checkpoint=newer.checkpoint, **quick),
                  explicit={"steps", "resume_from_checkpoint"})
    assert (third.resumed_from, third.step) == (good.checkpoint, 15)
    warnings = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"skipped checkpoint {newer.checkpoint}: ") and "sha256" in m for m in warnings)
    assert f"resume_from_checkpoint: resuming from {good.checkpoint}, the newest checkpoint before it that " \
           "verifies" in warnings


# -- checkpoints never stop the run ------------------------------------------------

def test_a_failed_save_is_reported_and_the_next_one_succeeds(tmp_path):
    trio = Trio(f"file://{tmp_path}/store")
    control = Control()
    outcome: dict = {}
    settings = trio.settings(tmp_path / "runs", steps=100_000, eval_episodes=0)
    runner = threading.Thread(target=lambda: outcome.update(result=train(settings, control=control)))
    runner.start()
    try:
        first = control.request_checkpoint().result(timeout=120)
        store = tmp_path / "store"
        store.rename(tmp_path / "gone")  # the store disappears
        with pytest.raises(Exception, match="store"):
            control.request_checkpoint().result(timeout=120)
        (tmp_path / "gone").rename(store)
        second = control.request_checkpoint().result(timeout=120)
        assert second[0] > first[0] and second[1].endswith(f"step-{second[0]:010d}")
        control.request_stop("test")
        runner.join(timeout=120)
        result = outcome["result"]
        assert result.stopped and result.exit_code == 0 and result.step < 100_000
        assert result.checkpoint.endswith(f"step-{result.step:010d}")
        assert result.checkpoints.failures == 1 and result.checkpoints.error == ""
    finally:
        control.request_stop("test")
        runner.join(timeout=120)
        trio.close()


@pytest.mark.serial  # a bound in milliseconds: measured with nothing else running
def test_checkpoint_blocking_time_is_recorded_and_small(file_trio, tmp_path):
    result = train(file_trio.settings(tmp_path / "runs", steps=260, checkpoint_interval_steps=130))
    status = result.checkpoints
    assert status.saves == 2 and status.step == 260
    assert 0 < status.blocking_ms < 1000  # the 50 ms figure is measured in bench/trainer.py, not here


# -- bad settings ----------------------------------------------------------------

def test_bad_settings_are_named():
    with pytest.raises(InvalidArgument, match="checkpoint_interval_steps: must be zero or more"):
        TrainSettings(checkpoint_interval_steps=-1)
    with pytest.raises(InvalidArgument, match="learning_rate: must be positive"):
        TrainSettings(learning_rate=0)
    with pytest.raises(InvalidArgument, match=r"agent\.lr: set it with its own setting"):
        TrainSettings(agent={"lr": 1e-3})
    with pytest.raises(InvalidArgument, match=r"train\(\): unknown setting\(s\) stepz"):
        rewind_train(stepz=3)


def test_an_unreachable_service_is_named_with_its_address(tmp_path):
    with pytest.raises(Exception, match=r"buffer service at 127\.0\.0\.1:9 is not reachable"):
        train(tiny(buffer_address="127.0.0.1:9", out_dir=str(tmp_path)))


# -- the process: CLI, trainer service, SIGTERM, kill -9 ---------------------------------

def final_policy(ckpt_address: str, step: int) -> dict[str, torch.Tensor]:
    with CheckpointClient(ckpt_address) as ckpt:
        found = ckpt.lookup("tdmpc2", "pendulum-v1-seed1", step)
        return load_safetensors(ckpt.read(found.checkpoint, "policy.safetensors"))


def resume_on_a_new_buffer_service(tmp_path: Path, buffer: ServiceProcess, ckpt: ServiceProcess) -> tuple[str, int]:
    """The preempted buffer service is gone too: resume to step 600 on a new one, restored from the checkpoint.

    Returns:
        The resumed trainer's output, and the evaluation episodes its test_buffer holds.
    """
    buffer.stop()
    new_buffer = ServiceProcess(tmp_path, *BUFFER_FLAGS)
    try:
        again = TrainerProcess(tmp_path, new_buffer.address, ckpt.address, "--steps", "600",
                               "--resume-from-checkpoint", "latest")
        assert again.wait() == 0, again.output()
        return again.output(), BufferClient(new_buffer.address, "test_buffer").stats().episodes_added
    finally:
        new_buffer.stop()


def test_sigterm_checkpoints_and_exits_then_latest_resumes_exactly(services, reference, tmp_path):
    buffer, ckpt = services
    trainer = TrainerProcess(tmp_path, buffer.address, ckpt.address, "--steps", "600")
    trainer.wait_until_step(250)
    status = trainer.client.status()
    assert status.phase in ("training", "seeding") and status.total_steps == 600
    assert status.last_checkpoint.path.endswith(f"step-{status.last_checkpoint.step:010d}")
    trainer.proc.send_signal(signal.SIGTERM)
    assert trainer.wait() == 0, trainer.output()
    out = trainer.output()
    assert "stopped: Pendulum-v1 step" in out and "--resume-from-checkpoint file://" in out
    with CheckpointClient(ckpt.address) as c:
        stopped_at = c.lookup("tdmpc2", "pendulum-v1-seed1", "latest").checkpoint.step
    assert 250 <= stopped_at < 600
    output, _ = resume_on_a_new_buffer_service(tmp_path, buffer, ckpt)
    assert f"resuming file://{tmp_path}/store/tdmpc2/pendulum-v1-seed1/step-{stopped_at:010d}" in output
    policy = final_policy(ckpt.address, 600)
    assert_identical(policy, {k: v for k, v in reference.params.items() if k in policy})


def test_sigterm_during_an_evaluation_commits_and_resumes_exactly(services, reference, tmp_path):
    buffer, ckpt = services
    trainer = TrainerProcess(tmp_path, buffer.address, ckpt.address, "--steps", "600")
    trainer.client.wait_until_serving(timeout=120)
    wait_for(lambda: (lambda s: s.phase == "evaluating" and s.step == 400)(trainer.client.status()),
             "the evaluation at step 400", timeout=120)
    trainer.proc.send_signal(signal.SIGTERM)
    assert trainer.wait() == 0, trainer.output()
    assert "evaluation at step 400 abandoned" in trainer.output()
    with CheckpointClient(ckpt.address) as c:
        assert c.lookup("tdmpc2", "pendulum-v1-seed1", "latest").checkpoint.step == 400  # the evaluation's step
    _, test_episodes = resume_on_a_new_buffer_service(tmp_path, buffer, ckpt)
    policy = final_policy(ckpt.address, 600)
    assert_identical(policy, {k: v for k, v in reference.params.items() if k in policy})
    assert test_episodes == reference.test_episodes  # the abandoned evaluation ran again, once


def test_sigterm_during_the_update_burst_checkpoints_at_the_next_boundary_and_resumes_exactly(
        trio, reference, tmp_path, monkeypatch):
    """A real SIGTERM, through the trainer's own handler, at the 50th of the 200 updates the seed steps end
    with (counted, not timed): the run commits at the end of the open stream and exits with the preemption code."""
    from rewind_trainer.agent import TDMPC2

    update, calls = TDMPC2.update, []

    def counted(agent, *batch):
        calls.append(1)
        if len(calls) == 50:
            signal.raise_signal(signal.SIGTERM)  # the handler runs on this (the main) thread, as in `rewind train`
        return update(agent, *batch)

    monkeypatch.setattr(TDMPC2, "update", counted)
    before = signal.getsignal(signal.SIGTERM)
    first = train(trio.settings(tmp_path / "runs", steps=600, preempt_exit_code=143), handle_signals=True)
    monkeypatch.setattr(TDMPC2, "update", update)
    assert (first.stopped, first.step, first.checkpoint.endswith("step-0000000201")) == (True, 201, True)
    assert (first.exit_code, first.committed) == (143, True)
    assert len(calls) <= 50 + 32  # at most the rest of the open stream after the signal (loop.stream_chunk)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    trio.fresh_buffers()
    second = train(trio.settings(tmp_path / "runs", steps=600, resume_from_checkpoint="latest"),
                   explicit={"steps", "resume_from_checkpoint"})
    assert second.resumed_from == first.checkpoint
    assert_identical(params(second.agent), reference.params)


def test_kill_9_resumes_from_the_last_committed_checkpoint(services, reference, tmp_path):
    buffer, ckpt = services
    trainer = TrainerProcess(tmp_path, buffer.address, ckpt.address, "--steps", "600",
                             "--checkpoint-interval-steps", "100")
    committed = trainer.wait_until_step(220)
    trainer.proc.kill()
    assert trainer.wait() == -signal.SIGKILL
    with CheckpointClient(ckpt.address) as c:
        latest = c.lookup("tdmpc2", "pendulum-v1-seed1", "latest").checkpoint.step
    assert latest >= committed
    again = TrainerProcess(tmp_path, buffer.address, ckpt.address, "--steps", "600", "--checkpoint-interval-steps",
                           "100", "--resume-from-checkpoint", "latest")
    assert again.wait() == 0, again.output()
    assert f"step-{latest:010d} at step {latest}" in again.output()
    policy = final_policy(ckpt.address, 600)
    assert_identical(policy, {k: v for k, v in reference.params.items() if k in policy})


def test_the_trainer_service_reports_and_stops(services, tmp_path):
    buffer, ckpt = services
    trainer = TrainerProcess(tmp_path, buffer.address, ckpt.address, "--steps", "100000")
    step = trainer.wait_until_step(1)
    status = trainer.client.status()
    assert status.agent_id == "tdmpc2" and status.run_id == "pendulum-v1-seed1" and status.task == "Pendulum-v1"
    assert status.step >= step and status.acting_mode == "mppi"
    assert status.last_checkpoint.blocking_ms > 0 and status.last_checkpoint.error == ""
    assert status.eval_step == -1  # no evaluation at step 0 (--eval-at-start), none at 400 yet
    shown = subprocess.run([sys.executable, "-m", "rewind_cli", "trainer", "status", "--address",
                            trainer.client.address], capture_output=True, text=True, timeout=60)
    # by the time the command runs, the evaluation at step 400 may have happened
    assert re.search(r"eval return (n/a \(no evaluation yet\)|-?\d+\.\d at step 400)", shown.stdout), shown.stdout
    # The same through reflection only, as a grpcurl user would (buf curl).
    from tests.support.curl import call

    service = "rewind.trainer.v1.TrainerService"
    over_curl = call(trainer.client.address, "GetStatus", {}, service)["status"]
    assert (over_curl["runId"], over_curl["task"]) == ("pendulum-v1-seed1", "Pendulum-v1")
    assert int(over_curl["step"]) >= status.step
    made = call(trainer.client.address, "CreateCheckpoint", {"wait": True}, service)
    assert made["path"].endswith(f"step-{int(made['step']):010d}")
    stop_step = int(call(trainer.client.address, "Stop", {}, service)["step"])
    assert stop_step >= step
    assert trainer.wait() == 0, trainer.output()
    with CheckpointClient(ckpt.address) as c:
        assert c.lookup("tdmpc2", "pendulum-v1-seed1", "latest").checkpoint.step >= stop_step


def test_cli_errors_are_one_line_and_exit_non_zero(tmp_path):
    for args, expected in (
        (["--task", "NoSuchTask-v0"], "rewind: error: task: 'NoSuchTask-v0' is not a known Gymnasium environment"),
        (["--steps", "0"], "rewind: error: steps: must be a positive integer, got 0"),
        (["--agent", "num_sampels=8"], "rewind: error: agent.num_sampels: not a hyperparameter of the agent"),
    ):
        proc = subprocess.run([sys.executable, "-m", "rewind_cli", "train", "--port", "-1", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(expected)


def test_yaml_settings_are_overridden_by_flags(tmp_path):
    from rewind_cli.main import build_parser
    from rewind_cli.train import settings_from_args

    config = tmp_path / "run.yaml"
    config.write_text("task: Pendulum-v1\nsteps: 500\nlearning-rate: 0.001\nagent: {num_samples: 64}\n"
                      "checkpoint_interval_episodes: 5\n")
    args = build_parser().parse_args(["train", "--config", str(config), "--steps", "700", "--agent",
                                      "num_elites=8", "--no-mpc"])
    settings, explicit = settings_from_args(args)
    assert (settings.steps, settings.learning_rate, settings.checkpoint_interval_episodes) == (700, 1e-3, 5)
    assert settings.agent == {"num_samples": 64, "num_elites": 8} and settings.mpc is False
    assert explicit == {"task", "steps", "learning_rate", "agent", "checkpoint_interval_episodes", "mpc"}
    assert dataclasses.replace(settings, steps=500) != settings


def test_rewind_train_function_runs_the_trio_locally(tmp_path, monkeypatch):
    import rewind

    monkeypatch.chdir(tmp_path)
    result = rewind.train(local_services=True, store=f"file://{tmp_path}/store", model_size="tiny", steps=30,
                          seed_steps=30, eval_episodes=0, agent={"batch_size": 8}, port=-1, progress=False)
    assert result.step == 30 and result.checkpoint.endswith("step-0000000030")
    manifest = json.loads((Path(result.checkpoint.removeprefix("file://")) / "manifest.json").read_text())
    assert manifest["step"] == 30


def test_local_services_give_the_buffer_service_the_trainers_store_endpoints(monkeypatch):
    from rewind_trainer import connections

    started = []

    class Recorded:
        def __init__(self, args, wait=True):
            started.append(args)
            raise RuntimeError("stop here")

    monkeypatch.setattr(connections, "LocalService", Recorded)
    settings = TrainSettings(local_services=True, store_endpoints=("minio:9000", "*.example.com:443"))
    with pytest.raises(RuntimeError, match="stop here"), connections.local_services(settings):
        pass
    assert started == [["buffer", "serve", "--store-endpoints", "minio:9000,*.example.com:443"]]


def test_resuming_another_runs_checkpoint_under_a_new_run_id_starts_a_new_run_that_records_it(file_trio, tmp_path):
    first = train(file_trio.settings(tmp_path / "runs", steps=210))
    second = train(file_trio.settings(tmp_path / "runs", steps=260, run_id="fine-tune", learning_rate=1e-4,
                                      resume_from_checkpoint=first.checkpoint),
                   explicit={"steps", "run_id", "learning_rate", "resume_from_checkpoint"})
    assert (second.step, second.resumed_from, second.settings.run) == (260, first.checkpoint, "fine-tune")
    [made] = file_trio.ckpt.list("tdmpc2", "fine-tune")
    assert made.resumed_from == first.checkpoint and made.step == 260
    changes = json_format.MessageToDict(made.extra)["overrides"][0]["changes"]
    assert changes["learning_rate"] == {"from": 3e-4, "to": 1e-4}
    assert [c.path for c in file_trio.ckpt.list("tdmpc2", "pendulum-v1-seed1")] == [first.checkpoint]
