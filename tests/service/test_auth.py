"""Tokens and scopes on every RPC of the buffer and checkpoint services: who gets in, and what they may do.

The trainer service's RPCs are checked against a real run in tests/system/test_secure_trio.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
import torch

from rewind import BufferClient, CheckpointClient
from rewind.buffer.v1 import buffer_pb2
from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from rewind.health import check
from rewind.security import ClientSecurity
from rewind_buffer.server import COLLECTOR_METHODS as BUFFER_COLLECTOR
from rewind_buffer.server import READ_METHODS as BUFFER_READS
from rewind_buffer.server import serve
from rewind_checkpoint.server import COLLECTOR_METHODS as CHECKPOINT_COLLECTOR
from rewind_checkpoint.server import READ_METHODS as CHECKPOINT_READS
from rewind_runtime.auth import is_loopback
from rewind_runtime.host import ServiceHost
from tests.support.auth import COLLECTOR_TOKEN, READ_TOKEN, WRITE_TOKEN, assert_guarded, make_tokens, raw_call
from tests.support.configs import SMALL, checkpoint_config
from tests.support.episodes import episode


@pytest.fixture
def tokens(tmp_path):
    return make_tokens(tmp_path / "tokens")


@pytest.fixture
def guarded(tokens):
    # auth_failure_limit 0: these tests send bad tokens on purpose; the lockout has its own test below.
    host = serve(SMALL.replace(port=0, read_tokens_file=tokens.read_file, write_tokens_file=tokens.write_file,
                               collector_tokens_file=tokens.collector_file, auth_failure_limit=0))
    with BufferClient(host.address, security=tokens.write) as writer:
        writer.add(episode(0, 60))
        writer.add(episode(1, 60))
    yield host
    host.stop(grace_s=0.5)


def buffer_state(address: str, security: ClientSecurity):
    with BufferClient(address, security=security) as c:
        return [(b.name, b.episodes_added, b.transitions, b.batches_sampled, b.settings.buffer_size)
                for b in c.list_buffers()]


def test_every_buffer_rpc_needs_a_token_and_its_scope(guarded, tokens):
    fingerprint = lambda: buffer_state(guarded.address, tokens.write)  # noqa: E731
    answers = assert_guarded(guarded.address, buffer_pb2.DESCRIPTOR.services_by_name["BufferService"],
                             set(BUFFER_READS), fingerprint, collector_methods=set(BUFFER_COLLECTOR))
    assert answers["ListBuffers"] == grpc.StatusCode.OK


def test_every_checkpoint_rpc_needs_a_token_and_its_scope(tokens, tmp_path):
    from rewind_checkpoint.server import serve as serve_checkpoints

    host = serve_checkpoints(checkpoint_config(f"file://{tmp_path}/store").replace(
        read_tokens_file=tokens.read_file, write_tokens_file=tokens.write_file,
        collector_tokens_file=tokens.collector_file, auth_failure_limit=0))
    try:
        with CheckpointClient(host.address, security=tokens.write) as writer:
            writer.save("agent", "run", 10, {"trainer.pt": b"state"}, metrics={"eval_return": 1.0})
        store = Path(tmp_path / "store")

        def fingerprint():
            return sorted((str(p.relative_to(store)), p.read_bytes() if p.is_file() else b"")
                          for p in store.rglob("*"))

        answers = assert_guarded(host.address, checkpoint_pb2.DESCRIPTOR.services_by_name["CheckpointService"],
                                 set(CHECKPOINT_READS), fingerprint, collector_methods=set(CHECKPOINT_COLLECTOR))
        assert answers["ListRuns"] == grpc.StatusCode.OK
        assert answers["GetRunFile"] == grpc.StatusCode.INVALID_ARGUMENT  # let in: an empty request names no run
        with CheckpointClient(host.address, security=tokens.read) as reader:
            assert [c.step for c in reader.list("agent", "run")] == [10]  # the SDK with a read token
            with pytest.raises(PermissionDenied, match="DeleteCheckpoint: needs a write token"):
                reader.delete(reader.list("agent", "run")[0])
            # A run's history: the trainer (a write token) uploads it, the pages and a read token read it.
            with CheckpointClient(host.address, security=tokens.write) as writer:
                writer.put_run_file("agent", "run", "status.json", b'{"state": "running", "step": 10}')
            with pytest.raises(PermissionDenied, match="PutRunFile: needs a write token"):
                reader.put_run_file("agent", "run", "status.json", b'{"state": "failed"}')
            assert reader.get_run_file("agent", "run", "status.json").content == b'{"state": "running", "step": 10}'
        assert [c.step for c in CheckpointClient(host.address, security=tokens.write).list("agent", "run")] == [10]
    finally:
        host.stop(grace_s=0.5)


def test_a_read_token_cannot_sample_nor_move_the_sampler(guarded, tokens):
    # Sampling moves the sampler's generator, so it is a write: a monitor's token must not change what
    # training draws next. A twin service (same seed, same episodes) shows the draws are untouched.
    twin = serve(SMALL.replace(port=0))
    try:
        with BufferClient(twin.address) as writer:
            writer.add(episode(0, 60))
            writer.add(episode(1, 60))
            expected = [writer.sample() for _ in range(2)]
        with BufferClient(guarded.address, security=tokens.read) as reader:
            with pytest.raises(PermissionDenied, match="Sample: needs a write token"):
                reader.sample()
            with pytest.raises(PermissionDenied, match="SampleStream: needs a write token"):
                next(iter(reader.batches(num_batches=1)))
        with BufferClient(guarded.address, security=tokens.write) as writer:
            drawn = [writer.sample() for _ in range(2)]
            assert writer.stats().batches_sampled == 2
        for got, want in zip(drawn, expected, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    finally:
        twin.stop(grace_s=0.5)


def test_the_sdk_names_what_is_missing(guarded, tokens, tmp_path):
    with BufferClient(guarded.address, security=ClientSecurity()) as anonymous:
        with pytest.raises(Unauthenticated, match="needs a bearer token; pass --token-file or set REWIND_TOKEN_FILE"):
            anonymous.stats()
    with BufferClient(guarded.address, security=tokens.read) as reader:
        assert reader.stats().episodes == 2
        with pytest.raises(PermissionDenied, match=r"AddEpisode: needs a write or collector token; this read token "
                                                   r"\(read token #1\) may not call it"):
            reader.add(episode(2, 60))
        assert reader.stats().episodes == 2
    (tmp_path / "empty.token").write_text("\n# nothing\n")
    with BufferClient(guarded.address, security=ClientSecurity(token_file=str(tmp_path / "empty.token"))) as empty:
        with pytest.raises(Unauthenticated, match="empty.token holds no token"):
            empty.stats()


def test_health_and_reflection_stay_open(guarded):
    from rewind.channel import make_channel

    with make_channel(guarded.address, security=ClientSecurity()) as channel:
        assert check(channel) == "SERVING"
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert raw_call(guarded.address, method, (True, True)) not in (grpc.StatusCode.UNAUTHENTICATED,
                                                                   grpc.StatusCode.PERMISSION_DENIED)


def test_a_token_from_the_environment_reaches_every_client(guarded, tokens, monkeypatch):
    monkeypatch.setenv("REWIND_TOKEN_FILE", tokens.write.token_file)
    with BufferClient(guarded.address) as client:
        client.add(episode(2, 60))
        assert client.stats().episodes == 3


def test_tokens_rotate_without_a_restart(guarded, tokens, tmp_path):
    """A rotation: the new token is added next to the old, clients move, then the old line goes."""
    write_tokens = Path(tokens.write_file)
    new = tmp_path / "new.token"
    new.write_text("write-rotated-token-2\n")
    with BufferClient(guarded.address, security=ClientSecurity(token_file=str(new))) as rotated:
        with pytest.raises(Unauthenticated):
            rotated.add(episode(2, 60))
        write_tokens.write_text(f"{WRITE_TOKEN}\nwrite-rotated-token-2\n")
        rotated.add(episode(2, 60))
        with BufferClient(guarded.address, security=tokens.write) as old:
            old.add(episode(3, 60))
            write_tokens.write_text("write-rotated-token-2\n")
            with pytest.raises(Unauthenticated, match="the token is not valid"):
                old.add(episode(4, 60))
        assert rotated.stats().episodes == 4


def test_a_missing_token_file_fails_at_start(tmp_path):
    with pytest.raises(Unauthenticated, match="write tokens file: cannot read .*nope"):
        serve(SMALL.replace(port=0, write_tokens_file=str(tmp_path / "nope")))


def test_no_authentication_is_refused_off_loopback_and_said_on_it(caplog):
    from rewind_buffer.server import SERVICE_NAME

    host = ServiceHost([], host="0.0.0.0", port=0)
    with pytest.raises(FailedPrecondition, match="listening on 0.0.0.0 with no tokens .* --allow-unauthenticated"):
        host.start()
    assert host.port is None  # nothing was bound
    caplog.set_level(logging.WARNING, logger="rewind_runtime.host")
    open_host = serve(SMALL.replace(port=0))
    try:
        assert any("authentication is off: anyone who can reach 127.0.0.1" in r.getMessage() for r in caplog.records)
        assert SERVICE_NAME
    finally:
        open_host.stop(grace_s=0.5)
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.1", "buffer")] == [
        True, True, True, False, False, False]


def test_a_named_collector_token_adds_episodes_only_and_every_refusal_and_write_names_its_caller(guarded, tokens,
                                                                                                    caplog):
    caplog.set_level(logging.DEBUG, logger="rewind_runtime.auth")
    # The collector's client reads the very file the service lists (NAME:TOKEN) and sends the token part only.
    with BufferClient(guarded.address, security=tokens.collector) as collector:
        assert collector.add(episode(2, 60)) == 3
        for call, method in ((collector.stats, "GetStats"), (collector.sample, "Sample"),
                             (lambda: collector.reset(buffer_size=100), "ResetBuffer")):
            with pytest.raises(PermissionDenied, match=rf"{method}: needs a write.* token; this collector token "
                                                       r"\(collector-7\) may not call it"):
                call()
    assert "/rewind.buffer.v1.BufferService/AddEpisode by collector-7" in caplog.text
    assert "refused /rewind.buffer.v1.BufferService/ResetBuffer: ResetBuffer: needs a write token; this collector " \
           "token (collector-7) may not call it" in caplog.text
    with BufferClient(guarded.address, security=tokens.write) as writer:
        assert writer.stats().episodes == 3  # the refused reset changed nothing
        writer.using("other").create()
    assert "/rewind.buffer.v1.BufferService/CreateBuffer by write token #1" in caplog.text
    assert all(token not in caplog.text for token in (COLLECTOR_TOKEN, WRITE_TOKEN, READ_TOKEN))


def test_a_peer_that_keeps_failing_to_authenticate_is_shut_out_whatever_token_it_sends(tokens, caplog):
    from rewind.errors import ResourceExhausted
    from rewind_buffer.server import build

    host, _ = build(SMALL.replace(port=0, http_port=0, read_tokens_file=tokens.read_file,
                                  write_tokens_file=tokens.write_file, auth_failure_limit=3, auth_lockout_s=600))
    host.start()
    try:
        bad = (("authorization", "Bearer not-a-token"),)
        method = "/rewind.buffer.v1.BufferService/ListBuffers"
        codes = [raw_call(host.address, method, (False, False), bad) for _ in range(4)]
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert "shutting out 127.0.0.1 for 600 s: 3 failed authentications within 60 s" in caplog.text
        # A valid token from the same peer gets the same answer now: the lockout tells nothing about tokens.
        with BufferClient(host.address, security=tokens.write) as writer:
            with pytest.raises(ResourceExhausted, match="too many failed authentications from 127.0.0.1 "
                                                        r"\(3 within 60 s\); its calls are refused for another"):
                writer.stats()
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{host.http_port}/metrics",
                                         headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
        with pytest.raises(urllib.error.HTTPError) as answer:  # the HTTP routes share the lockout
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 429
        from rewind.channel import make_channel

        with make_channel(host.address, security=ClientSecurity()) as channel:
            assert check(channel) == "SERVING"  # health stays open
    finally:
        host.stop(grace_s=0)
