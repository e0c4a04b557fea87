from __future__ import annotations

import os

# OpenMP threads that wait for work sleep instead of spinning. The suite runs several torch processes
# per core (test workers, the services they start, trainers), and spinning waiters burn the cores the
# others need: three of one training test side by side took 500 s each, against 46 s with this (see
# the testing page of the docs). Set before anything loads torch (and its libgomp); every process a
# test starts inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from rewind import BufferClient
from rewind.buffer.v1 import buffer_pb2_grpc
from rewind.channel import make_channel
from tests.support.configs import SMALL, checkpoint_config

# The container tests build the image and run the compose stack: `make test-deploy` runs them,
# after deploy/test/setup.sh has prepared the engine (`make test` runs everything else).
collect_ignore = [] if os.environ.get("REWIND_TEST_DEPLOY") else ["container"]


@pytest.fixture
def service():
    """A real buffer service on 127.0.0.1 (in this process), small settings."""
    from rewind_buffer.server import serve  # here, not at the top: xdist's controller need not load torch

    host = serve(SMALL.replace(port=0, max_message_mb=4))
    yield host
    host.stop(grace_s=0.5)


@pytest.fixture
def client(service):
    with BufferClient(service.address, "buffer", timeout=10.0, max_message_bytes=4 * 2**20) as c:
        yield c


@pytest.fixture
def seeded(client):
    """A buffer that holds two episodes of 60 steps (slots 0..59 and 60..119, so its schema is fixed)
    and has sampled one batch."""
    from tests.support.episodes import episode

    client.add(episode(0, 60))
    client.add(episode(1, 60))
    client.sample()
    return client


@pytest.fixture
def stub(service):
    channel = make_channel(service.address, max_message_bytes=64 * 2**20)
    yield buffer_pb2_grpc.BufferServiceStub(channel)
    channel.close()


# -- checkpoint service: the same tests on file:// and on a real S3 server ----


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """moto's standalone S3 server on 127.0.0.1, shared by the session."""
    from tests.support.s3 import MotoServer

    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3(moto, monkeypatch):
    """The S3 server, with the standard AWS_* variables pointing at it."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "REWIND_S3_ADDRESSING_STYLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    yield moto
    moto.resume()  # in case a test paused it and failed


@pytest.fixture(params=["file", "s3"])
def store_url(request, tmp_path):
    """A fresh, empty store: a directory, or a new bucket on the S3 server."""
    if request.param == "file":
        return f"file://{tmp_path}/store"
    s3 = request.getfixturevalue("s3")
    return f"s3://{s3.create_bucket()}/rewind"


@pytest.fixture
def ckpt_host(store_url):
    """A real checkpoint service on 127.0.0.1 (in this process) over store_url."""
    from rewind_checkpoint.server import serve as serve_checkpoints

    host = serve_checkpoints(checkpoint_config(store_url))
    yield host
    host.stop(grace_s=0.5)


@pytest.fixture
def ckpt(ckpt_host):
    from rewind import CheckpointClient

    with CheckpointClient(ckpt_host.address, timeout=20.0, max_message_bytes=8 * 2**20) as c:
        yield c


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup`, xdist puts each test's xdist_group into its node id; a pytest or xdist where
    that no longer happens would spread a group over the workers, each rebuilding its services: refuse."""
    if not getattr(config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"xdist_group marks were not applied (e.g. {lost[0]}): this pytest and pytest-xdist "
                                "do not group tests; install the versions of deploy/docker/constraints.txt")
