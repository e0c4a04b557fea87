"""The training-history JSON API on a real checkpoint service (its HTTP port), on file:// and on S3 (moto).

Checkpoints are saved through the real gRPC Save and history files through PutRunFile,
as the trainer does; every answer is checked value by value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from rewind import CheckpointClient
from rewind.commands import resume_command
from rewind_checkpoint.history.curve import learning_curve, nice_ticks
from rewind_checkpoint.history.index import RunIndex
from rewind_checkpoint.history.model import parse_metrics
from rewind_checkpoint.layout import CheckpointKey, RunKey
from rewind_checkpoint.manifest import FileEntry, Manifest, now_rfc3339
from rewind_checkpoint.server import serve as serve_checkpoints
from rewind_checkpoint.store import open_store
from tests.support.auth import READ_TOKEN, WRITE_TOKEN, make_tokens
from tests.support.configs import checkpoint_config

METRICS_CSV = (
    "step,episode,kind,episode_return,episode_steps,steps_per_s\n"
    "100,1,train,-1200.5,100,50.0\n"
    "200,2,train,-1100.25,100,51.5\n"
    "200,2,eval,-1000,,\n"
    "300,3,train,-900,100,52\n"
    "400,4,train,-700.5,100,52\n"
    "400,4,eval,-650.5,,\n"
)


def get(base: str, path: str, token: str = "", basic: bool = False, method: str = "GET") -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request; errors are answers too."""
    request = urllib.request.Request(base + path, method=method, headers={"Accept": "application/json"})
    if token:
        credentials = base64.b64encode(f"me:{token}".encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}" if basic else f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


def ok(base: str, path: str, **kwargs) -> dict:
    status, body, _ = get(base, path, **kwargs)
    assert status == 200, (path, body)
    return body


def base_of(host) -> str:
    return f"http://127.0.0.1:{host.http_port}"


def index_of(host) -> RunIndex:
    catalog = host.bindings[0].servicer.catalog
    return next(listener for listener in catalog.listeners if isinstance(listener, RunIndex))


def stamp(delta_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def status_json(state: str, **fields) -> bytes:
    body = {"format": "rewind.run-status/1", "state": state, "started": stamp(-60), "updated": stamp(),
            "heartbeat_interval_s": 30, "step": 400, "episode": 4, "steps": 1000, "task": "Pendulum-v1",
            "action_repeat": 2, "resumed_from": "", "checkpoint": "", "steps_per_s": 52.0,
            "episode_return": -700.5, "eval_return": -650.5, "exit_code": None, "message": "", **fields}
    return json.dumps(body).encode()


def files_for(step: int) -> dict[str, bytes]:
    return {"model.pt": hashlib.sha256(str(step).encode()).digest() * (step % 7 + 3), "optim.pt": b"o" * step}


def settings_for(store_url: str) -> dict:
    return {"local_services": True, "store": store_url, "action_repeat": 2, "task": "Pendulum-v1", "steps": 1000}


@pytest.fixture
def http(ckpt_host):
    return base_of(ckpt_host)


@pytest.fixture
def trained(ckpt, ckpt_host, store_url):
    """A run with three checkpoints, a status and a metrics history, as the trainer leaves them."""
    config = {"settings": settings_for(store_url), "agent_config": {"horizon": 3}}
    saved = [ckpt.save("tdmpc2", "run-1", step, files_for(step), episode=step // 100, config=config,
                       metrics={"eval_return": ret, "episode_return": ret - 50})
             for step, ret in ((200, -1000.0), (300, -620.0), (400, -650.5))]
    ckpt.put_run_file("tdmpc2", "run-1", "metrics.csv", METRICS_CSV.encode())
    ckpt.put_run_file("tdmpc2", "run-1", "status.json", status_json("running"))
    return [s.checkpoint for s in saved], config


# -- values ---------------------------------------------------------------------


def test_runs_list_summarises_each_run(http, trained):
    checkpoints, _ = trained
    [run] = ok(http, "/api/training-runs")["runs"]
    assert run == {
        "agent_id": "tdmpc2", "run_id": "run-1", "state": "running", "state_message": "", "task": "Pendulum-v1",
        "latest_step": 400, "latest_episode": 4,
        "best": {"metric": "eval_return", "mode": "max", "value": -620.0, "step": 300, "path": checkpoints[1].path},
        "checkpoints": 3, "total_bytes": sum(c.total_bytes for c in checkpoints),
        "last_commit": checkpoints[-1].created, "updated": run["updated"],
        "url": "/api/training-runs/tdmpc2/run-1", "page": "/runs/tdmpc2/run-1",
    }
    assert ok(http, "/api/training-runs?agent_id=tdmpc2")["runs"] == [run]
    assert ok(http, "/api/training-runs?agent_id=other")["runs"] == []


def test_run_detail_has_the_committed_checkpoints_and_resume_commands(http, trained, store_url):
    checkpoints, config = trained
    run = ok(http, "/api/training-runs/tdmpc2/run-1")
    assert run["checkpoint_paths"] == [{"episode": c.episode, "step": c.step, "path": c.path} for c in checkpoints]
    assert [c["path"] for c in run["checkpoints"]] == [c.path for c in checkpoints]
    assert all(c["path"].startswith(store_url) for c in run["checkpoints"])
    for row, saved in zip(run["checkpoints"], checkpoints, strict=True):
        assert row["resume_command"] == resume_command(config["settings"], saved.path)
        assert row["resume_command"].endswith(f"--resume-from-checkpoint {saved.path}")
        assert (row["created"], row["total_bytes"], row["metrics"]) == (saved.created, saved.total_bytes,
                                                                         dict(saved.metrics))
    assert run["status"] == json.loads(status_json("running").decode()) | {"updated": run["status"]["updated"],
                                                                          "started": run["status"]["started"]}
    assert run["retention"] == {"keep_last": 3, "keep_every": 0, "keep_best": 0, "metric": "", "mode": "max"}
    assert run["config"] == config
    assert (run["lineage"], run["resumed_from"], run["action_repeat"], run["problems"]) == ([], "", 2, [])


def test_seed_003s_run_id_only_address_finds_the_run_and_names_the_agents_when_ambiguous(ckpt, http, trained):
    # Seed 003: requests.get(f".../api/training-runs/{run_id}").json()["checkpoint_paths"]
    checkpoints, _ = trained
    run = ok(http, "/api/training-runs/run-1")
    assert run == ok(http, "/api/training-runs/tdmpc2/run-1")
    assert [(c["episode"], c["path"]) for c in run["checkpoint_paths"]] == [(c.episode, c.path) for c in checkpoints]
    status, body, _ = get(http, "/api/training-runs/no-such-run")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    assert body["error"]["message"].startswith("run_id: no run 'no-such-run' in ")
    assert body["error"]["message"].endswith("; GET /api/training-runs lists them")
    ckpt.save("other-agent", "run-1", 100, {"a.bin": b"x"})
    status, body, _ = get(http, "/api/training-runs/run-1")
    assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT"
    assert body["error"]["message"].startswith("run_id: 'run-1' is a run of 2 agents (other-agent, tdmpc2)")
    # Seed 003's page address leads to the runs list.
    request = urllib.request.Request(http + "/training")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.url == http + "/" and b"run-1" in response.read()


def test_checkpoint_detail_has_files_with_sizes_and_sha256(http, trained):
    checkpoints, config = trained
    c = ok(http, "/api/training-runs/tdmpc2/run-1/checkpoints/300")
    assert c["files"] == [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                          for n, d in files_for(300).items()]
    assert (c["step"], c["episode"], c["path"], c["metrics"]) == (300, 3, checkpoints[1].path,
                                                                  {"eval_return": -620.0, "episode_return": -670.0})
    assert c["config"] == config and c["extra"] == {} and c["buffers"] == []
    assert c["versions"]["checkpoint_format"] == "rewind.checkpoint/1" and c["versions"]["torchrl"]
    assert c["retention"]["kept_by"] == ["keep_last"]
    assert ok(http, "/api/training-runs/tdmpc2/run-1/checkpoints/step-0000000300") == c


def test_metrics_history_has_env_steps(http, trained):
    body = ok(http, "/api/training-runs/tdmpc2/run-1/metrics")
    assert body["action_repeat"] == 2
    assert body["columns"] == ["step", "episode", "kind", "episode_return", "episode_steps", "steps_per_s", "env_step"]
    assert len(body["rows"]) == 6
    assert body["rows"][2] == {"step": 200, "episode": 2, "kind": "eval", "episode_return": -1000.0,
                               "episode_steps": None, "steps_per_s": None, "env_step": 400}
    assert [r["env_step"] for r in body["rows"]] == [200, 400, 400, 600, 800, 800]


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_states_from_status_json_and_a_stale_heartbeat(ckpt, http):
    cases = {"fresh": status_json("running"), "done": status_json("finished", exit_code=0),
             "sigterm": status_json("preempted", exit_code=143, message="SIGTERM"),
             "ctrl-c": status_json("stopped"), "crash": status_json("failed", message="ValueError: boom"),
             "silent": status_json("running", updated=stamp(-91), heartbeat_interval_s=30),
             "no-beat": status_json("running", updated=stamp(-3600), heartbeat_interval_s=0)}
    for run_id, content in cases.items():
        ckpt.put_run_file("a", run_id, "status.json", content)
    ckpt.save("a", "saved-by-hand", 1, {"x": b"1"})
    runs = {r["run_id"]: (r["state"], r["state_message"]) for r in ok(http, "/api/training-runs")["runs"]}
    silent = json.loads(cases["silent"])["updated"]
    assert runs == {"fresh": ("running", ""), "done": ("finished", ""), "sigterm": ("preempted", "SIGTERM"),
                    "ctrl-c": ("stopped", ""), "crash": ("failed", "ValueError: boom"),
                    "silent": ("failed", f"no heartbeat since {silent} (the trainer reports every 30s)"),
                    "no-beat": ("running", ""),
                    "saved-by-hand": ("unknown", runs["saved-by-hand"][1])}
    assert "no status.json" in runs["saved-by-hand"][1]
    # A run with a status and no checkpoint yet is a run (the trainer's first heartbeat).
    run = ok(http, "/api/training-runs/a/fresh")
    assert (run["checkpoints"], run["checkpoint_paths"], run["latest_step"], run["best"]) == ([], [], None, None)


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_best_follows_the_retention_metric_and_mode(ckpt, http):
    for step, loss in ((1, 0.5), (2, 0.2), (3, 0.9)):
        ckpt.save("a", "r", step, {"x": b"1"}, metrics={"loss": loss, "eval_return": -loss},
                  retention={"keep_last": 0, "metric": "loss", "mode": "min"})
    [run] = ok(http, "/api/training-runs")["runs"]
    assert {k: run["best"][k] for k in ("metric", "mode", "value", "step")} == {"metric": "loss", "mode": "min",
                                                                                "value": 0.2, "step": 2}
    c = ok(http, "/api/training-runs/a/r/checkpoints/1")
    assert c["retention"]["kept_by"] == ["keep_last=0"]


def test_lineage_follows_resumed_from_across_runs_and_stops_at_a_cycle(ckpt, http):
    a = [ckpt.save("agent", "run-a", s, {"x": b"a"}).checkpoint for s in (100, 200)]
    b = [ckpt.save("agent", "run-b", 200, {"x": b"b"}, resumed_from=a[1].path).checkpoint,
         ckpt.save("agent", "run-b", 300, {"x": b"b"}, resumed_from=a[1].path).checkpoint]
    c = ckpt.save("agent", "run-c", 300, {"x": b"c"}, resumed_from=b[1].path).checkpoint
    lineage = ok(http, "/api/training-runs/agent/run-c")["lineage"]
    assert [(x["agent_id"], x["run_id"], x["step"], x["path"], x["exists"]) for x in lineage] == [
        ("agent", "run-b", 300, b[1].path, True), ("agent", "run-a", 200, a[1].path, True)]
    assert ok(http, "/api/training-runs/agent/run-c")["resumed_from"] == b[1].path
    detail = ok(http, f"/api/training-runs/agent/run-c/checkpoints/{c.step}")
    assert [x["run_id"] for x in detail["lineage"]] == ["run-b", "run-a"]
    assert ok(http, "/api/training-runs/agent/run-a")["lineage"] == []
    # Two runs each resumed from the other: the chain stops where a run repeats.
    x_path, y_path = (a[0].path.replace("run-a/step-0000000100", f"{run}/step-0000000001")
                      for run in ("run-x", "run-y"))
    ckpt.save("agent", "run-x", 1, {"x": b"x"}, resumed_from=y_path)
    ckpt.save("agent", "run-y", 1, {"x": b"y"}, resumed_from=x_path)
    cycle = ok(http, "/api/training-runs/agent/run-x")["lineage"]
    assert [(x["run_id"], x.get("cycle", False)) for x in cycle] == [("run-y", False), ("run-x", True)]


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_errors_are_json_with_the_matching_status_naming_the_field(http, trained):
    cases = {
        "/api/training-runs/tdmpc2/nope": (404, "NOT_FOUND", "run_id: no run tdmpc2/nope"),
        "/api/training-runs/nobody/run-1/metrics": (404, "NOT_FOUND", "run_id: no run nobody/run-1"),
        "/api/training-runs/tdmpc2/run-1/checkpoints/999": (
            404, "NOT_FOUND", "step: tdmpc2/run-1/step-0000000999 has no committed checkpoint (committed steps: "
                              "200, 300, 400)"),
        "/api/training-runs/..bad/run-1": (400, "INVALID_ARGUMENT", "agent_id: "),
        "/api/training-runs/tdmpc2/-x": (400, "INVALID_ARGUMENT", "run_id: "),
        "/api/training-runs/tdmpc2/run-1/checkpoints/latest": (400, "INVALID_ARGUMENT", "step: 'latest' is not"),
        "/api/training-runs/tdmpc2/run-1/checkpoints/99999999999": (400, "INVALID_ARGUMENT", "step: 99999999999"),
        "/api/training-runs?agent_id=a%20b": (400, "INVALID_ARGUMENT", "agent_id: "),
    }
    for path, (status, code, message) in cases.items():
        got_status, body, headers = get(http, path)
        assert (got_status, body["error"]["code"]) == (status, code), (path, body)
        assert body["error"]["message"].startswith(message), (path, body)
        assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_tokens_guard_the_api_and_a_read_token_is_enough(store_url, tmp_path):
    tokens = make_tokens(tmp_path / "tokens")
    host = serve_checkpoints(checkpoint_config(store_url, read_tokens_file=tokens.read_file,
                                               write_tokens_file=tokens.write_file))
    try:
        with CheckpointClient(host.address, timeout=20, security=tokens.write) as client:
            client.save("a", "r", 1, {"x": b"1"})
        http = base_of(host)
        for token in ("", "not-a-token"):
            status, body, headers = get(http, "/api/training-runs", token=token)
            assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED")
            assert 'Basic realm="rewind"' in headers["www-authenticate"]
        for basic in (False, True):  # Bearer for programs, Basic (any user, the token as password) for browsers
            assert [r["run_id"] for r in ok(http, "/api/training-runs", token=READ_TOKEN, basic=basic)["runs"]] == ["r"]
            assert ok(http, "/api/training-runs/a/r", token=READ_TOKEN, basic=basic)["checkpoints"][0]["step"] == 1
        # A browser: the login prompt (Basic) on an HTML page, then the pages with the token as password.
        page = urllib.request.Request(http + "/runs/a/r", headers={"Accept": "text/html,*/*"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(page, timeout=30)
        assert refused.value.code == 401 and refused.value.headers["content-type"].startswith("text/html")
        assert 'Basic realm="rewind"' in refused.value.headers.get_all("www-authenticate")
        page.add_header("Authorization", "Basic " + base64.b64encode(f"me:{READ_TOKEN}".encode()).decode())
        with urllib.request.urlopen(page, timeout=30) as answer:
            assert answer.status == 200 and 'data-step="1"' in answer.read().decode()
        status, body, _ = get(http, "/api/training-runs/a/r", token=READ_TOKEN, method="DELETE")
        assert (status, body["error"]["code"]) == (403, "PERMISSION_DENIED")
        status, body, _ = get(http, "/api/training-runs/a/r", token=WRITE_TOKEN, method="DELETE")
        assert status == 405  # a write token passes, and the API has no DELETE
    finally:
        host.stop(grace_s=0.5)


# -- the cache and the store ------------------------------------------------------------


def test_commits_and_deletes_through_the_service_show_at_the_next_call(ckpt, ckpt_host, http):
    index = index_of(ckpt_host)
    index.ttl_s = 3600.0  # only the catalog's notice can make the next answer fresh
    first = ckpt.save("a", "r", 1, {"x": b"1"}, retention={"keep_last": 2}).checkpoint
    assert [c["step"] for c in ok(http, "/api/training-runs/a/r")["checkpoints"]] == [1]
    fetches = index.fetches
    second = ckpt.save("a", "r", 2, {"x": b"2"}).checkpoint
    assert ok(http, "/api/training-runs/a/r")["checkpoint_paths"] == [
        {"episode": 0, "step": 1, "path": first.path}, {"episode": 0, "step": 2, "path": second.path}]
    assert index.fetches == fetches  # the committed manifest came with the notice: no GET
    ckpt.delete(first)
    assert [c["step"] for c in ok(http, "/api/training-runs/a/r")["checkpoints"]] == [2]
    saved = [ckpt.save("a", "r", s, {"x": b"s"}) for s in (3, 4)]  # retention (keep_last 2) deletes step 2
    assert [list(s.deleted) for s in saved] == [[], [second.path]]
    assert [c["step"] for c in ok(http, "/api/training-runs/a/r")["checkpoints"]] == [3, 4]
    ckpt.set_retention("a", "r", keep_last=5)
    assert ok(http, "/api/training-runs/a/r")["retention"]["keep_last"] == 5


def test_another_writer_is_seen_after_the_ttl(ckpt, ckpt_host, http, store_url):
    index = index_of(ckpt_host)
    now = [1000.0]
    index.clock = lambda: now[0]
    ckpt.save("a", "r", 1, {"x": b"1"})
    assert len(ok(http, "/api/training-runs/a/r")["checkpoints"]) == 1
    # A second service (another process) commits behind this one's back.
    other = open_store(store_url, create=False)
    manifest = Manifest("a", "r", 2, 0, now_rfc3339(), (FileEntry("x", 0, hashlib.sha256(b"").hexdigest()),))
    other.put(f"{CheckpointKey(RunKey('a', 'r'), 2).prefix}x", b"")
    other.put(CheckpointKey(RunKey("a", "r"), 2).manifest_key, manifest.to_json())
    assert len(ok(http, "/api/training-runs/a/r")["checkpoints"]) == 1  # within the TTL: the cached answer
    now[0] += index.ttl_s
    assert [c["step"] for c in ok(http, "/api/training-runs/a/r")["checkpoints"]] == [1, 2]
    other.delete([o.key for o in other.list(CheckpointKey(RunKey("a", "r"), 1).prefix)])  # as its Catalog.delete
    now[0] += index.ttl_s
    assert [c["step"] for c in ok(http, "/api/training-runs/a/r")["checkpoints"]] == [2]


def test_a_restarted_service_shows_the_same_history(ckpt_host, trained, store_url):
    before = {path: ok(base_of(ckpt_host), path) for path in (
        "/api/training-runs", "/api/training-runs/tdmpc2/run-1", "/api/training-runs/tdmpc2/run-1/metrics",
        "/api/training-runs/tdmpc2/run-1/checkpoints/400")}
    ckpt_host.stop(grace_s=0.5)
    again = serve_checkpoints(checkpoint_config(store_url))
    try:
        for path, body in before.items():
            assert ok(base_of(again), path) == body, path
    finally:
        again.stop(grace_s=0.5)


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_an_unreadable_manifest_or_status_is_reported_and_the_rest_shown(ckpt, ckpt_host, http, store_url):
    good = ckpt.save("a", "r", 2, {"x": b"2"}).checkpoint
    store = open_store(store_url, create=False)
    bad = CheckpointKey(RunKey("a", "r"), 1)
    store.put(bad.file_key("x"), b"1")
    store.put(bad.manifest_key, b"{not json")
    store.put(RunKey("a", "r").history_key("status.json"), b"[1, 2]")
    run = ok(http, "/api/training-runs/a/r")
    assert run["checkpoint_paths"] == [{"episode": 0, "step": 2, "path": good.path}]
    assert [p.split(" ")[0] for p in run["problems"]] == [f"{store_url}/a/r/step-0000000001:",
                                                          f"{store_url}/a/r/history/status.json"]
    assert (run["state"], run["status"]) == ("unknown", None)
    status, body, _ = get(http, "/api/training-runs/a/r/checkpoints/1")
    assert status == 404 and "committed steps: 2" in body["error"]["message"]


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_openapi_lists_the_history_routes(http):
    paths = ok(http, "/openapi.json")["paths"]
    assert {"/api/training-runs", "/api/training-runs/{agent_id}/{run_id}",
            "/api/training-runs/{agent_id}/{run_id}/checkpoints/{step}",
            "/api/training-runs/{agent_id}/{run_id}/metrics"} <= set(paths)
    assert not any(p.startswith("/runs") for p in paths)  # pages are not API


# -- the parts, without a service ------------------------------------------------------


def test_metrics_parsing_skips_cut_rows_and_curve_points_match_rows():
    columns, rows = parse_metrics(METRICS_CSV + "500,5,tr", action_repeat=3)
    assert len(rows) == 6 and columns[-1] == "env_step" and rows[-1]["env_step"] == 1200
    svg = str(learning_curve(rows))
    assert 'data-kind="train" data-points="4"' in svg and 'data-kind="eval" data-points="2"' in svg
    assert "environment steps" in svg and "evaluation return" in svg
    assert "No metrics yet" in str(learning_curve([]))
    assert nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(-1210, -640)[0] <= -1210 and nice_ticks(-1210, -640)[-1] >= -640


# -- after a real training run --------------------------------------------------------------


def test_after_a_real_training_run_and_a_resume(ckpt, ckpt_host, http, tmp_path):
    """A short run of the real trainer (tiny agent, Pendulum), then a resume into a new run id: the API
    shows exactly what the trainer committed and uploaded, and the new run's lineage."""
    from rewind_buffer.server import serve as serve_buffers
    from rewind_buffer.settings import BufferServiceSettings
    from rewind_trainer.run import train
    from rewind_trainer.settings import TrainSettings
    from tests.support.trainer import AGENT

    buffers = serve_buffers(BufferServiceSettings(buffer_size=20_000, batch_size=8, min_history=0, horizon=3, port=0))
    try:
        base = dict(model_size="tiny", seed_steps=200, eval_freq=200, eval_episodes=1, agent=AGENT, port=-1,
                    checkpoint_interval_episodes=0, progress=False, buffer_size=20_000, torch_threads=1,
                    buffer_address=buffers.address, checkpoint_address=ckpt_host.address, out_dir=str(tmp_path))
        first = train(TrainSettings(**base, steps=300, action_repeat=2, checkpoint_interval_steps=100))
        second = train(TrainSettings(**base, steps=340, action_repeat=2, run_id="fine-tune",
                                     checkpoint_interval_steps=20, resume_from_checkpoint=first.checkpoint),
                       explicit={"steps", "run_id", "checkpoint_interval_steps", "resume_from_checkpoint"})
    finally:
        buffers.stop(grace_s=0.5)
    agent, run_id = first.checkpoint.split("/")[-3:-1]  # the run's ids, as the trainer derived them
    runs = {r["run_id"]: r for r in ok(http, f"/api/training-runs?agent_id={agent}")["runs"]}
    assert {k: (r["state"], r["latest_step"]) for k, r in runs.items()} == {run_id: ("finished", 300),
                                                                            "fine-tune": ("finished", 340)}
    committed = ckpt.list(agent, run_id)
    run = ok(http, f"/api/training-runs/{agent}/{run_id}")
    assert run["checkpoint_paths"] == [{"episode": c.episode, "step": c.step, "path": c.path} for c in committed]
    assert committed[-1].path == first.checkpoint
    for row in run["checkpoints"]:
        assert row["resume_command"].endswith(f" --resume-from-checkpoint {row['path']}")
        assert f"--checkpoint-address {ckpt_host.address}" in row["resume_command"]
    stored = ckpt.get_run_file(agent, run_id, "metrics.csv").content.decode().splitlines()
    metrics = ok(http, f"/api/training-runs/{agent}/{run_id}/metrics")
    assert len(metrics["rows"]) == len(stored) - 1 and metrics["action_repeat"] == 2
    assert all(r["env_step"] == 2 * r["step"] for r in metrics["rows"])
    assert {r["kind"] for r in metrics["rows"]} == {"train", "eval"}
    # Its buffers were saved as blocks: the checkpoint page's data says how many, and their bytes.
    detail = ok(http, f"/api/training-runs/{agent}/{run_id}/checkpoints/{committed[-1].step}")
    blocks = {b.buffer: b.blocks for b in committed[-1].buffers}
    assert [(b["buffer"], b["format"], b["blocks"], b["block_bytes"]) for b in detail["buffers"]] == [
        (name, "blocks", len(blocks[name]), sum(k.size for k in blocks[name])) for name in ("buffer", "test_buffer")]
    with urllib.request.urlopen(f"{http}/runs/{agent}/{run_id}/checkpoints/{committed[-1].step}", timeout=30) as page:
        assert f"in {len(blocks['buffer'])} blocks" in page.read().decode()
    fine = ok(http, f"/api/training-runs/{agent}/fine-tune")
    assert fine["resumed_from"] == first.checkpoint
    assert [(x["run_id"], x["step"], x["path"], x["exists"]) for x in fine["lineage"]] == [
        (run_id, 300, first.checkpoint, True)]
    assert fine["checkpoint_paths"][-1]["path"] == second.checkpoint
