"""CheckpointClient: save, list, look up and download checkpoints.

    from rewind import CheckpointClient
    ckpt = CheckpointClient("127.0.0.1:50052")
    saved = ckpt.save("tdmpc2", "run-1", step=1000, files={"model.pt": model_bytes},
                      metrics={"eval_return": -180.0},
                      buffers=[("127.0.0.1:50051", "buffer"), ("127.0.0.1:50051", "test_buffer")])
    found = ckpt.lookup("tdmpc2", "run-1", "latest")      # or "best", a step, or a path
    ckpt.download(found.checkpoint.path, "restore/")

Files of DIRECT_MIN_BYTES or more go through SaveDirect: hashed here once, then, where the
service's store hands out presigned URLs (S3), PUT straight to the store (never through the
service, whose credentials never leave it), to endpoints `store_endpoints` allows only.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc

from rewind import addresses, presigned
from rewind import versions as version_records
from rewind.channel import DEFAULT_MAX_MESSAGE_BYTES
from rewind.checkpoint.v1 import checkpoint_pb2, checkpoint_pb2_grpc
from rewind.endpoints import LOOPBACK
from rewind.errors import DataLoss, Internal, InvalidArgument, PermissionDenied
from rewind.security import ClientSecurity
from rewind.service_client import ServiceClient

DEFAULT_ADDRESS = addresses.CHECKPOINT_ADDRESS
DEFAULT_TIMEOUT_S = 30.0
TRANSFER_TIMEOUT_S = 3600.0
CHUNK_BYTES = 4 * 1024 * 1024
# Files this big or bigger are offered for a direct upload (SaveDirect): PUT straight to the store where it
# presigns, so their bytes make one trip; smaller ones are not worth a second connection.
DIRECT_MIN_BYTES = 1024 * 1024
STORE_ENDPOINTS_SETTING = "store_endpoints"

FileSource = bytes | str | os.PathLike | IO[bytes]
RefLike = str | checkpoint_pb2.CheckpointRef | checkpoint_pb2.Checkpoint


@dataclass(frozen=True)
class Saved:
    """What save() committed, and the checkpoints the run's retention then deleted."""

    checkpoint: checkpoint_pb2.Checkpoint
    deleted: tuple[str, ...]
    # Bytes the save wrote to the store (files, snapshots, new buffer blocks), and bytes of
    # buffer blocks the checkpoint references that the store already held.
    uploaded_bytes: int = 0
    deduplicated_bytes: int = 0
    # Bytes of files this client PUT straight to the store (part of uploaded_bytes): they never
    # passed through the checkpoint service.
    direct_bytes: int = 0


@dataclass(frozen=True)
class RunFile:
    """One of a run's history files (status.json, metrics.csv) and when it was written (RFC 3339 UTC)."""

    content: bytes
    modified: str


@dataclass(frozen=True)
class Found:
    """What lookup() found, and the newer (or better) checkpoints it skipped as corrupt: (path, reason)."""

    checkpoint: checkpoint_pb2.Checkpoint
    skipped: tuple[tuple[str, str], ...]


def buffer_source(address: str, buffer: str, file: str = "", expect_episodes_added: int = 0,
                  capture_id: str = "", blocks: bool = True) -> checkpoint_pb2.BufferSource:
    """A buffer whose snapshot the checkpoint service pulls into the checkpoint.

    Args:
        address: the buffer service's host:port.
        buffer: the buffer's name.
        file: the file name in the checkpoint (default `<buffer>.snapshot`).
        expect_episodes_added: fail unless the buffer has seen exactly this many episodes.
        capture_id: pull this capture (BufferClient.capture) instead of the current state.
        blocks: True (the default) saves it as content-addressed blocks, shared by the run's
            checkpoints: only the blocks the store lacks are uploaded (a second checkpoint after one
            new episode costs a fraction of a percent of the first), and `file` holds the index.
            Restore it with restore_buffers (the file alone is not the buffer). False saves one
            whole, self-contained snapshot file every time, which BufferClient.restore reads.
    """
    return checkpoint_pb2.BufferSource(address=address, buffer=buffer, file=file,
                                       expect_episodes_added=expect_episodes_added, capture_id=capture_id,
                                       blocks=blocks)


def make_ref(ref: RefLike) -> checkpoint_pb2.CheckpointRef:
    """A path (file://, s3:// or agent/run/step-N), a Checkpoint, or a CheckpointRef -> CheckpointRef."""
    if isinstance(ref, checkpoint_pb2.CheckpointRef):
        return ref
    if isinstance(ref, checkpoint_pb2.Checkpoint):
        return checkpoint_pb2.CheckpointRef(path=ref.path)
    if isinstance(ref, str) and ref:
        return checkpoint_pb2.CheckpointRef(path=ref)
    raise InvalidArgument(f"ref: expected a checkpoint path, Checkpoint or CheckpointRef, got {ref!r}")


def _pieces(f: IO[bytes], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """A file's bytes from where it is to its end, CHUNK_BYTES at a time, each reported to `progress`."""
    while chunk := f.read(CHUNK_BYTES):
        yield chunk
        if progress is not None:
            progress(len(chunk))


def _sha256(f: IO[bytes]) -> str:
    """The sha256 of a file's bytes from where it is to its end; it is left where it was."""
    start, digest = f.tell(), hashlib.sha256()
    for chunk in _pieces(f, None):
        digest.update(chunk)
    f.seek(start)
    return digest.hexdigest()


def _open_source(source: FileSource) -> tuple[IO[bytes], int, bool]:
    """(readable file, size, whether we opened it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source), len(source), True
    if isinstance(source, (str, os.PathLike)):
        f = open(source, "rb")
        return f, os.fstat(f.fileno()).st_size, True
    pos = source.tell()
    size = source.seek(0, os.SEEK_END) - pos
    source.seek(pos)
    return source, size, False


class CheckpointClient(ServiceClient):
    """Client of the checkpoint service.

    Args:
        address: "host:port" of the checkpoint service.
        timeout: deadline in seconds for each unary call.
        max_message_bytes: message limit; keep it equal to the service's.
        on_close: called by close() (see ServiceClient).
        security: token and TLS (default: from REWIND_TOKEN_FILE and REWIND_TLS_*).
        store_endpoints: the stores (host:port entries or patterns: minio:9000, *.amazonaws.com:443)
            save() may PUT large files to, and read() and download() GET them from, at the URLs the
            service presigns (default: loopback only). Files for other stores go through the service.

    Failures raise rewind.errors classes: InvalidArgument, NotFound,
    AlreadyExists, DataLoss, Unavailable (naming the service or the store).
    """

    SERVICE = "checkpoint service"

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float = DEFAULT_TIMEOUT_S,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 on_close: Callable[[], None] | None = None, security: ClientSecurity | None = None,
                 store_endpoints: Sequence[str] = LOOPBACK) -> None:
        super().__init__(address, timeout=timeout, max_message_bytes=max_message_bytes, on_close=on_close,
                         security=security)
        self.store_endpoints = tuple(store_endpoints)
        self._stub = checkpoint_pb2_grpc.CheckpointServiceStub(self._channel)

    # -- saving --------------------------------------------------------------

    def save(
        self,
        agent_id: str,
        run_id: str,
        step: int,
        files: Mapping[str, FileSource],
        *,
        episode: int = 0,
        metrics: Mapping[str, float] | None = None,
        config: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        resumed_from: str = "",
        buffers: Sequence[checkpoint_pb2.BufferSource | tuple[str, str]] = (),
        retention: checkpoint_pb2.RetentionPolicy | Mapping[str, Any] | None = None,
        progress: Callable[[int], None] | None = None,
        timeout: float = TRANSFER_TIMEOUT_S,
        versions: Mapping[str, str] | None = None,
        store_endpoints: Sequence[str] | None = None,
    ) -> Saved:
        """Upload files (and buffer snapshots) as one checkpoint, then commit it.

        Args:
            agent_id: the agent (a folder in the store).
            run_id: the run (a folder under the agent).
            step: the environment step; the checkpoint's directory is step-<step>.
            files: file name -> bytes, a path, or a binary file object.
            episode: the episode counter at this step.
            metrics: numbers to rank by (retention's keep_best, lookup's best).
            config: the training config (JSON-like).
            extra: any other JSON-like state.
            resumed_from: path of the checkpoint this run resumed from.
            buffers: buffers for the service to pull: buffer_source(...) or (address, buffer)
                pairs, both saved as blocks unless buffer_source(..., blocks=False) asks for a whole
                snapshot.
            retention: set the run's retention policy with this commit.
            progress: called with the number of bytes of each chunk sent.
            timeout: deadline for the whole upload, seconds.
            versions: the versions the manifest records as the saver's
                (python, torch, tensordict, torchrl, rewind); default: this
                process's (rewind.versions.current()). A resume checks them.
            store_endpoints: the stores this call may PUT files to (default: the client's).

        Files of DIRECT_MIN_BYTES or more are hashed first (a path is then read twice), and PUT
        straight to the store where the service grants it (an S3 store); the rest is streamed.

        Raises:
            InvalidArgument: a bad id, file name or value (nothing is saved).
            AlreadyExists: the step is already committed.
            PermissionDenied: the service granted a direct upload to a store not in store_endpoints
                (nothing is saved).
            Unavailable: the service or its store is down (nothing is saved).
        """
        endpoints = self.store_endpoints if store_endpoints is None else tuple(store_endpoints)
        opened: dict[str, tuple[IO[bytes], int, bool]] = {}
        try:
            for name, src in files.items():
                opened[name] = _open_source(src)
            digests = {name: _sha256(f) for name, (f, size, _) in opened.items() if size >= DIRECT_MIN_BYTES}
            header = checkpoint_pb2.SaveHeader(
                agent_id=agent_id, run_id=run_id, step=step, episode=episode, resumed_from=resumed_from,
                files=[checkpoint_pb2.FileAnnouncement(name=n, size=size, sha256=digests.get(n, ""))
                       for n, (_, size, _) in opened.items()],
                buffers=[b if isinstance(b, checkpoint_pb2.BufferSource) else buffer_source(*b) for b in buffers],
                store_endpoints=endpoints,  # the service grants direct uploads to these stores only
            )
            header.metrics.update(metrics or {})
            header.config.update(dict(config or {}))
            header.extra.update(dict(extra or {}))
            header.versions.update(version_records.current() if versions is None else dict(versions))
            if retention is not None:
                header.retention.CopyFrom(retention if isinstance(retention, checkpoint_pb2.RetentionPolicy)
                                          else checkpoint_pb2.RetentionPolicy(**retention))
            direct = None
            if digests:
                direct = self._save_direct(header, opened, digests, progress, timeout, endpoints)
            if direct is None:  # nothing big, or a service without SaveDirect
                requests = self._file_requests(header, opened, digests, set(), progress)
                direct = self._call(self._stub.Save, requests, timeout), 0
        finally:
            for f, _, ours in opened.values():
                if ours:
                    f.close()
        response, direct_bytes = direct
        return Saved(response.checkpoint, tuple(response.deleted), response.uploaded_bytes,
                     response.deduplicated_bytes, direct_bytes)

    @staticmethod
    def _file_requests(header: checkpoint_pb2.SaveHeader | None, opened: Mapping[str, tuple[IO[bytes], int, bool]],
                       digests: Mapping[str, str], skip: set[str], progress: Callable[[int], None] | None,
                       message: type = checkpoint_pb2.SaveRequest) -> Iterator:
        """The header (unless None), each file not in `skip` as chunks, then the Commit naming every file's
        sha256 (from `digests`, or hashed as it streams), as `message`s (SaveRequest or SaveDirectRequest)."""
        if header is not None:
            yield message(header=header)
        infos = []
        for name, (f, _, _) in opened.items():
            digest = None if name in digests else hashlib.sha256()
            if name not in skip:
                for chunk in _pieces(f, progress):
                    if digest is not None:
                        digest.update(chunk)
                    yield message(chunk=checkpoint_pb2.FileChunk(file=name, data=chunk))
            infos.append(checkpoint_pb2.FileInfo(name=name, sha256=digests[name] if digest is None
                                                 else digest.hexdigest()))
        yield message(commit=checkpoint_pb2.Commit(files=infos))

    def _save_direct(self, header: checkpoint_pb2.SaveHeader, opened: Mapping[str, tuple[IO[bytes], int, bool]],
                     digests: Mapping[str, str], progress: Callable[[int], None] | None, timeout: float,
                     endpoints: tuple[str, ...]) -> tuple[checkpoint_pb2.SaveResponse, int] | None:
        """SaveDirect: the header, the granted files PUT to the store, the rest as chunks, the commit.

        Returns (the response, bytes PUT), or None when the service has no SaveDirect (then nothing was read).
        """
        sent: queue.Queue[set[str] | None] = queue.Queue()  # the names PUT, once they are; None: end the stream

        def requests() -> Iterator[checkpoint_pb2.SaveDirectRequest]:
            yield checkpoint_pb2.SaveDirectRequest(header=header)
            skip = sent.get()  # gRPC's sending thread waits here while this one PUTs
            if skip is not None:
                yield from self._file_requests(None, opened, digests, skip, progress,
                                               message=checkpoint_pb2.SaveDirectRequest)

        call = self._stub.SaveDirect(requests(), timeout=timeout)
        told = False
        try:
            grants = _event(call, "grants").grants.grants
            direct = self._put_files(grants, opened, digests, progress, endpoints)
            sent.put({g.name for g in grants})
            told = True
            response = _event(call, "done").done
            for _ in call:  # to the call's status
                raise Internal("the checkpoint service sent more than one done event")
            return response, direct
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED and not told:
                return None
            raise self._error(exc) from None
        finally:
            if not told:
                sent.put(None)
            call.cancel()  # a no-op once the call ended; otherwise the service aborts the upload

    def _put_files(self, grants: Sequence[checkpoint_pb2.FileGrant], opened: Mapping[str, tuple[IO[bytes], int, bool]],
                   digests: Mapping[str, str], progress: Callable[[int], None] | None,
                   endpoints: tuple[str, ...]) -> int:
        """PUT each granted file to its URL, after checking every URL against `endpoints`; returns the bytes PUT."""
        checked = []
        for g in grants:
            if g.name not in digests:
                raise Internal(f"the checkpoint service granted a direct upload of {g.name!r}, which this save "
                               "did not offer")
            checked.append((g.name, _checked_grant(g, endpoints, "upload")))
        for name, grant in checked:
            f, size, _ = opened[name]
            presigned.put(grant, size, _pieces(f, progress), allowed=endpoints, field_name=f"grant of {name}",
                          setting=STORE_ENDPOINTS_SETTING, timeout_s=self.timeout)
        return sum(opened[name][1] for name, _ in checked)

    # -- finding -------------------------------------------------------------

    def list_runs(self, agent_id: str = "") -> list[checkpoint_pb2.RunSummary]:
        """Every run in the store (or one agent's)."""
        return list(self._call(self._stub.ListRuns, checkpoint_pb2.ListRunsRequest(agent_id=agent_id)).runs)

    def list(self, agent_id: str, run_id: str) -> list[checkpoint_pb2.Checkpoint]:
        """A run's committed checkpoints, oldest commit first."""
        request = checkpoint_pb2.ListCheckpointsRequest(agent_id=agent_id, run_id=run_id)
        return list(self._call(self._stub.ListCheckpoints, request).checkpoints)

    def lookup(self, agent_id: str = "", run_id: str = "", which: str | int = "latest", *, metric: str = "",
               mode: str = "", verify: bool = True, fall_back: bool = False) -> Found:
        """Find the checkpoint to resume from.

        Args:
            agent_id: the agent (not needed when `which` is a path).
            run_id: the run (not needed when `which` is a path).
            which: "latest", "best", a step number, or a checkpoint path.
            metric: for "best": the metric (default: the run's retention metric).
            mode: for "best": "max" or "min" (default: the run's retention mode).
            verify: read every file and check its sha256 (recommended).
            fall_back: for a step or a path: if it fails verification, the
                newest older checkpoint that passes instead (as "latest" does).

        Raises:
            NotFound: no such run, step, or no committed checkpoint yet.
            DataLoss: the named checkpoint (or every one, for latest/best) is corrupt.
        """
        request = checkpoint_pb2.LookupRequest(agent_id=agent_id, run_id=run_id, skip_verify=not verify,
                                               fall_back=fall_back)
        if which == "latest":
            request.latest = True
        elif which == "best":
            request.best.metric, request.best.mode = metric, mode
            request.best.SetInParent()
        elif isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
            request.step = int(which)
        else:
            request.path = which
        response = self._call(self._stub.Lookup, request, timeout=max(self.timeout, TRANSFER_TIMEOUT_S / 6))
        return Found(response.checkpoint, tuple((s.path, s.reason) for s in response.skipped))

    # -- downloading ---------------------------------------------------------

    def download(self, ref: RefLike, dest: str | os.PathLike, *, file: str = "",
                 progress: Callable[[checkpoint_pb2.Checkpoint, int], None] | None = None,
                 timeout: float = TRANSFER_TIMEOUT_S) -> checkpoint_pb2.Checkpoint:
        """Download a checkpoint's files (or one file) into directory `dest`.

        Each file is written under a temporary name and renamed only once its
        sha256 matches, so `dest` never holds a damaged file.

        Args:
            ref: a checkpoint path, Checkpoint or CheckpointRef.
            dest: the directory to write into (created if missing).
            file: one file only (default: all).
            progress: called with (checkpoint, bytes just received) per chunk.
            timeout: deadline for the whole download, seconds.

        Raises:
            NotFound: no such checkpoint or file.
            DataLoss: a stored file failed its checksum (nothing of it is kept).
        """
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        checkpoint = None
        sizes: dict[str, tuple[int, str]] = {}
        current: tuple[str, IO[bytes], Any, str] | None = None

        def finish() -> None:
            name, f, digest, tmp = current
            f.close()
            size, expected = sizes[name]
            if digest.hexdigest() != expected:
                os.unlink(tmp)
                raise DataLoss(f"file {name}: the downloaded bytes fail their sha256 check; try again")
            os.replace(tmp, dest / name)

        try:
            for item in self._download(ref, file, timeout):
                if isinstance(item, checkpoint_pb2.Checkpoint):
                    checkpoint = item
                    sizes = {f.name: (f.size, f.sha256) for f in checkpoint.files}
                    continue
                name, data = item
                if current is None or current[0] != name:
                    if current is not None:
                        finish()
                    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
                    current = (name, os.fdopen(fd, "wb"), hashlib.sha256(), tmp)
                current[1].write(data)
                current[2].update(data)
                if progress is not None:
                    progress(checkpoint, len(data))
            if current is not None:
                finish()
                current = None
        finally:
            if current is not None:
                current[1].close()
                Path(current[3]).unlink(missing_ok=True)
        # Files of size zero send no chunks.
        for name, (size, _) in sizes.items():
            if size == 0 and (not file or file == name):
                (dest / name).write_bytes(b"")
        return checkpoint

    def read(self, ref: RefLike, file: str, timeout: float = TRANSFER_TIMEOUT_S) -> bytes | bytearray:
        """One file's bytes, checked against its sha256 (a bytearray when it came straight from the store)."""
        request = checkpoint_pb2.DownloadRequest(ref=make_ref(ref), file=file, store_endpoints=self.store_endpoints)
        chunks, digest, expected, size, whole = [], hashlib.sha256(), None, 0, None
        for response in self._stream(self._stub.Download, request, timeout):
            kind = response.WhichOneof("item")
            if kind == "checkpoint":
                entry = next((f for f in response.checkpoint.files if f.name == file), None)
                expected, size = (entry.sha256, entry.size) if entry is not None else (None, 0)
            elif kind == "grant":  # read in place and hashed alongside: no copy of the whole file
                grant = _checked_grant(response.grant, self.store_endpoints, "download")
                whole = presigned.read_all(grant, size, allowed=self.store_endpoints,
                                           field_name=f"grant of {file}", setting=STORE_ENDPOINTS_SETTING,
                                           timeout_s=self.timeout)
            else:
                digest.update(response.chunk.data)
                chunks.append(response.chunk.data)
        data, got = whole if whole is not None else (None, digest.hexdigest())
        if got != expected:
            raise DataLoss(f"file {file}: the downloaded bytes fail their sha256 check; try again")
        # One copy at the end: growing a bytearray chunk by chunk copies it many times over.
        return data if data is not None else b"".join(chunks)

    def _download(self, ref: RefLike, file: str, timeout: float
                  ) -> Iterator[checkpoint_pb2.Checkpoint | tuple[str, bytes]]:
        """A Download's checkpoint, then (file name, bytes) pieces in order: a big file straight from the
        store where the service grants it (to a store this client's store_endpoints allow), else as chunks."""
        request = checkpoint_pb2.DownloadRequest(ref=make_ref(ref), file=file, store_endpoints=self.store_endpoints)
        for response in self._stream(self._stub.Download, request, timeout):
            kind = response.WhichOneof("item")
            if kind == "checkpoint":
                yield response.checkpoint
            elif kind == "chunk":
                yield response.chunk.file, response.chunk.data
            elif kind == "grant":
                grant = _checked_grant(response.grant, self.store_endpoints, "download")
                for data in presigned.get(grant, allowed=self.store_endpoints, field_name=f"grant of "
                                          f"{response.grant.name}", setting=STORE_ENDPOINTS_SETTING,
                                          timeout_s=self.timeout):
                    yield response.grant.name, data

    def restore_buffers(self, ref: RefLike, targets: Sequence[checkpoint_pb2.BufferTarget | tuple[str, str]] = (),
                        timeout: float = TRANSFER_TIMEOUT_S,
                        generation: int = 0) -> list[checkpoint_pb2.RestoredBuffer]:
        """Have the service push the checkpoint's buffer snapshots into buffer services.

        Args:
            ref: the checkpoint.
            targets: (address, buffer) pairs or BufferTargets; empty means every
                buffer the checkpoint holds, back to the address it came from.
            generation: the run generation the restored buffers start (a resume's): from then on they
                refuse writes stamped older. 0 keeps each snapshot's.

        Raises:
            DataLoss: a snapshot failed its checksum (that buffer is unchanged).
            Unavailable: a buffer service or the store is down.
        """
        request = checkpoint_pb2.RestoreBuffersRequest(ref=make_ref(ref), targets=[
            t if isinstance(t, checkpoint_pb2.BufferTarget) else checkpoint_pb2.BufferTarget(address=t[0], buffer=t[1])
            for t in targets], generation=generation)
        return list(self._call(self._stub.RestoreBuffers, request, timeout).buffers)

    # -- managing ------------------------------------------------------------

    def delete(self, ref: RefLike) -> str:
        """Delete one committed checkpoint; returns its path."""
        return self._call(self._stub.DeleteCheckpoint, checkpoint_pb2.DeleteCheckpointRequest(ref=make_ref(ref))).path

    def get_retention(self, agent_id: str, run_id: str) -> checkpoint_pb2.RetentionPolicy:
        request = checkpoint_pb2.GetRetentionRequest(agent_id=agent_id, run_id=run_id)
        return self._call(self._stub.GetRetention, request).retention

    def set_retention(self, agent_id: str, run_id: str, **policy: Any) -> checkpoint_pb2.RetentionPolicy:
        """Set a run's retention (keep_last, keep_every, keep_best, metric, mode); applied after the next commit."""
        request = checkpoint_pb2.SetRetentionRequest(agent_id=agent_id, run_id=run_id,
                                                     retention=checkpoint_pb2.RetentionPolicy(**policy))
        return self._call(self._stub.SetRetention, request).retention

    # -- a run's history -----------------------------------------------------

    def put_run_file(self, agent_id: str, run_id: str, name: str, content: bytes,
                     timeout: float | None = None) -> str:
        """Store one of a run's history files, replacing the old one atomically; returns its location.

        Args:
            agent_id: the agent.
            run_id: the run.
            name: "status.json" (a JSON object with a `state`) or "metrics.csv".
            content: the file's bytes.
            timeout: deadline in seconds (default: the client's).

        Raises:
            InvalidArgument: a bad id, name or content, named (the stored file is unchanged).
        """
        request = checkpoint_pb2.PutRunFileRequest(agent_id=agent_id, run_id=run_id, name=name, content=content)
        return self._call(self._stub.PutRunFile, request, timeout).path

    def get_run_file(self, agent_id: str, run_id: str, name: str, timeout: float | None = None) -> RunFile:
        """One of a run's history files ("status.json" or "metrics.csv"); `timeout` in seconds (default: the client's).

        Raises:
            NotFound: no such run, or its trainer has not uploaded the file (yet).
        """
        request = checkpoint_pb2.GetRunFileRequest(agent_id=agent_id, run_id=run_id, name=name)
        response = self._call(self._stub.GetRunFile, request, timeout)
        return RunFile(response.content, response.modified)


def _checked_grant(g: checkpoint_pb2.FileGrant, endpoints: tuple[str, ...], action: str) -> presigned.Grant:
    """A FileGrant as a presigned.Grant, once its host is one `endpoints` allows.

    The service grants only URLs whose host the request's store_endpoints allow; this checks again,
    because a client must never dial where its caller did not allow it.
    """
    grant = presigned.Grant(g.url, dict(g.headers))
    try:
        presigned.check_grant(grant, endpoints, f"grant of {g.name}", STORE_ENDPOINTS_SETTING)
    except PermissionDenied:
        address = presigned.endpoint_of(g.url, f"grant of {g.name}")[3]
        raise PermissionDenied(
            f"store_endpoints: the checkpoint service handed out a{'n' if action == 'upload' else ''} {action} "
            f"of {g.name} to {address}, which this client's store_endpoints ({', '.join(endpoints) or 'none'}) "
            "does not allow; nothing was transferred") from None
    return grant


def _event(call, kind: str):
    """The next event of a SaveDirect stream, which must be `kind`."""
    event = next(call, None)
    if event is None or event.WhichOneof("item") != kind:
        found = "the end of the stream" if event is None else repr(event.WhichOneof("item"))
        raise Internal(f"SaveDirect: the checkpoint service sent {found}, not its {kind} event")
    return event


__all__ = ["CheckpointClient", "Found", "RunFile", "Saved", "buffer_source", "make_ref"]
