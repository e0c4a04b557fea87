"""`rewind ckpt ...`: the README's walk-through, resume commands, one-line errors."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tests.support.processes import ServiceProcess, rewind


@pytest.fixture
def service(tmp_path):
    # The CLI is the same over either store; the S3 paths are covered by the service tests.
    proc = ServiceProcess(tmp_path, "--store", f"file://{tmp_path}/store", group="ckpt")
    yield proc
    proc.stop()


def ok(*args: str) -> str:
    result = rewind(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def error(*args: str) -> str:
    result = rewind(*args)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rewind: error: "), result.stderr
    return lines[0]


def test_save_list_show_latest_download_rm(service, tmp_path):
    addr = ("--address", service.address)
    model, optim = tmp_path / "model.pt", tmp_path / "optim.pt"
    for step in (1000, 2000, 3000, 4000):
        model.write_bytes(f"weights at {step}".encode() * 100)
        optim.write_bytes(f"optimizer at {step}".encode())
        out = ok("ckpt", "save", "tdmpc2/run-1", str(model), str(optim), "--step", str(step), "--episode",
                 str(step // 500), "--metric", f"eval_return={-step / 10}", *addr)
        assert out.startswith("committed ") and "step-" in out
    assert "retention deleted" in out and "step-0000001000" in out  # keep-last 3 by default

    runs = ok("ckpt", "ls", *addr)
    assert "tdmpc2/run-1" in runs and "4,000" in runs and "rewind ckpt ls tdmpc2/run-1" in runs

    listing = ok("ckpt", "ls", "tdmpc2/run-1", *addr)
    resumes = [line.split("resume: ", 1)[1] for line in listing.splitlines() if "resume: " in line]
    assert len(resumes) == 3
    assert resumes[0] == (f"rewind train --checkpoint-address {service.address} --resume-from-checkpoint "
                          f"{resumes[0].rsplit(' ', 1)[1]}")
    assert [r.rsplit("/", 1)[1] for r in resumes] == ["step-0000002000", "step-0000003000", "step-0000004000"]
    assert "eval_return=-200" in listing

    shown = ok("ckpt", "show", "tdmpc2/run-1/latest", *addr)
    assert "step 4,000" in shown and "episode 8" in shown
    assert hashlib.sha256(optim.read_bytes()).hexdigest()[:16] in shown
    assert "written with python " in shown and "checkpoint_format rewind.checkpoint/1" in shown
    assert shown.strip().splitlines()[-1].strip() == f"resume: {resumes[-1]}"

    latest = ok("ckpt", "latest", "tdmpc2/run-1", *addr).splitlines()
    assert latest[0].endswith("tdmpc2/run-1/step-0000004000")
    best = ok("ckpt", "latest", "tdmpc2/run-1", "--best", "eval_return", *addr).splitlines()
    assert best[0].endswith("step-0000002000")

    out_dir = tmp_path / "restore"
    ok("ckpt", "download", "tdmpc2/run-1/4000", "--out", str(out_dir), *addr)
    assert (out_dir / "model.pt").read_bytes() == model.read_bytes()
    assert (out_dir / "optim.pt").read_bytes() == optim.read_bytes()

    assert "deleted" in ok("ckpt", "rm", latest[0], *addr)
    assert ok("ckpt", "latest", "tdmpc2/run-1", *addr).splitlines()[0].endswith("step-0000003000")

    policy = ok("ckpt", "retention", "tdmpc2/run-1", "--keep-last", "5", "--keep-every", "1000", *addr)
    assert "keep_last 5, keep_every 1000" in policy and "next commit" in policy
    assert "keep_last 5" in ok("ckpt", "retention", "tdmpc2/run-1", *addr)
    # A run with no checkpoint yet: its policy can be set ahead, but there is nothing to show.
    assert "keep_last 2" in ok("ckpt", "retention", "tdmpc2/run-2", "--keep-last", "2", *addr)
    assert "keep_last 2" in ok("ckpt", "retention", "tdmpc2/run-2", *addr)
    assert "run_id: no run tdmpc2/run-3" in error("ckpt", "retention", "tdmpc2/run-3", *addr)


def test_errors_are_one_line(service, tmp_path):
    addr = ("--address", service.address)
    assert "run_id" in error("ckpt", "ls", "tdmpc2/..", *addr)
    assert "no run tdmpc2/nope" in error("ckpt", "latest", "tdmpc2/nope", *addr)
    assert "expected AGENT/RUN" in error("ckpt", "latest", "just-one-part", *addr)
    assert "nothing to save" in error("ckpt", "save", "a/r", "--step", "1", *addr)
    assert "not a readable file" in error("ckpt", "save", "a/r", str(tmp_path), "--step", "1", *addr)
    (tmp_path / "f").write_bytes(b"x")
    assert "NAME=NUMBER" in error("ckpt", "save", "a/r", str(tmp_path / "f"), "--step", "1", "--metric", "x", *addr)
    assert "name the step" in error("ckpt", "rm", "a/r/latest", *addr)


def test_unreachable_service_and_bad_store():
    line = error("ckpt", "ls", "--address", "127.0.0.1:1", "--timeout", "2")
    assert "checkpoint service at 127.0.0.1:1 is unavailable" in line
    assert "unsupported URL" in error("ckpt", "serve", "--store", "ftp://x/y", "--port", "0")


def test_missing_bucket_is_one_line(s3):
    assert "does not exist" in error("ckpt", "serve", "--store", "s3://never-created-bucket/x", "--port", "0")


def test_save_buffers_as_blocks_or_whole_and_restore_them(service, tmp_path):
    from rewind import BufferClient
    from rewind_buffer.server import serve
    from tests.support.configs import SMALL
    from tests.support.episodes import episode

    addr = ("--address", service.address)
    buffers = serve(SMALL.replace(port=0))
    try:
        with BufferClient(buffers.address, "buffer") as client:
            for eid in range(4):
                client.add(episode(eid, 40))
            client.using("test_buffer").add(episode(100, 30))
            out = ok("ckpt", "save", "tdmpc2/run-1", "--step", "1", "--buffer", f"{buffers.address}/buffer",
                     "--whole-buffer", f"{buffers.address}/test_buffer", *addr)
            assert out.startswith("committed ")
            shown = ok("ckpt", "show", "tdmpc2/run-1/latest", *addr)
            assert "buffer 'buffer' -> buffer.snapshot" in shown and "blocks/ folder" in shown  # blocks by default
            whole = next(line for line in shown.splitlines() if "'test_buffer'" in line)
            assert "blocks" not in whole  # asked for by name: one self-contained file

            expected = client.sample()
            client.add(episode(4, 40))  # moved on since the checkpoint, and rewound by the restore
            restored = ok("ckpt", "restore-buffers", "tdmpc2/run-1/latest", *addr)
            assert f"restored 'buffer' at {buffers.address}: 4 episodes, 160 transitions, 4 added" in restored
            assert f"restored 'test_buffer' at {buffers.address}: 1 episodes, 30 transitions" in restored
            assert all(torch.equal(a, b) for a, b in zip(client.sample(), expected, strict=True))

            client.reset()
            into = ok("ckpt", "restore-buffers", "tdmpc2/run-1/latest", "--into", f"{buffers.address}/buffer",
                      *addr)
            assert into.count("restored ") == 1 and client.stats().episodes == 4
        line = error("ckpt", "restore-buffers", "tdmpc2/run-1/latest", "--into", "nobuffer", *addr)
        assert "--into: expected HOST:PORT/NAME, got 'nobuffer'" in line
        line = error("ckpt", "save", "tdmpc2/run-1", "--step", "2", "--whole-buffer", "x", *addr)
        assert "--whole-buffer: expected HOST:PORT/NAME, got 'x'" in line
    finally:
        buffers.stop(grace_s=0.5)
