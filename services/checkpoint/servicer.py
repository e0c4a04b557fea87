"""CheckpointService: the gRPC glue between requests and the Catalog."""

from __future__ import annotations

from rewind import presigned
from rewind.checkpoint.v1 import checkpoint_pb2, checkpoint_pb2_grpc
from rewind.endpoints import check_entries
from rewind.errors import InvalidArgument, NotFound
from rewind_checkpoint.catalog import Catalog, LookupResult
from rewind_checkpoint.dials import DEFAULT_BUFFER_ADDRESSES
from rewind_checkpoint.layout import MANIFEST, RunKey, check_file_name
from rewind_checkpoint.manifest import Manifest
from rewind_checkpoint.restore import restore_buffers
from rewind_checkpoint.retention import RetentionPolicy
from rewind_checkpoint.run_files import get_run_file, put_run_file
from rewind_checkpoint.upload import Upload

DEFAULT_CHUNK_BYTES = 1024 * 1024
# Smaller files come as chunks even when a direct download is asked for: a second connection costs more.
DIRECT_MIN_BYTES = 1024 * 1024


class CheckpointServicer(checkpoint_pb2_grpc.CheckpointServiceServicer):
    """Implements rewind.checkpoint.v1.CheckpointService over a Catalog.

    Args:
        catalog: the checkpoints.
        buffer_timeout_s: deadline for pulling or pushing one buffer snapshot.
        buffer_addresses: the buffer services Save and RestoreBuffers may dial (see dials.py).
        direct_uploads: hand out presigned URLs, where the store has them, so that big bytes skip this service.
    """

    def __init__(self, catalog: Catalog, buffer_timeout_s: float = 600.0,
                 buffer_addresses: tuple[str, ...] = DEFAULT_BUFFER_ADDRESSES, direct_uploads: bool = True) -> None:
        self.catalog = catalog
        self.direct_uploads = direct_uploads
        self.buffer_timeout_s = buffer_timeout_s
        self.buffer_addresses = tuple(buffer_addresses)

    def _proto(self, manifest: Manifest) -> checkpoint_pb2.Checkpoint:
        return manifest.to_proto(self.catalog.path(manifest.key))

    def _upload(self) -> Upload:
        return Upload(self.catalog, timeout_s=self.buffer_timeout_s, buffer_addresses=self.buffer_addresses,
                      direct_uploads=self.direct_uploads)

    def _saved(self, upload: Upload, manifest: Manifest, deleted: list[Manifest]) -> checkpoint_pb2.SaveResponse:
        return checkpoint_pb2.SaveResponse(
            checkpoint=self._proto(manifest), deleted=[self.catalog.path(m.key) for m in deleted],
            uploaded_bytes=upload.uploaded_bytes, deduplicated_bytes=upload.deduplicated_bytes,
        )

    def Save(self, request_iterator, context):
        upload = self._upload()
        return self._saved(upload, *upload.run(request_iterator))

    def SaveDirect(self, request_iterator, context):
        upload = self._upload()
        grants = upload.start(request_iterator)  # the header; a failure has aborted the upload
        try:
            yield checkpoint_pb2.SaveDirectResponse(grants=checkpoint_pb2.FileGrants(grants=grants))
        except BaseException:  # the call ended here (the client went away): nothing else will clean up
            upload.abandon()
            raise
        yield checkpoint_pb2.SaveDirectResponse(done=self._saved(upload, *upload.run(request_iterator)))

    def Download(self, request, context):
        chunk_bytes = request.chunk_bytes or DEFAULT_CHUNK_BYTES
        if not 1024 <= chunk_bytes <= 16 * 1024 * 1024:
            raise InvalidArgument(f"chunk_bytes: {request.chunk_bytes} is outside 1 KiB..16 MiB")
        endpoints = check_entries(request.store_endpoints, "store_endpoints")
        ref = request.ref
        manifest = self.catalog.manifest(self.catalog.resolve(ref.agent_id, ref.run_id, ref.step, ref.path))
        names = [f.name for f in manifest.files]
        if request.file:
            check_file_name(request.file)
            if manifest.file(request.file) is None:
                raise NotFound(f"file: {manifest.key} has no file {request.file!r} (files: {', '.join(names)})")
            names = [request.file]
        yield checkpoint_pb2.DownloadResponse(checkpoint=self._proto(manifest))
        for name in names:
            grant = self._download_grant(manifest, name, endpoints)
            if grant is not None:  # the client GETs the bytes from the store and checks their sha256
                yield checkpoint_pb2.DownloadResponse(grant=grant)
                continue
            for data in self.catalog.read_file(manifest, name, chunk_bytes):
                if not context.is_active():
                    return
                yield checkpoint_pb2.DownloadResponse(chunk=checkpoint_pb2.FileChunk(file=name, data=data))

    def _download_grant(self, manifest: Manifest, name: str, endpoints: tuple[str, ...]
                        ) -> checkpoint_pb2.FileGrant | None:
        """A presigned GET of a big file, where direct transfers are on, the store presigns and the client
        may dial it; else None (its bytes come through here)."""
        entry = manifest.file(name)
        if not (endpoints and self.direct_uploads and self.catalog.store.presigns and entry.size >= DIRECT_MIN_BYTES):
            return None
        grant = self.catalog.store.presign_get(manifest.key.file_key(name), self.buffer_timeout_s)
        if not presigned.reachable(grant, endpoints):
            return None
        return checkpoint_pb2.FileGrant(name=name, url=grant.url, headers=dict(grant.headers))

    def ListRuns(self, request, context):
        response = checkpoint_pb2.ListRunsResponse()
        for run, manifests in self.catalog.list_runs(request.agent_id):
            summary = response.runs.add(agent_id=run.agent_id, run_id=run.run_id, checkpoints=len(manifests),
                                         total_bytes=sum(m.total_bytes for m in manifests))
            if manifests:
                summary.latest_step = manifests[-1].step
                summary.latest_created = manifests[-1].created
        return response

    def ListCheckpoints(self, request, context):
        run = RunKey.checked(request.agent_id, request.run_id)
        return checkpoint_pb2.ListCheckpointsResponse(
            checkpoints=[self._proto(m) for m in self.catalog.run_manifests(run)]
        )

    def Lookup(self, request, context):
        verify = not request.skip_verify
        selector = request.WhichOneof("selector")
        if selector == "path":
            key, file = self.catalog.resolve_path(request.path)
            result = self.catalog.lookup_exact(key, verify, request.fall_back)
            _check_named_file(result.manifest, file, request.path)
        else:
            run = RunKey.checked(request.agent_id, request.run_id)
            if selector == "best":
                result = self.catalog.lookup_best(run, request.best.metric, request.best.mode, verify)
            elif selector == "step":
                result = self.catalog.lookup_exact(self.catalog.resolve(run.agent_id, run.run_id, request.step, ""),
                                                   verify, request.fall_back)
            elif selector == "latest" and request.latest:
                result = self.catalog.lookup_latest(run, verify)
            else:
                raise InvalidArgument("selector: set one of latest (true), best, step or path")
        return self._lookup_response(result)

    def _lookup_response(self, result: LookupResult) -> checkpoint_pb2.LookupResponse:
        return checkpoint_pb2.LookupResponse(
            checkpoint=self._proto(result.manifest),
            skipped=[checkpoint_pb2.Skipped(path=p, reason=r) for p, r in result.skipped],
        )

    def RestoreBuffers(self, request, context):
        ref = request.ref
        manifest = self.catalog.manifest(self.catalog.resolve(ref.agent_id, ref.run_id, ref.step, ref.path))
        restored = restore_buffers(self.catalog, manifest, request.targets, self.buffer_timeout_s,
                                   self.buffer_addresses, direct=self.direct_uploads, generation=request.generation)
        return checkpoint_pb2.RestoreBuffersResponse(buffers=restored)

    def DeleteCheckpoint(self, request, context):
        ref = request.ref
        key = self.catalog.resolve(ref.agent_id, ref.run_id, ref.step, ref.path)
        self.catalog.delete(key)
        return checkpoint_pb2.DeleteCheckpointResponse(path=self.catalog.path(key))

    def GetRetention(self, request, context):
        run = RunKey.checked(request.agent_id, request.run_id)
        return checkpoint_pb2.GetRetentionResponse(retention=self.catalog.run_retention(run).to_proto())

    def SetRetention(self, request, context):
        run = RunKey.checked(request.agent_id, request.run_id)
        policy = RetentionPolicy.from_proto(request.retention)
        self.catalog.set_retention(run, policy)
        return checkpoint_pb2.SetRetentionResponse(retention=policy.to_proto())

    def PutRunFile(self, request, context):
        run = RunKey.checked(request.agent_id, request.run_id)
        path = put_run_file(self.catalog, run, request.name, request.content)
        return checkpoint_pb2.PutRunFileResponse(path=path, size=len(request.content))

    def GetRunFile(self, request, context):
        run = RunKey.checked(request.agent_id, request.run_id)
        content, modified = get_run_file(self.catalog.store, run, request.name)
        return checkpoint_pb2.GetRunFileResponse(content=content, modified=modified)


def _check_named_file(manifest: Manifest, file: str, path: str) -> None:
    """A path to a file inside a checkpoint names the checkpoint only if the file is in it: refuse, never guess."""
    if file and file != MANIFEST and manifest.file(file) is None:
        names = ", ".join(f.name for f in manifest.files)
        raise NotFound(f"path: {path} names file {file!r}, which {manifest.key} does not have (files: {names}); "
                       "name the checkpoint's folder or one of its files")
