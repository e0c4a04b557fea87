"""Shards on their own hosts: each buffer service in its own network namespace with its own address (a
veth pair each, made as root), so that nothing assumes loopback. Off loopback that means tokens and TLS
(from `rewind secrets init`, its certificate naming the shards' addresses), and a checkpoint service
whose dial list names the shards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewind import BufferClient, CheckpointClient, ShardedBufferClient, buffer_source
from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.errors import PermissionDenied, Unauthenticated, Unavailable
from rewind.security import ClientSecurity
from tests.support.episodes import episode
from tests.support.processes import ServiceProcess, rewind, wait_for

pytestmark = pytest.mark.xdist_group("test_shards_on_their_own_hosts")

PORT = 50051
SHARDS = 2


def _ip(*args: str, ns: str | None = None) -> None:
    command = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    subprocess.run(command, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def namespaces():
    """(namespace, address) per shard: 10.<net>.<i>.2 inside, the host side 10.<net>.<i>.1."""
    tag = f"{os.getpid() % 100000}"
    net = 200 + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 50
    made = []
    try:
        for i in range(1, SHARDS + 1):
            ns, host_side, ns_side = f"rw{tag}s{i}", f"rw{tag}h{i}", f"rw{tag}n{i}"
            _ip("netns", "add", ns)
            made.append((ns, host_side))
            _ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
            _ip("link", "set", ns_side, "netns", ns)
            _ip("addr", "add", f"10.{net}.{i}.1/24", "dev", host_side)
            _ip("link", "set", host_side, "up")
            _ip("addr", "add", f"10.{net}.{i}.2/24", "dev", ns_side, ns=ns)
            _ip("link", "set", ns_side, "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
        yield [(ns, f"10.{net}.{i}.2") for i, (ns, _) in enumerate(made, start=1)]
    finally:
        for ns, host_side in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", host_side], capture_output=True)


class NamespacedShard:
    """`rewind buffer serve` inside a network namespace, on its own address, with tokens and TLS."""

    def __init__(self, tmp: Path, ns: str, address: str, secrets: Path) -> None:
        self.address = f"{address}:{PORT}"
        port_file = tmp / f"{ns}.port"
        self.log = open(tmp / f"{ns}.log", "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "rewind_cli", "buffer", "serve", "--host", address,
             "--port", str(PORT), "--port-file", str(port_file), "--buffer-size", "20000", "--batch-size", "8",
             "--horizon", "3", "--min-history", "0", "--read-tokens-file", str(secrets / "read.token"),
             "--write-tokens-file", str(secrets / "write.token"), "--tls-cert-file", str(secrets / "tls.crt"),
             "--tls-key-file", str(secrets / "tls.key")], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_file.exists() and port_file.read_text() or self.proc.poll() is not None,
                 f"the shard in {ns} to serve", timeout=120)
        assert self.proc.poll() is None, (tmp / f"{ns}.log").read_text()[-2000:]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def shards(namespaces, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("netns-shards")
    secrets = tmp / "secrets"
    hosts = ",".join(["localhost", "127.0.0.1", *(address for _, address in namespaces)])
    made = rewind("secrets", "init", "--dir", str(secrets), "--hosts", hosts)
    assert made.returncode == 0, made.stderr
    running = [NamespacedShard(tmp, ns, address, secrets) for ns, address in namespaces]
    try:
        yield dict(tmp=tmp, secrets=secrets, addresses=[s.address for s in running])
    finally:
        for shard in running:
            shard.stop()


def security(secrets: Path, token: str = "write.token") -> ClientSecurity:
    return ClientSecurity(token_file=str(secrets / token), tls_ca_file=str(secrets / "ca.crt"))


def test_a_sharded_buffer_across_namespaces_needs_tokens_and_tls(shards):
    secrets, addresses = shards["secrets"], shards["addresses"]
    with ShardedBufferClient(addresses, writer="netns", security=security(secrets)) as sharded:
        sharded.load([episode(e, 12) for e in range(40)])
        held = [BufferClient(a, security=security(secrets, "read.token")).stats().episodes for a in addresses]
        assert sum(held) == 40 and all(held), held  # both hosts hold episodes
        drawn = {int(e) for _ in range(20) for e in (sharded.sample()[0][0, :, 0] // 1000).tolist()}
        assert len(drawn) > 20
    with BufferClient(addresses[0], security=security(secrets, "read.token")) as reader:
        with pytest.raises(PermissionDenied, match="Sample: needs a write token"):
            reader.sample()
    with BufferClient(addresses[0], security=ClientSecurity(tls_ca_file=str(secrets / "ca.crt"))) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.stats()
    with BufferClient(addresses[0], security=ClientSecurity(token_file=str(secrets / "write.token")),
                      timeout=3) as plaintext:
        with pytest.raises(Unavailable):
            plaintext.stats()  # the shard speaks TLS only


def test_the_checkpoint_service_dials_only_the_shards_its_list_names(shards):
    tmp, secrets, addresses = shards["tmp"], shards["secrets"], shards["addresses"]
    calling = {"REWIND_TOKEN_FILE": str(secrets / "write.token"), "REWIND_TLS_CA_FILE": str(secrets / "ca.crt")}
    writer = security(secrets)
    ckpt = ServiceProcess(tmp, "--store", f"file://{tmp}/store", "--buffer-addresses", ",".join(addresses),
                          group="ckpt", env={**os.environ, **calling})
    narrow = ServiceProcess(tmp, "--store", f"file://{tmp}/store", "--buffer-addresses", addresses[0],
                            group="ckpt", env={**os.environ, **calling})
    try:
        sources = [buffer_source(a, "buffer", file=f"shard{i}.snapshot") for i, a in enumerate(addresses)]
        with CheckpointClient(ckpt.address) as client:
            saved = client.save("agent", "netns", 1, {}, buffers=sources).checkpoint
        assert [(b.address, b.file, b.format) for b in saved.buffers] == [
            (a, f"shard{i}.snapshot", "blocks") for i, a in enumerate(addresses)]
        before = [BufferClient(a, security=writer).stats().episodes for a in addresses]
        for address in addresses:
            BufferClient(address, security=writer).reset()
        with CheckpointClient(ckpt.address) as client:
            restored = client.restore_buffers(saved)  # every shard back to the address it came from
        assert sorted(r.address for r in restored) == sorted(addresses)
        assert [BufferClient(a, security=writer).stats().episodes for a in addresses] == before
        with CheckpointClient(narrow.address) as client, pytest.raises(PermissionDenied, match="buffer_addresses"):
            client.save("agent", "netns", 2, {}, buffers=sources)
        with CheckpointClient(narrow.address) as client, pytest.raises(PermissionDenied, match="buffer_addresses"):
            client.restore_buffers(saved, [checkpoint_pb2.BufferTarget(address=addresses[1], buffer="buffer",
                                                                        file="shard1.snapshot")])
    finally:
        ckpt.stop()
        narrow.stop()
