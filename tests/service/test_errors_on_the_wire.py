"""One interceptor maps every error of every Rewind RPC: code, message, ErrorInfo reason, no retry."""

from __future__ import annotations

import shutil

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rewind import BufferClient, CheckpointClient
from rewind.buffer.v1 import buffer_pb2
from rewind.errors import ERROR_DOMAIN, Internal, NotFound, StoreUnavailable, Unavailable
from rewind_buffer.server import serve_in_process as buffer_in_process
from rewind_checkpoint.server import serve_in_process as checkpoint_in_process
from tests.support.configs import SMALL, checkpoint_config


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    [detail] = rpc_status.from_call(error).details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    return info


def test_a_client_mistake_carries_its_status_reason_and_no_retry(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetStats(buffer_pb2.GetStatsRequest(buffer="nope"), timeout=5)
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no buffer named 'nope'" in error.details()
    info = error_info(error)
    assert (info.reason, info.domain) == ("NOT_FOUND", ERROR_DOMAIN)
    assert ("grpc-retry-pushback-ms", "-1") in error.trailing_metadata()


def test_the_sdk_raises_the_class_of_the_status_with_its_reason(client):
    with pytest.raises(NotFound) as caught:
        client.using("nope").stats()
    assert caught.value.reason == "NOT_FOUND"


def test_a_bug_in_a_servicer_is_internal_with_no_details_leaked(service, client, monkeypatch):
    registry = service.bindings[0].servicer.registry

    def broken(name):
        raise KeyError("secret internal state")

    monkeypatch.setattr(registry, "get", broken)
    with pytest.raises(Internal) as caught:
        client.stats()
    assert caught.value.message == "internal error (KeyError); the server log has details"
    assert "secret" not in caught.value.message and caught.value.reason == "INTERNAL"
    monkeypatch.undo()
    assert client.stats().name == "buffer"  # the service goes on


def test_a_store_outage_is_told_apart_from_a_service_that_cannot_be_reached(tmp_path):
    root = tmp_path / "store"
    with checkpoint_in_process(settings=checkpoint_config(f"file://{root}")) as ckpt:
        ckpt.save("agent", "run", 1, {"a.bin": b"x"})
        shutil.rmtree(root)
        with pytest.raises(StoreUnavailable) as caught:
            ckpt.list("agent", "run")
        assert caught.value.reason == "STORE_UNAVAILABLE" and caught.value.message.startswith(f"store file://{root}")
    with CheckpointClient("127.0.0.1:1", timeout=2) as gone, pytest.raises(Unavailable) as caught:
        gone.list_runs()
    assert not isinstance(caught.value, StoreUnavailable) and caught.value.reason == ""
    assert caught.value.message.startswith("checkpoint service at 127.0.0.1:1 is unavailable")
    assert caught.value.message.endswith("is it running?")


def test_serve_in_process_returns_a_client_whose_close_stops_the_service():
    client = buffer_in_process(SMALL)
    address = client.address
    assert client.stats().settings.batch_size == SMALL.batch_size
    client.close()
    with BufferClient(address, timeout=10) as after, pytest.raises(Unavailable):
        after.stats()
