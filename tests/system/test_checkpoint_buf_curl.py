"""The checkpoint service through reflection only, as a grpcurl user would (buf curl)."""

from __future__ import annotations

import json

import pytest

from rewind import CheckpointClient
from tests.support.curl import call, curl
from tests.support.processes import ServiceProcess

# Its module-scoped services are built once: every test of the module runs on the same xdist worker.
pytestmark = pytest.mark.xdist_group("test_checkpoint_buf_curl")

SERVICE = "rewind.checkpoint.v1.CheckpointService"
STATUS = b'{"format": "rewind.run-status/1", "state": "finished", "step": 300}'


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckptcurl")
    proc = ServiceProcess(tmp, "--store", f"file://{tmp}/store", group="ckpt")
    with CheckpointClient(proc.address) as ckpt:
        for step, ret in ((100, -400.0), (200, -150.0), (300, -250.0)):
            ckpt.save("tdmpc2", "run-1", step, {"model.pt": b"w" * step}, episode=step // 100,
                      metrics={"eval_return": ret})
        ckpt.put_run_file("tdmpc2", "run-1", "status.json", STATUS)
    yield proc.address
    proc.stop()


def test_list_services_and_describe(address):
    result = curl(address, "--list-services", f"http://{address}")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= {SERVICE, "grpc.health.v1.Health"}
    result = curl(address, "--list-methods", f"http://{address}")
    methods = ("Save", "Download", "ListRuns", "ListCheckpoints", "Lookup", "DeleteCheckpoint", "GetRetention",
               "SetRetention", "PutRunFile", "GetRunFile")
    assert {f"{SERVICE}/{m}" for m in methods} <= set(result.stdout.split())


def test_list_runs_checkpoints_and_lookups_with_json(address):
    [run] = call(address, "ListRuns", {}, SERVICE)["runs"]
    assert (run["agentId"], run["runId"], run["checkpoints"], run["latestStep"]) == ("tdmpc2", "run-1", 3, "300")
    checkpoints = call(address, "ListCheckpoints", {"agentId": "tdmpc2", "runId": "run-1"}, SERVICE)["checkpoints"]
    assert [c["step"] for c in checkpoints] == ["100", "200", "300"]
    assert checkpoints[0]["files"][0]["size"] == "100"
    latest = call(address, "Lookup", {"agentId": "tdmpc2", "runId": "run-1", "latest": True}, SERVICE)
    assert latest["checkpoint"]["path"].endswith("tdmpc2/run-1/step-0000000300")
    best = call(address, "Lookup", {"agentId": "tdmpc2", "runId": "run-1", "best": {"metric": "eval_return"}},
                SERVICE)
    assert best["checkpoint"]["step"] == "200"
    policy = call(address, "GetRetention", {"agentId": "tdmpc2", "runId": "run-1"}, SERVICE)["retention"]
    assert policy["keepLast"] == 3


def test_a_runs_history_files_over_json(address):
    import base64

    got = call(address, "GetRunFile", {"agentId": "tdmpc2", "runId": "run-1", "name": "status.json"}, SERVICE)
    assert base64.b64decode(got["content"]) == STATUS and got["modified"].endswith("Z")
    content = base64.b64encode(b"step,episode,kind,episode_return\n300,3,eval,-250\n").decode()
    put = call(address, "PutRunFile", {"agentId": "tdmpc2", "runId": "run-1", "name": "metrics.csv",
                                       "content": content}, SERVICE)
    assert put["path"].endswith("tdmpc2/run-1/history/metrics.csv") and put["size"] == "49"
    result = curl(address, f"http://{address}/{SERVICE}/PutRunFile",
                  data={"agentId": "tdmpc2", "runId": "run-1", "name": "status.json", "content": content})
    error = json.loads(result.stderr)
    assert error["code"] == "invalid_argument" and error["message"].startswith("content: status.json is not JSON")


def test_errors_come_back_with_their_code(address):
    result = curl(address, f"http://{address}/{SERVICE}/Lookup",
                  data={"agentId": "tdmpc2", "runId": "../etc", "latest": True})
    assert result.returncode != 0
    error = json.loads(result.stderr)
    assert error["code"] == "invalid_argument" and "run_id" in error["message"]
    result = curl(address, f"http://{address}/{SERVICE}/ListCheckpoints", data={"agentId": "tdmpc2", "runId": "x"})
    assert json.loads(result.stderr)["code"] == "not_found"
