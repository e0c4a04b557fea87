"""The checkpoint service against hostile input: links out of a file store, stale S3 uploads,
unknown runs, and dials to addresses a client chose.

Each refusal has its own status, names the field or key, says nothing about
what lies behind it, and changes nothing.
"""

from __future__ import annotations

import os
import time

import grpc
import pytest

from rewind import CheckpointClient
from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.errors import InvalidArgument, NotFound, PermissionDenied, RewindError, Unavailable
from rewind_checkpoint.catalog import Catalog
from rewind_checkpoint.dials import DEFAULT_BUFFER_ADDRESSES, check_dial, is_plain
from rewind_checkpoint.layout import CheckpointKey
from rewind_checkpoint.servicer import CheckpointServicer
from rewind_checkpoint.settings import CheckpointSettings
from rewind_checkpoint.store import FileStore, open_store
from rewind_runtime.settings import load
from tests.support.configs import checkpoint_config
from tests.support.episodes import episode

MiB = 2**20
FILES = {"model.pt": b"weights", "optim.pt": b"optimizer"}
# Where the links point. No test name contains it, so a message that shows it leaked the target.
ELSEWHERE = "zz-elsewhere"


def denied(info: pytest.ExceptionInfo) -> str:
    """The message of a PERMISSION_DENIED, after checking the code."""
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED, info.value
    return info.value.message


def snapshot(folder) -> dict[str, bytes]:
    """Every file under a folder and its bytes (links not followed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.fixture
def file_ckpt(tmp_path):
    """A checkpoint service on file://<tmp>/store, its client, the store's root and a folder outside it."""
    from rewind_checkpoint.server import serve

    host = serve(checkpoint_config(f"file://{tmp_path}/store"))
    outside = tmp_path / ELSEWHERE
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not the service's to read")
    with CheckpointClient(host.address, timeout=20.0) as client:
        yield client, tmp_path / "store", outside
    host.stop(grace_s=0.5)


# -- file:// never follows a link ----------------------------------------------


def test_a_linked_file_in_a_checkpoint_is_not_downloaded(file_ckpt, tmp_path):
    ckpt, root, outside = file_ckpt
    c = ckpt.save("agent", "run-1", 1, FILES).checkpoint
    model = root / "agent" / "run-1" / "step-0000000001" / "model.pt"
    model.unlink()
    model.symlink_to(outside / "secret.txt")
    before = snapshot(outside)

    for call in (lambda: ckpt.download(c.path, tmp_path / "out"), lambda: ckpt.read(c, "model.pt")):
        with pytest.raises(RewindError) as info:
            call()
        message = denied(info)
        assert "agent/run-1/step-0000000001/model.pt" in message and "never follows links" in message
        assert ELSEWHERE not in message and "secret" not in message
    assert not (tmp_path / "out" / "model.pt").exists()
    assert snapshot(outside) == before and model.is_symlink()


@pytest.mark.parametrize("linked", ["agent", "agent/run-1"])
def test_save_and_set_retention_through_a_linked_folder_write_nothing_outside(file_ckpt, linked):
    ckpt, root, outside = file_ckpt
    (root / linked).parent.mkdir(parents=True, exist_ok=True)
    (root / linked).symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)

    with pytest.raises(RewindError) as info:
        ckpt.save("agent", "run-1", 1, FILES)
    assert "agent/run-1/step-0000000001/" in denied(info) and ELSEWHERE not in info.value.message
    with pytest.raises(RewindError) as info:
        ckpt.set_retention("agent", "run-1", keep_last=1)
    assert "agent/run-1/retention.json" in denied(info)
    assert snapshot(outside) == before
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]  # not even an empty folder


@pytest.mark.parametrize(("run", "linked", "points_to"), [
    ("run-1", "agent/run-1/step-0000000002", "run/step-0000000002"),  # a linked checkpoint folder
    ("run-2", "agent/run-2", "run"),                                    # a linked run folder
])
def test_delete_through_a_link_is_refused_and_the_files_outside_stay(file_ckpt, run, linked, points_to):
    ckpt, root, outside = file_ckpt
    ckpt.save("agent", "run-1", 1, FILES)
    # A committed-looking checkpoint outside the store: a copy of a real one.
    real = root / "agent" / "run-1" / "step-0000000001"
    copy = outside / "run" / "step-0000000002"
    copy.mkdir(parents=True)
    for f in real.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (root / linked).symlink_to(outside / points_to, target_is_directory=True)
    before = snapshot(outside)

    with pytest.raises(RewindError) as info:
        ckpt.delete(f"agent/{run}/2")
    assert f"agent/{run}/step-0000000002/manifest.json" in denied(info) and ELSEWHERE not in info.value.message
    assert snapshot(outside) == before
    assert [c.step for c in ckpt.list("agent", "run-1")] == [1]  # the link is not a checkpoint of the run


def test_lookups_and_listings_skip_links(file_ckpt):
    ckpt, root, outside = file_ckpt
    ckpt.save("agent", "run-1", 1, FILES)
    (root / "agent" / "run-1" / "step-0000000009").symlink_to(outside, target_is_directory=True)
    (root / "agent" / "linked-run").symlink_to(outside, target_is_directory=True)
    assert [(r.run_id, r.checkpoints) for r in ckpt.list_runs()] == [("run-1", 1)]
    assert ckpt.lookup("agent", "run-1", "latest").checkpoint.step == 1
    with pytest.raises(RewindError) as info:
        ckpt.list("agent", "linked-run")
    assert "agent/linked-run/" in denied(info)


def test_the_sweep_never_deletes_through_a_link(tmp_path):
    root, outside = tmp_path / "store", tmp_path / ELSEWHERE
    stale = {"step-0000000001/model.pt": b"staging of a crash", "step-0000000001/optim.pt": b"o"}
    for name, data in stale.items():  # uncommitted and (by the clock below) old: what the sweep removes
        (outside / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        (outside / "run" / name).write_bytes(data)
    (outside / "file.bin").write_bytes(b"a file outside")
    store = FileStore(root)
    store.put("agent/run-1/step-0000000002/optim.pt", b"a real stale upload")
    (root / "agent" / "run-1" / "step-0000000002" / "model.pt").symlink_to(outside / "file.bin")
    (root / "agent" / "run-1" / "step-0000000003").symlink_to(outside / "run" / "step-0000000001")
    (root / "agent" / "linked-run").symlink_to(outside / "run")
    before = snapshot(outside)

    catalog = Catalog(store, staging_max_age_s=3600, clock=lambda: time.time() + 7200)
    assert catalog.clean_staging() == 1  # the real stale file, nothing else
    assert snapshot(outside) == before
    assert [o.key for o in store.list("")] == []
    assert (root / "agent" / "run-1" / "step-0000000002" / "model.pt").is_symlink()  # not followed, left alone


def test_the_file_store_refuses_links_and_odd_keys_itself(tmp_path):
    store = FileStore(tmp_path / "store")
    outside = tmp_path / ELSEWHERE
    outside.mkdir()
    (outside / "f").write_bytes(b"outside")
    (tmp_path / "store" / "dir").symlink_to(outside, target_is_directory=True)
    (tmp_path / "store" / "file").symlink_to(outside / "f")
    os.mkfifo(tmp_path / "store" / "fifo")
    for call in (lambda: store.get("file"), lambda: store.get("dir/f"), lambda: store.put("dir/new", b"x"),
                 lambda: store.put("file", b"x"), lambda: store.delete(["dir/f"]), lambda: store.delete(["file"]),
                 lambda: store.list("dir/"), lambda: store.list_dirs("dir/"), lambda: store.get("fifo")):
        with pytest.raises(PermissionDenied) as info:
            call()
        assert ELSEWHERE not in info.value.message
    assert sorted(p.name for p in outside.iterdir()) == ["f"] and (outside / "f").read_bytes() == b"outside"
    assert store.list("") == [] and store.list_dirs("") == []
    for key in ("../x", "a/../../x", "a//b", "./x"):
        with pytest.raises(InvalidArgument, match="store key"):
            store.get(key)


# -- the sweep aborts stale multipart uploads (S3) -------------------------------


def _begin(client, bucket: str, key: str) -> str:
    """A multipart upload with one part, never finished: what a killed service leaves."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"part of a crashed save")
    return upload_id


def _pending(client, bucket: str) -> set[str]:
    return {u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_the_sweep_aborts_stale_multipart_uploads_and_keeps_fresh_ones(s3):
    bucket, client = s3.create_bucket(), s3.client()
    store = open_store(f"s3://{bucket}/rewind", timeout_s=2.0, retries=2)
    ours = "rewind/agent/run-1/step-0000000001/model.pt"  # a run with no object at all yet
    not_ours = {"rewind-old/agent/run-1/step-0000000001/model.pt", "rewind/notes/big.bin", "rewind/a/..b/step-1/x"}
    for key in (ours, *not_ours):
        _begin(client, bucket, key)
    # moto reports one fixed Initiated time for every upload, so the clock is set from it.
    [begun] = {u.initiated for u in store.pending_uploads("")}

    assert Catalog(store, staging_max_age_s=3600, clock=lambda: begun + 3599).clean_staging() == 0  # still fresh
    assert _pending(client, bucket) == {ours, *not_ours}
    assert Catalog(store, staging_max_age_s=3600, clock=lambda: begun + 3600).clean_staging() == 1  # stale
    assert _pending(client, bucket) == not_ours


def test_the_sweep_keeps_the_multipart_upload_of_a_save_in_progress(s3):
    bucket, client = s3.create_bucket(), s3.client()
    store = open_store(f"s3://{bucket}/rewind", timeout_s=2.0, retries=2, part_bytes=5 * MiB)
    catalog = Catalog(store, staging_max_age_s=0, clock=lambda: time.time() + 7200)
    key = CheckpointKey.checked("agent", "run-1", 1)
    catalog.begin_upload(key)
    writer = store.open_writer(key.file_key("model.pt"))
    writer.write(os.urandom(6 * MiB))  # past one part: the multipart upload is open
    try:
        assert catalog.clean_staging() == 0
        assert _pending(client, bucket) == {f"rewind/{key.file_key('model.pt')}"}
    finally:
        writer.abort()
        catalog.end_upload(key)
    assert _pending(client, bucket) == set()


def test_many_stale_uploads_are_all_aborted_across_pages(s3, monkeypatch):
    bucket, client = s3.create_bucket(), s3.client()
    store = open_store(f"s3://{bucket}/rewind", timeout_s=2.0, retries=2)
    for step in range(3):
        for _ in range(2):  # two uploads of one key: pages continue after a (key, upload id) pair
            _begin(client, bucket, f"rewind/agent/run-1/step-000000000{step}/model.pt")
    real, calls = store.client.list_multipart_uploads, []

    def two_per_page(**kwargs):
        """S3's paging, which moto leaves out: uploads after (KeyMarker, UploadIdMarker), two at a time."""
        calls.append(kwargs)
        uploads = sorted(real(Bucket=kwargs["Bucket"], Prefix=kwargs["Prefix"])["Uploads"],
                         key=lambda u: (u["Key"], u["UploadId"]))
        after = (kwargs.get("KeyMarker", ""), kwargs.get("UploadIdMarker", ""))
        rest = [u for u in uploads if (u["Key"], u["UploadId"]) > after]
        page = {"Uploads": rest[:2], "IsTruncated": len(rest) > 2}
        if page["IsTruncated"]:
            page.update(NextKeyMarker=rest[1]["Key"], NextUploadIdMarker=rest[1]["UploadId"])
        return page

    monkeypatch.setattr(store.client, "list_multipart_uploads", two_per_page)
    assert len({u.upload_id for u in store.pending_uploads("")}) == 6
    assert len(calls) == 3
    assert Catalog(store, staging_max_age_s=0).clean_staging() == 6
    assert _pending(client, bucket) == set()


# -- GetRetention of an unknown run ----------------------------------------------


def test_get_retention_of_an_unknown_run_is_not_found_and_of_a_known_one_its_policy(ckpt, ckpt_host):
    store = ckpt_host.bindings[0].servicer.catalog.store
    with pytest.raises(NotFound, match="run_id: no run agent/nope"):
        ckpt.get_retention("agent", "nope")
    assert store.list("") == []

    ckpt.save("agent", "run-1", 1, FILES)  # checkpoints, no policy of its own: the default
    assert ckpt.get_retention("agent", "run-1").keep_last == 3
    ckpt.set_retention("agent", "run-2", keep_last=7)  # a policy set before the first checkpoint
    assert ckpt.get_retention("agent", "run-2").keep_last == 7


# -- dials only to allowed buffer services ---------------------------------------

REFUSED = ("{field}: this address is not an allowed buffer service "
           "(the checkpoint service's buffer_addresses setting)")
NOT_ALLOWED = ["unix:/tmp/x", "unix-abstract:rewind", "unix:50051", "buffer.example.com:50051", "10.0.0.1:50051",
               "127.0.0.1:1,10.0.0.1:2", "ipv4:127.0.0.1:50051", "ipv6:[::1]:50051", "dns:///127.0.0.1:50051",
               "dns:127.0.0.1:50051", "127.0.0.1:50051/x", "127.0.0.1:0", "127.0.0.1:65536", " 127.0.0.1:50051",
               "127.0.0.1", "[::1]:50051", "127.0.0.1.example.com:50051"]


@pytest.mark.parametrize("address", NOT_ALLOWED)
def test_a_dial_outside_the_allow_list_is_refused_alike_and_writes_nothing(ckpt, ckpt_host, address):
    store = ckpt_host.bindings[0].servicer.catalog.store
    with pytest.raises(RewindError) as info:
        ckpt.save("agent", "run-1", 1, FILES, buffers=[(address, "buffer")])
    assert denied(info) == REFUSED.format(field="buffers[0].address")
    assert store.list("") == []

    c = ckpt.save("agent", "run-1", 2, FILES).checkpoint
    before = [(o.key, o.version) for o in store.list("")]
    target = checkpoint_pb2.BufferTarget(address=address, buffer="buffer", file="model.pt")
    with pytest.raises(RewindError) as info:
        ckpt.restore_buffers(c, [target])
    assert denied(info) == REFUSED.format(field="targets[0].address")
    assert [(o.key, o.version) for o in store.list("")] == before


def test_an_allowed_address_that_does_not_answer_is_only_not_reachable(ckpt, ckpt_host):
    # Nothing listens on port 1; the checkpoint service itself is a gRPC server, but no buffer service.
    for address in ("127.0.0.1:1", ckpt_host.address):
        with pytest.raises(Unavailable) as info:
            ckpt.save("agent", "run-1", 1, FILES, buffers=[(address, "buffer")])
        assert info.value.message == f"buffers[0].address: the buffer service at {address} is not reachable"
    c = ckpt.save("agent", "run-1", 2, FILES).checkpoint
    with pytest.raises(Unavailable) as info:
        ckpt.restore_buffers(c, [checkpoint_pb2.BufferTarget(address="127.0.0.1:1", buffer="b", file="model.pt")])
    assert info.value.message == "targets[0].address: the buffer service at 127.0.0.1:1 is not reachable"
    assert [c.step for c in ckpt.list("agent", "run-1")] == [2]


def _save_requests(address: str) -> list[checkpoint_pb2.SaveRequest]:
    header = checkpoint_pb2.SaveHeader(agent_id="agent", run_id="run-1", step=1,
                                       buffers=[checkpoint_pb2.BufferSource(address=address, buffer="buffer")])
    return [checkpoint_pb2.SaveRequest(header=header), checkpoint_pb2.SaveRequest(commit=checkpoint_pb2.Commit())]


def test_the_allow_list_setting_decides(service, client, tmp_path):
    client.add(episode(0, 40))
    store = FileStore(tmp_path / "store")
    elsewhere = CheckpointServicer(Catalog(store), buffer_addresses=("buffer.internal:50051",))
    with pytest.raises(PermissionDenied, match=r"^buffers\[0\]\.address: this address is not an allowed"):
        elsewhere.Save(iter(_save_requests(service.address)), None)
    assert store.list("") == []
    port = service.address.rsplit(":", 1)[1]
    exact = CheckpointServicer(Catalog(store), buffer_addresses=("buffer.internal:50051", f"LOCALHOST:{port}"))
    saved = exact.Save(iter(_save_requests(f"localhost:{port}")), None)
    assert [b.episodes_added for b in saved.checkpoint.buffers] == [1]


@pytest.mark.parametrize(("address", "allowed"), [
    ("buffer:50051", ("buffer:50051",)),
    ("buffer.rewind.svc.cluster.local:50051", ("*.rewind.svc.cluster.local:50051",)),
    ("Buffer.Rewind.svc.cluster.local:50051", ("*.rewind.svc.cluster.local:50051",)),
    ("127.0.0.1:65535", DEFAULT_BUFFER_ADDRESSES),
    ("localhost:50051", DEFAULT_BUFFER_ADDRESSES),
    ("[::1]:50051", ("[::1]:*",)),
    ("my_buffer:50051", ("my_buffer:5005?",)),
])
def test_allowed_dials(address, allowed):
    assert check_dial(address, allowed, "f") == address


@pytest.mark.parametrize(("address", "allowed"), [
    ("rewind.svc.cluster.local:50051", ("*.rewind.svc.cluster.local:50051",)),
    ("evil.example.com:50051", ("*.rewind.svc.cluster.local:50051",)),
    ("buffer.rewind.svc.cluster.local:50052", ("*.rewind.svc.cluster.local:50051",)),
    ("unix:50051", ("*:50051",)),
    ("dns:50051", ("*:*",)),
    ("a:1,b:2", ("*",)),
    ("::1:50051", ("*",)),
    ("[::1]:50051", ("[::2]:*",)),
    ("127.0.0.1:50051", ()),
])
def test_refused_dials(address, allowed):
    with pytest.raises(PermissionDenied) as info:
        check_dial(address, allowed, "f")
    assert info.value.message == REFUSED.format(field="f")


@pytest.mark.parametrize("address", ["unix:50051", "DNS:50051", "ipv4:50051", "127.0.0.1:50051?x", "a..b:1", "-a:1"])
def test_addresses_grpc_would_read_another_way_are_not_plain(address):
    assert not is_plain(address)


def test_the_allow_list_is_a_setting():
    loaded = load(CheckpointSettings, environ={"REWIND_BUFFER_ADDRESSES": "buffer:50051, *.svc.cluster.local:50051"})
    assert loaded.settings.buffer_addresses == ("buffer:50051", "*.svc.cluster.local:50051")
    assert CheckpointSettings().buffer_addresses == ("127.0.0.1:*", "localhost:*")
