"""A run's history in the store, from real (short) trainings through real services: the status the trainer
keeps in <agent>/<run>/history/status.json, its metrics.csv, lineage across resumes, TensorBoard scalars,
and what `rewind train --local-services` prints.

The trainer runs in this process (as in test_trainer.py), with the tiny agent and a buffer and a
checkpoint service on 127.0.0.1.
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from rewind import CheckpointClient
from rewind.errors import FailedPrecondition
from rewind_buffer.server import serve as serve_buffers
from rewind_buffer.settings import BufferServiceSettings
from rewind_checkpoint.server import serve as serve_checkpoints
from rewind_trainer.agent import TDMPC2
from rewind_trainer.run import TrainResult, train
from rewind_trainer.settings import TrainSettings
from tests.support.configs import checkpoint_config
from tests.support.trainer import AGENT

# Its module-scoped services are built once: every test of the module runs on the same xdist worker.
pytestmark = pytest.mark.xdist_group("test_run_history")

BUFFERS = BufferServiceSettings(buffer_size=20_000, batch_size=8, min_history=0, horizon=3, port=0)
AGENT_ID, RUN_ID = "tdmpc2", "pendulum-v1-seed1"
# Episodes of 100 agent steps (Pendulum's 200 env steps, action repeat 2): a row every 100 steps.
FIRST = dict(steps=300, action_repeat=2, checkpoint_interval_steps=100)


@dataclass
class Trio:
    """A buffer and a checkpoint service in this process over a file:// store; the trainer runs here."""

    tmp: Path

    def __post_init__(self) -> None:
        self.buffers = serve_buffers(BUFFERS)
        self.checkpoints = serve_checkpoints(checkpoint_config(f"file://{self.tmp}/store", max_message_mb=64))
        self.ckpt = CheckpointClient(self.checkpoints.address)

    def settings(self, out_dir: Path, **changes) -> TrainSettings:
        base = dict(model_size="tiny", seed_steps=200, eval_freq=400, eval_episodes=1, agent=AGENT, port=-1,
                    checkpoint_interval_episodes=0, progress=False, buffer_size=20_000, torch_threads=1,
                    buffer_address=self.buffers.address, checkpoint_address=self.checkpoints.address,
                    out_dir=str(out_dir))
        return TrainSettings(**{**base, **changes})

    def status(self, run_id: str = RUN_ID) -> dict:
        return json.loads(self.ckpt.get_run_file(AGENT_ID, run_id, "status.json").content)

    def metrics(self, run_id: str = RUN_ID) -> bytes:
        return self.ckpt.get_run_file(AGENT_ID, run_id, "metrics.csv").content

    def close(self) -> None:
        self.ckpt.close()
        self.buffers.stop(grace_s=0.5)
        self.checkpoints.stop(grace_s=0.5)


@dataclass
class First:
    """The module's first run, and what the store held right after it (later tests resume it)."""

    result: TrainResult
    status: dict
    metrics: bytes
    local: bytes
    stored_at_save: list[tuple[int, bytes]]   # (step, the store's metrics.csv) as each Save began


def rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def up_to(data: bytes, step: int) -> list[dict[str, str]]:
    return [r for r in rows(data) if int(r["step"]) <= step]


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    t = Trio(tmp_path_factory.mktemp("history"))
    yield t
    t.close()


@pytest.fixture(scope="module")
def first(trio):
    """A run to step 300 with a checkpoint every 100 steps, TensorBoard on; each Save is watched."""
    seen: list[tuple[int, bytes]] = []
    real = CheckpointClient.save

    def watched(self, agent_id, run_id, step, files, **kwargs):
        seen.append((step, self.get_run_file(agent_id, run_id, "metrics.csv").content))
        return real(self, agent_id, run_id, step, files, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CheckpointClient, "save", watched)
        result = train(trio.settings(trio.tmp / "runs", tensorboard=True, **FIRST))
    local = (result.run_dir / "metrics.csv").read_bytes()
    return First(result, trio.status(), trio.metrics(), local, seen)


def test_a_finished_run_leaves_its_status_and_every_metrics_row_in_the_store(first):
    result, status = first.result, first.status
    assert (result.step, result.exit_code, result.stopped) == (300, 0, False)
    assert result.checkpoint.endswith("step-0000000300")
    assert status == {
        "format": "rewind.run-status/1", "state": "finished", "started": status["started"],
        "updated": status["updated"], "heartbeat_interval_s": 30.0, "step": 300, "episode": result.episode,
        "steps": 300, "task": "Pendulum-v1", "action_repeat": 2, "agent_id": AGENT_ID, "run_id": RUN_ID,
        "resumed_from": "", "checkpoint": result.checkpoint, "steps_per_s": status["steps_per_s"],
        "episode_return": status["episode_return"], "eval_return": result.eval_return, "exit_code": 0,
        "message": "trained to step 300"}
    assert status["started"] < status["updated"] and status["steps_per_s"] > 0
    table = rows(first.local)
    assert [(r["step"], r["kind"]) for r in table] == [("100", "train"), ("200", "train"), ("300", "train"),
                                                       ("300", "eval")]
    assert result.episode == 3 and status["episode_return"] == pytest.approx(float(table[2]["episode_return"]),
                                                                              rel=1e-5)
    assert float(table[3]["episode_return"]) == pytest.approx(result.eval_return, rel=1e-5)
    assert first.metrics == first.local  # byte for byte


def test_a_checkpoint_at_the_last_step_carries_the_final_evaluation_and_so_does_best(trio, first):
    """The interval (100) divides the steps (300): the checkpoint at 300 comes after the episode ending there
    and the final evaluation, so its record, and the history pages' "best", have the final figure."""
    result = first.result
    url = f"http://127.0.0.1:{trio.checkpoints.http_port}/api/training-runs/{AGENT_ID}/{RUN_ID}"
    with urllib.request.urlopen(url, timeout=30) as response:
        best = json.loads(response.read())["best"]
    assert best == {"metric": "eval_return", "mode": "max", "value": result.eval_return, "step": 300,
                    "path": result.checkpoint}
    assert result.eval_return == first.status["eval_return"]
    assert float(rows(first.local)[-1]["episode_return"]) == pytest.approx(result.eval_return, rel=1e-5)
    found = trio.ckpt.lookup(which=result.checkpoint).checkpoint
    assert (found.step, found.episode, found.metrics["eval_return"]) == (300, result.episode, result.eval_return)


def test_each_save_began_once_the_store_held_every_metrics_row_before_its_step(first):
    """A checkpoint at an episode's end comes before that episode's row (the loop adds the episode after
    the boundary), so rows at the step itself may or may not be there yet; every earlier one is."""
    steps = [step for step, _ in first.stored_at_save]
    assert steps[0] == 100 and steps[-1] == 300 and len(steps) >= 3
    table = rows(first.local)
    for step, stored in first.stored_at_save:
        assert up_to(stored, step - 1) == up_to(first.local, step - 1), step
        assert rows(stored) == table[:len(rows(stored))]  # the local file as it was then: a prefix of it
    assert len(up_to(first.stored_at_save[-1][1], 299)) == 2  # rows at 100 and 200 before the final Save


def test_tensorboard_holds_the_scalars_of_every_metrics_row_at_environment_steps(first):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = first.result.run_dir / "tensorboard"
    events = EventAccumulator(str(folder))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows(first.local):
        for name, value in row.items():
            if name not in ("step", "episode", "kind", "episode_steps") and value != "":
                expected.setdefault(f"{row['kind']}/{name}", []).append((int(row["step"]) * 2, float(value)))
    assert {"train/episode_return", "eval/episode_return", "train/steps_per_s", "train/total_loss",
            "train/consistency_loss"} <= set(scalars)
    assert set(scalars) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert scalars["eval/episode_return"] == [(600, pytest.approx(first.result.eval_return, rel=1e-5))]


def test_a_resume_on_an_empty_disk_recovers_the_whole_metrics_history_from_the_store(trio, first, tmp_path):
    again = train(trio.settings(tmp_path / "empty", steps=350, action_repeat=2, checkpoint_interval_steps=100,
                                resume_from_checkpoint="latest"),
                  explicit={"steps", "resume_from_checkpoint", "out_dir"})
    assert (again.resumed_from, again.step) == (first.result.checkpoint, 350)
    local = (again.run_dir / "metrics.csv").read_bytes()
    assert again.run_dir == tmp_path / "empty" / AGENT_ID / RUN_ID
    before, table = rows(first.local), rows(local)
    assert table[:2] == before[:2]  # the rows at 100 and 200, which only the store still had
    # The checkpoint at 300, the run's last step, was taken after the episode ending there was added and the
    # final evaluation ran: their rows come from the store, and the resumed run's own evaluation is at 350.
    assert [(r["step"], r["kind"]) for r in table] == [("100", "train"), ("200", "train"), ("300", "train"),
                                                       ("300", "eval"), ("350", "eval")]
    assert table[:4] == before
    assert float(table[4]["episode_return"]) == pytest.approx(again.eval_return, rel=1e-5)
    assert trio.metrics() == local
    status = trio.status()
    assert (status["state"], status["step"], status["resumed_from"], status["checkpoint"]) == (
        "finished", 350, first.result.checkpoint, again.checkpoint)


def test_a_resume_into_a_new_run_id_is_a_new_run_that_records_the_checkpoint_it_came_from(trio, first, tmp_path):
    origin = first.result.checkpoint
    second = train(trio.settings(tmp_path / "runs", steps=340, action_repeat=2, run_id="fine-tune",
                                 checkpoint_interval_steps=20, learning_rate=1e-4, resume_from_checkpoint=origin),
                   explicit={"steps", "run_id", "learning_rate", "checkpoint_interval_steps", "resume_from_checkpoint"})
    made = trio.ckpt.list(AGENT_ID, "fine-tune")
    assert [c.step for c in made] == [320, 340]
    assert [c.resumed_from for c in made] == [origin, origin]
    status = trio.status("fine-tune")
    assert (status["state"], status["run_id"], status["step"], status["resumed_from"], status["checkpoint"]) == (
        "finished", "fine-tune", 340, origin, second.checkpoint)
    assert second.checkpoint == made[-1].path
    # The new run's history starts after the checkpoint (which holds the episode ending at 300 and the
    # evaluation there: their rows are the original run's); the original's is its own.
    table = rows(trio.metrics("fine-tune"))
    assert [(r["step"], r["kind"]) for r in table] == [("340", "eval")]
    assert trio.status(RUN_ID)["run_id"] == RUN_ID


class Interrupt:
    """Asks for a stop at the 50th update of the seed steps' burst, as SIGTERM or the Stop call would."""

    def __init__(self, how: str, control=None) -> None:
        self.how, self.calls, self.control = how, 0, control

    def __call__(self, real):
        def counted(agent, *batch):
            self.calls += 1
            if self.calls == 50:
                if self.how == "SIGTERM":
                    signal.raise_signal(signal.SIGTERM)  # through the trainer's own handler (the main thread)
                else:
                    self.control.request_stop("the Stop call")  # what TrainerService.Stop does
            return real(agent, *batch)
        return counted


@pytest.mark.parametrize("how,state,exit_code", [("SIGTERM", "preempted", 143), ("Stop", "stopped", 143)])
def test_a_run_cut_short_says_how_in_its_status(trio, tmp_path, monkeypatch, how, state, exit_code):
    from rewind_trainer.service import Control

    control = Control()
    monkeypatch.setattr(TDMPC2, "update", Interrupt(how, control)(TDMPC2.update))
    run_id = f"cut-{how.lower()}"
    result = train(trio.settings(tmp_path / "runs", steps=600, run_id=run_id, preempt_exit_code=143,
                                 heartbeat_interval_s=0), handle_signals=True, control=control)
    assert (result.stopped, result.exit_code, result.step) == (True, exit_code, 201)
    status = trio.status(run_id)
    assert (status["state"], status["exit_code"], status["step"], status["checkpoint"]) == (
        state, exit_code, 201, result.checkpoint)
    assert status["heartbeat_interval_s"] == 0
    reason = "SIGTERM at step 201: checkpointed and stopped" if how == "SIGTERM" else \
        "stopped at step 201 by the Stop call"
    assert status["message"].startswith(reason)
    assert trio.metrics(run_id) == (result.run_dir / "metrics.csv").read_bytes()


def test_an_exception_in_training_is_recorded_as_failed_and_raised_unchanged(trio, tmp_path, monkeypatch):
    def broken(agent, *batch):
        raise RuntimeError("the GPU fell off")

    monkeypatch.setattr(TDMPC2, "update", broken)
    with pytest.raises(RuntimeError, match="^the GPU fell off$"):
        train(trio.settings(tmp_path / "runs", steps=600, run_id="broken"))
    status = trio.status("broken")
    assert (status["state"], status["exit_code"], status["message"]) == ("failed", 1,
                                                                         "RuntimeError: the GPU fell off")
    assert status["step"] == 201 and status["checkpoint"] == ""  # it died in the burst, before any checkpoint


def test_without_tensorboard_installed_the_error_is_one_line_and_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an install without the extra sees
    with pytest.raises(FailedPrecondition) as info:
        train(TrainSettings(tensorboard=True, out_dir=str(tmp_path), checkpoint_address="127.0.0.1:1", port=-1))
    assert str(info.value) == ("tensorboard: the tensorboard package is not installed; pip install "
                               "'rewind[tensorboard]', or train without --tensorboard")
    assert not any(tmp_path.iterdir())  # said before anything was written


def test_local_services_print_the_history_page_and_how_to_browse_it_again(tmp_path):
    store = f"file://{tmp_path}/store"
    proc = subprocess.run(
        [sys.executable, "-m", "rewind_cli", "train", "--local-services", "--store", store, "--model-size", "tiny",
         "--steps", "30", "--seed-steps", "30", "--eval-episodes", "0", "--agent", "batch_size=8", "--port", "-1",
         "--no-progress", "--torch-threads", "1", "--out-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = re.search(r"training history: (http://127\.0\.0\.1:\d+)/runs/tdmpc2/pendulum-v1-seed1$", proc.stderr,
                     re.MULTILINE)
    assert page, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"browse it again: rewind ckpt web --store {store}"
    status = json.loads(Path(tmp_path / "store/tdmpc2/pendulum-v1-seed1/history/status.json").read_text())
    assert (status["state"], status["step"]) == ("finished", 30)
