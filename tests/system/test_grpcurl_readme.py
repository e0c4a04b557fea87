"""The documented grpcurl block (docs/how-to/grpcurl.md, "Without tokens"), call by call, with grpcurl itself
against a running trio."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from rewind import CheckpointClient
from tests.support.docs import bash_blocks, section
from tests.support.paths import GRPCURL
from tests.support.processes import ServiceProcess
from tests.support.trainer import BUFFER_FLAGS, TrainerProcess

RUN = ("tdmpc2", "pendulum-v1-seed1")


def documented_commands() -> list[list[str]]:
    """The grpcurl commands of the page's "Without tokens" section, in order."""
    block = bash_blocks(section("how-to/grpcurl.md", "Without tokens"))[0]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.startswith("grpcurl ")]


def grpcurl(argv: list[str], addresses: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one documented grpcurl command line, its documented addresses pointed at the test's services."""
    assert argv[:2] == ["grpcurl", "-plaintext"], argv
    args = [addresses.get(a, a) for a in argv[1:]]
    return subprocess.run([str(GRPCURL), *args], capture_output=True, text=True, timeout=60)


def what_is_called(argv: list[str]) -> str:
    """"list", "describe <service>" or the method a documented command calls."""
    rest = [a for a in argv[2:] if not a.startswith("127.0.0.1:")]
    if rest[0] == "-d":
        rest = rest[2:]
    return " ".join(rest)


@pytest.fixture
def trio(tmp_path):
    buffer = ServiceProcess(tmp_path, *BUFFER_FLAGS)
    ckpt = ServiceProcess(tmp_path, "--store", f"file://{tmp_path}/store", group="ckpt")
    trainer = TrainerProcess(tmp_path, buffer.address, ckpt.address, "--steps", "100000")
    try:
        first = trainer.wait_until_step(200)  # a checkpoint exists, and the buffer holds an episode
        yield {"127.0.0.1:50051": buffer.address, "127.0.0.1:50052": ckpt.address,
               "127.0.0.1:50053": f"127.0.0.1:{trainer.port}"}, trainer, ckpt, first
    finally:
        trainer.stop()
        buffer.stop()
        ckpt.stop()


def test_the_documented_grpcurl_commands_work_with_grpcurl(trio):
    addresses, trainer, ckpt, first = trio
    commands = documented_commands()
    assert {a for argv in commands for a in argv if a.startswith("127.0.0.1:")} == set(addresses)
    seen = []
    for argv in commands:
        what = what_is_called(argv)
        result = grpcurl(argv, addresses)
        assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stderr}"
        out = result.stdout
        seen.append(what.rsplit("/", 1)[-1].split()[0])
        if what == "list":
            assert {"rewind.buffer.v1.BufferService", "grpc.health.v1.Health"} <= set(out.split())
        elif what.startswith("describe "):
            service = what.split()[1]
            assert f"{service} is a service:" in out, out
            assert any(f"rpc {m}" in out for m in ("Sample", "Lookup", "Stop")), out
        else:
            check(what, json.loads(out), first, ckpt)
    assert seen == ["list", "describe", "Check", "GetStats", "Sample", "describe", "ListRuns", "ListCheckpoints",
                    "Lookup", "describe", "GetStatus", "CreateCheckpoint", "Stop"]
    assert trainer.proc.wait(timeout=120) == 0  # Stop: checkpoint and exit, as on SIGTERM


def check(method: str, reply: dict, first: int, ckpt: ServiceProcess) -> None:
    """What each call must answer, given a trainer past its first checkpoint at step `first`."""
    name = method.rsplit("/", 1)[-1]
    if name == "Check":
        assert reply == {"status": "SERVING"}
    elif name == "GetStats":
        stats = reply["stats"]
        assert stats["name"] == "buffer" and int(stats["episodes"]) >= 1
        assert int(stats["transitions"]) >= 200 and int(stats["settings"]["batch_size"]) == 8
    elif name == "Sample":
        batch = reply["batch"]
        assert batch["obs"]["shape"] == ["4", "8", "3"]  # horizon 3 + 1, batch 8, Pendulum's observation
        assert batch["action"]["shape"] == ["3", "8", "1"]
    elif name == "ListRuns":
        assert [(r["agent_id"], r["run_id"]) for r in reply["runs"]] == [RUN]
    elif name == "ListCheckpoints":
        assert first in [int(c["step"]) for c in reply["checkpoints"]]
    elif name == "Lookup":
        assert int(reply["checkpoint"]["step"]) >= first
        assert reply["checkpoint"]["path"].endswith(f"{RUN[0]}/{RUN[1]}/step-{int(reply['checkpoint']['step']):010d}")
    elif name == "GetStatus":
        status = reply["status"]
        assert (status["agent_id"], status["run_id"], status["task"]) == (*RUN, "Pendulum-v1")
        assert int(status["step"]) >= first and status["phase"] in ("seeding", "training", "evaluating")
    elif name == "CreateCheckpoint":
        step = int(reply["step"])
        assert step >= first
        with CheckpointClient(ckpt.address) as client:
            assert client.lookup(*RUN, "latest").checkpoint.path == reply["path"]
    elif name == "Stop":
        assert int(reply["step"]) >= first
    else:
        raise AssertionError(f"no check for {method}: add one when the page gains a call")
