"""A run's history files (PutRunFile, GetRunFile) on a real checkpoint service, and the trainer's uploader.

The uploader (rewind_trainer.history.RunHistory) is driven here with a
stand-in for the loop's progress; tests/system/test_run_history.py runs it
inside a real training.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rewind import CheckpointClient
from rewind.errors import InvalidArgument, NotFound
from rewind_trainer.history import Progress, RunHistory, recover_metrics
from rewind_trainer.settings import TrainSettings
from tests.support.configs import checkpoint_config

HEADER = b"step,episode,kind,episode_return\n"
METRICS = HEADER + b"200,1,train,-1200.5\n400,2,train,-900.25\n400,2,eval,-850\n"


def status(**changes) -> bytes:
    return json.dumps({"format": "rewind.run-status/1", "state": "running", "step": 400, **changes}).encode()


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def stored(store_url: str, ckpt: CheckpointClient) -> dict[str, bytes]:
    """Every run file of agent/run as the service returns it (absent ones left out)."""
    found = {}
    for name in ("status.json", "metrics.csv"):
        try:
            found[name] = ckpt.get_run_file("agent", "run", name).content
        except NotFound:
            pass
    return found


# -- the RPCs ------------------------------------------------------------------


def test_run_files_are_stored_replaced_and_read_back_beside_the_checkpoints(ckpt, store_url):
    saved = ckpt.save("agent", "run", 400, {"trainer.pt": b"state"}, metrics={"eval_return": -850.0})
    before = datetime.now(UTC) - timedelta(seconds=5)  # the store's clock may be a little behind ours
    path = ckpt.put_run_file("agent", "run", "metrics.csv", METRICS)
    assert path == f"{store_url}/agent/run/history/metrics.csv"
    ckpt.put_run_file("agent", "run", "status.json", status())
    got = ckpt.get_run_file("agent", "run", "metrics.csv")
    assert got.content == METRICS
    assert before <= parse_time(got.modified) <= datetime.now(UTC) + timedelta(seconds=5)
    assert json.loads(ckpt.get_run_file("agent", "run", "status.json").content)["step"] == 400
    ckpt.put_run_file("agent", "run", "status.json", status(state="finished", step=600))  # replaced whole
    assert json.loads(ckpt.get_run_file("agent", "run", "status.json").content) == {
        "format": "rewind.run-status/1", "state": "finished", "step": 600}
    # The checkpoints are untouched: listings, lookups and retention see the same single checkpoint.
    assert [c.path for c in ckpt.list("agent", "run")] == [saved.checkpoint.path]
    assert ckpt.lookup("agent", "run", "latest").checkpoint.step == 400
    [run] = ckpt.list_runs("agent")
    assert (run.checkpoints, run.latest_step) == (1, 400)


def test_a_run_with_only_history_is_a_run_and_its_files_survive_the_staging_sweep(ckpt, ckpt_host):
    ckpt.put_run_file("agent", "fresh", "status.json", status(step=0))
    [run] = ckpt.list_runs("agent")
    assert (run.run_id, run.checkpoints) == ("fresh", 0)
    assert ckpt.get_retention("agent", "fresh").keep_last == 3  # a run that exists, with the default policy
    catalog = ckpt_host.bindings[0].servicer.catalog
    catalog.staging_max_age_s = 0.0
    assert catalog.clean_staging() == 0
    assert json.loads(ckpt.get_run_file("agent", "fresh", "status.json").content)["step"] == 0


def test_an_upload_tells_the_catalogs_listeners_that_the_run_changed(ckpt, ckpt_host):
    from rewind_checkpoint.catalog import CatalogListener

    changed: list[str] = []

    class Seen(CatalogListener):
        def run_changed(self, run) -> None:
            changed.append(str(run))

    ckpt_host.bindings[0].servicer.catalog.add_listener(Seen())  # as the history index does
    ckpt.put_run_file("agent", "run", "metrics.csv", METRICS)
    with pytest.raises(InvalidArgument):
        ckpt.put_run_file("agent", "other", "status.json", b"[]")
    ckpt.get_run_file("agent", "run", "metrics.csv")
    assert changed == ["agent/run"]  # the refused upload and the read changed nothing


def test_a_missing_run_or_file_is_not_found_and_says_what_to_do(ckpt, store_url):
    with pytest.raises(NotFound, match=r"^run_id: no run agent/nope in .*`rewind ckpt ls` lists the runs"):
        ckpt.get_run_file("agent", "nope", "status.json")
    ckpt.save("agent", "run", 10, {"trainer.pt": b"state"})
    with pytest.raises(NotFound, match=r"^name: run agent/run has no metrics.csv yet; its trainer uploads it "
                                       r"with each checkpoint and every heartbeat_interval_s"):
        ckpt.get_run_file("agent", "run", "metrics.csv")


BAD = [
    ("bad agent", dict(agent_id="../x"), InvalidArgument, "agent_id: "),
    ("empty run", dict(run_id=""), InvalidArgument, "run_id: "),
    ("unknown name", dict(name="notes.txt"), InvalidArgument,
     "name: 'notes.txt' is not a run file; expected one of status.json, metrics.csv"),
    ("no name", dict(name=""), InvalidArgument, "name: '' is not a run file"),
    ("a path as name", dict(name="../status.json"), InvalidArgument, "name: '../status.json' is not a run file"),
    ("status not JSON", dict(content=b"{running"), InvalidArgument, "content: status.json is not JSON"),
    ("status a list", dict(content=b"[1, 2]"), InvalidArgument, "content: status.json must be a JSON object, got list"),
    ("unknown state", dict(content=status(state="sleeping")), InvalidArgument,
     "content: status.json's state is 'sleeping'; expected one of running, finished, stopped, preempted, failed"),
    ("no state", dict(content=b'{"step": 1}'), InvalidArgument, "content: status.json's state is None"),
    ("status too big", dict(content=status(message="x" * 70_000)), InvalidArgument,
     f"content: {len(status(message='x' * 70_000))} bytes is over the 64 KiB limit of status.json"),
    ("status not UTF-8", dict(content=b'{"state": "running", "m": "\xff"}'), InvalidArgument,
     "content: status.json is not UTF-8 text (byte 27)"),
    ("metrics without a header", dict(name="metrics.csv", content=b"200,1,train\n"), InvalidArgument,
     "content: metrics.csv must start with a header row whose first column is step, got '200,1,train'"),
    ("metrics empty", dict(name="metrics.csv", content=b""), InvalidArgument,
     "content: metrics.csv must start with a header row"),
]


@pytest.mark.parametrize("case,changes,error,message", BAD, ids=[c[0] for c in BAD])
def test_a_bad_upload_is_refused_naming_the_field_and_the_stored_files_stay(ckpt, store_url, case, changes, error,
                                                                           message):
    ckpt.put_run_file("agent", "run", "status.json", status())
    ckpt.put_run_file("agent", "run", "metrics.csv", METRICS)
    before = stored(store_url, ckpt)
    request = {"agent_id": "agent", "run_id": "run", "name": "status.json", "content": status(state="failed"),
               **changes}
    with pytest.raises(error) as info:
        ckpt.put_run_file(**request)
    assert str(info.value).startswith(message), str(info.value)
    assert stored(store_url, ckpt) == before == {"status.json": status(), "metrics.csv": METRICS}


def test_metrics_up_to_the_size_limit_are_stored_and_one_byte_more_is_refused(tmp_path):
    from rewind_checkpoint.server import serve

    host = serve(checkpoint_config(f"file://{tmp_path}/store", max_message_mb=64))
    try:
        with CheckpointClient(host.address, timeout=60, max_message_bytes=64 * 2**20) as ckpt:
            limit = 32 * 2**20
            full = HEADER + b"0,0,train,1\n" * ((limit - len(HEADER)) // 12)
            full += b"#" * (limit - len(full))
            ckpt.put_run_file("agent", "run", "metrics.csv", full)
            with pytest.raises(InvalidArgument, match=r"^content: 33554433 bytes is over the 32 MiB limit of "
                                                      r"metrics.csv"):
                ckpt.put_run_file("agent", "run", "metrics.csv", full + b"\n")
            assert ckpt.get_run_file("agent", "run", "metrics.csv").content == full
    finally:
        host.stop(grace_s=0.5)


# -- the trainer's uploader (the store makes no difference here: file:// only) ----


@pytest.fixture
def file_ckpt(tmp_path):
    from rewind_checkpoint.server import serve

    host = serve(checkpoint_config(f"file://{tmp_path}/store"))
    with CheckpointClient(host.address, timeout=20.0) as client:
        yield client
    host.stop(grace_s=0.5)


class Loop:
    """A stand-in for the loop's progress: each call is one step further."""

    def __init__(self, checkpoint: str = "") -> None:
        self.step, self.checkpoint = 0, checkpoint

    def __call__(self) -> Progress:
        self.step += 1
        return Progress(self.step, self.step // 200, 125.5, -900.25 if self.step > 1 else float("nan"),
                        float("nan"), self.checkpoint)


def history_of(ckpt: CheckpointClient, tmp_path: Path, interval: float, loop: Loop | None = None,
               metrics: bytes = METRICS) -> RunHistory:
    settings = TrainSettings(agent_id="agent", run_id="run", task="Pendulum-v1", steps=600, action_repeat=2,
                             heartbeat_interval_s=interval)
    path = tmp_path / "metrics.csv"
    path.write_bytes(metrics)
    return RunHistory(ckpt, settings, path, "file:///s/agent/other/step-0000000200", loop or Loop())


def test_the_heartbeat_uploads_every_interval_and_the_end_says_how_the_run_ended(file_ckpt, tmp_path):
    loop = Loop(checkpoint="file:///s/agent/run/step-0000000400")
    history = history_of(file_ckpt, tmp_path, interval=0.05, loop=loop)
    history.start()
    assert history.wait_for_uploads(3, timeout=30)
    beat = json.loads(file_ckpt.get_run_file("agent", "run", "status.json").content)
    assert beat["state"] == "running" and beat["exit_code"] is None and beat["step"] >= 3
    assert history.close("finished", 0, "trained to step 600")
    end = json.loads(file_ckpt.get_run_file("agent", "run", "status.json").content)
    uploads = history.uploads
    assert end == {
        "format": "rewind.run-status/1", "state": "finished", "started": history.started, "updated": end["updated"],
        "heartbeat_interval_s": 0.05, "step": loop.step, "episode": loop.step // 200, "steps": 600,
        "task": "Pendulum-v1", "action_repeat": 2, "agent_id": "agent", "run_id": "run",
        "resumed_from": "file:///s/agent/other/step-0000000200", "checkpoint": "file:///s/agent/run/step-0000000400",
        "steps_per_s": 125.5, "episode_return": -900.25, "eval_return": None, "exit_code": 0,
        "message": "trained to step 600"}
    assert parse_time(history.started) <= parse_time(end["updated"])
    assert file_ckpt.get_run_file("agent", "run", "metrics.csv").content == METRICS
    assert not history.wait_for_uploads(uploads + 1, timeout=0.3)  # the heartbeat is over: no more uploads
    # A save still in flight when the run ended (it failed meanwhile) does not make it "running" again.
    assert not history.upload() and not history.upload_status()
    assert json.loads(file_ckpt.get_run_file("agent", "run", "status.json").content)["state"] == "finished"


def test_with_interval_0_only_explicit_uploads_happen(file_ckpt, tmp_path):
    file_ckpt.save("agent", "run", 1, {"trainer.pt": b"state"})
    history = history_of(file_ckpt, tmp_path, interval=0)
    history.start()
    assert history._thread is None
    with pytest.raises(NotFound):
        file_ckpt.get_run_file("agent", "run", "status.json")
    assert history.upload() and history.uploads == 1
    assert json.loads(file_ckpt.get_run_file("agent", "run", "status.json").content)["step"] == 1
    assert history.upload_status()  # after a commit: the status alone
    assert json.loads(file_ckpt.get_run_file("agent", "run", "status.json").content)["step"] == 2


def test_a_row_being_written_is_left_for_the_next_upload(file_ckpt, tmp_path):
    history = history_of(file_ckpt, tmp_path, interval=0, metrics=METRICS + b"600,3,tra")
    assert history.upload()
    assert file_ckpt.get_run_file("agent", "run", "metrics.csv").content == METRICS


def test_failed_uploads_are_logged_once_per_kind_and_never_raise(file_ckpt, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="rewind_trainer.history")
    history = history_of(file_ckpt, tmp_path, interval=0, metrics=b"no header\n")
    assert not history.upload() and not history.upload()
    # The status still went: only the metrics were refused.
    assert json.loads(file_ckpt.get_run_file("agent", "run", "status.json").content)["state"] == "running"
    from tests.support.processes import free_port

    nowhere = CheckpointClient(f"127.0.0.1:{free_port()}", timeout=2)
    history.client = nowhere
    assert not history.close("failed", 1, "boom")  # never raises, even at the end
    nowhere.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3, warnings  # metrics refused; then metrics and status unreachable: once each
    assert warnings[0].startswith("uploading the run's metrics.csv to the checkpoint service failed: content: "
                                  "metrics.csv must start with a header row")
    assert [w.split(" to the")[0] for w in warnings[1:]] == ["uploading the run's metrics.csv",
                                                             "uploading the run's status.json"]
    assert all("training goes on" in w for w in warnings)


def test_a_resume_recovers_the_stores_metrics_unless_the_local_file_holds_more(file_ckpt, tmp_path):
    settings = TrainSettings(agent_id="agent", run_id="run")
    local = tmp_path / "metrics.csv"
    assert not recover_metrics(file_ckpt, settings, local, 400)  # nothing stored: nothing to recover
    assert not local.exists()
    file_ckpt.put_run_file("agent", "run", "metrics.csv", METRICS)
    local.write_bytes(HEADER)  # an empty disk: MetricsLog wrote only the header
    assert recover_metrics(file_ckpt, settings, local, 400)
    assert local.read_bytes() == METRICS
    more = METRICS.replace(b"400,2,eval,-850\n", b"300,1,train,-1000\n400,2,eval,-850\n")
    local.write_bytes(more)  # an upload failed: the local file holds a row up to the step the store lacks
    assert not recover_metrics(file_ckpt, settings, local, 400)
    assert local.read_bytes() == more
    assert recover_metrics(file_ckpt, settings, local, 200)  # up to step 200 both hold the same row: the store's wins
    assert local.read_bytes() == METRICS


def test_a_resume_drops_the_rows_at_its_step_that_came_after_the_checkpoint(tmp_path):
    from rewind_trainer.metrics import MetricsLog

    log = MetricsLog(tmp_path)
    for step, kind, ret in ((100, "train", -1200.5), (200, "train", -900.25), (200, "eval", -850.0),
                            (300, "train", -700.0)):
        log.write(step=step, episode=step // 100, kind=kind, episode_return=ret)
    text = log.path.read_text()
    log.truncate_after(200)  # a checkpoint after both rows at its step: they stay
    assert [r.split(",")[:3] for r in log.path.read_text().splitlines()[1:]] == [
        ["100", "1", "train"], ["200", "2", "train"], ["200", "2", "eval"]]
    log.path.write_text(text)
    log.truncate_after(200, again=("eval",))  # taken before the evaluation due at its step
    assert [r.split(",")[:3] for r in log.path.read_text().splitlines()[1:]] == [
        ["100", "1", "train"], ["200", "2", "train"]]
    log.path.write_text(text)
    log.truncate_after(200, again=("train", "eval"))  # before the episode ending there was added
    assert [r.split(",")[:3] for r in log.path.read_text().splitlines()[1:]] == [["100", "1", "train"]]
