"""Drive the running service only through reflection, as a grpcurl user would (buf curl)."""

from __future__ import annotations

import base64

import pytest
import torch

from tests.support.curl import call, curl
from tests.support.episodes import episode
from tests.support.processes import ServiceProcess

# Its module-scoped services are built once: every test of the module runs on the same xdist worker.
pytestmark = pytest.mark.xdist_group("test_buf_curl")

SERVICE = "rewind.buffer.v1.BufferService"


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    proc = ServiceProcess(tmp_path_factory.mktemp("bufcurl"), "--buffer-size", "1000", "--batch-size", "4",
                          "--min-history", "20", "--horizon", "2")
    yield proc.address
    proc.stop()


def wire(t: torch.Tensor) -> dict:
    return {
        "dtype": "DTYPE_FLOAT32",
        "shape": [str(d) for d in t.shape],
        "data": base64.b64encode(t.contiguous().numpy().tobytes()).decode(),
    }


def unwire(msg: dict) -> torch.Tensor:
    raw = bytearray(base64.b64decode(msg["data"]))
    return torch.frombuffer(raw, dtype=torch.float32).view([int(d) for d in msg["shape"]])


def test_list_services_through_reflection(address):
    result = curl(address, "--list-services", f"http://{address}")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= {SERVICE, "grpc.health.v1.Health"}


def test_stats_add_and_sample_with_json(address):
    stats = call(address, "GetStats", {"buffer": "buffer"})["stats"]
    assert stats["name"] == "buffer" and stats["settings"]["bufferSize"] == "1000"
    ep = episode(7, 30)
    fields = {k: wire(v) for k, v in ep.items()}
    added = call(address, "AddEpisode", {"buffer": "buffer", "episode": {"fields": fields}})
    assert added["numEpisodes"] == "1"
    stats = call(address, "GetStats", {"buffer": "buffer"})["stats"]
    assert (stats["transitions"], stats["episodes"], stats["ready"], stats["device"]) == ("30", "1", True, "cpu")

    batch = call(address, "Sample", {"buffer": "buffer"})["batch"]
    obs, action, reward = unwire(batch["obs"]), unwire(batch["action"]), unwire(batch["reward"])
    assert obs.shape == (3, 4, 3) and action.shape == (2, 4, 2) and reward.shape == (2, 4, 1)
    for b in range(4):
        t0 = int(obs[0, b, 0].item()) - 7000
        assert torch.equal(obs[:, b], ep["obs"][t0 : t0 + 3])
        assert torch.equal(action[:, b], ep["action"][t0 + 1 : t0 + 3])
        assert torch.equal(reward[:, b, 0], ep["reward"][t0 + 1 : t0 + 3])


def test_errors_come_back_with_their_code(address):
    result = curl(address, f"http://{address}/{SERVICE}/GetStats", data={"buffer": "nope"})
    assert result.returncode != 0
    assert '"code": "not_found"' in result.stdout + result.stderr
    assert "no buffer named 'nope'" in result.stdout + result.stderr
