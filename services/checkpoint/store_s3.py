"""The s3:// backend of the store protocol (store_protocol.py): a bucket (and prefix) on AWS S3, MinIO or
another S3-compatible store.

    store = S3Store("my-bucket", "rewind")   # or open_store("s3://my-bucket/rewind"); endpoint etc. from AWS_* env
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from urllib.parse import urlparse

from rewind.errors import FailedPrecondition, InvalidArgument, StoreUnavailable
from rewind.presigned import Grant
from rewind_checkpoint.store_protocol import ObjectInfo, ObjectMissing, ObjectWriter, PendingUpload, Store, StoreOptions

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest multipart part (except the last)
MAX_SINGLE_PUT_BYTES = 5 * 1024**3  # S3's largest single PUT: bigger objects come through this service

class _S3Writer(ObjectWriter):
    """Small objects in one PUT; larger ones as a multipart upload whose parts
    go up in background threads while the caller keeps writing."""

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = store.key_of(key)
        # Chunks wait in a list and are joined once per part: one copy per byte.
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._upload_id: str | None = None
        self._parts: list[futures.Future] = []
        # Bounds memory: at most this many parts in flight or waiting.
        self._slots = threading.BoundedSemaphore(store.max_concurrency + 2)

    def write(self, data: bytes | memoryview) -> None:
        self._pending.append(bytes(data) if isinstance(data, memoryview) else data)
        self._pending_size += len(data)
        # Parts may differ in size; S3 only needs every part but the last to be >= 5 MiB.
        if self._pending_size >= self._store.part_bytes:
            self._send_part(self._take())

    def _take(self) -> bytes:
        body = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return body

    def _send_part(self, body: bytes) -> None:
        s = self._store
        if self._upload_id is None:
            response = s.call("start an upload of", self._key, s.client.create_multipart_upload,
                              Bucket=s.bucket, Key=self._key)
            self._upload_id = response["UploadId"]
        self._raise_failed_part()
        self._slots.acquire()
        number = len(self._parts) + 1

        def upload() -> dict:
            try:
                r = s.call("upload a part of", self._key, s.client.upload_part, Bucket=s.bucket, Key=self._key,
                           UploadId=self._upload_id, PartNumber=number, Body=body)
                return {"PartNumber": number, "ETag": r["ETag"]}
            finally:
                self._slots.release()

        self._parts.append(s.pool.submit(upload))

    def _raise_failed_part(self) -> None:
        for f in self._parts:
            if f.done() and f.exception() is not None:
                raise f.exception()

    def close(self) -> None:
        s = self._store
        if self._upload_id is None:
            s.call("write", self._key, s.client.put_object, Bucket=s.bucket, Key=self._key, Body=self._take())
            return
        if self._pending_size:
            self._send_part(self._take())
        parts = [f.result() for f in self._parts]
        s.call("finish the upload of", self._key, s.client.complete_multipart_upload, Bucket=s.bucket,
               Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": parts})

    def abort(self) -> None:
        self._take()
        if self._upload_id is None:
            return
        for f in self._parts:
            f.cancel()
        try:
            self._store.client.abort_multipart_upload(Bucket=self._store.bucket, Key=self._key,
                                                      UploadId=self._upload_id)
        except Exception:
            log.warning("could not abort the multipart upload of %s; S3 lifecycle rules will reap it", self._key)


class S3Store(Store):
    """A bucket (and optional prefix) on AWS S3, MinIO or another S3-compatible store.

    The endpoint, region and credentials come from the standard AWS sources
    (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ~/.aws/...). Path-style
    addressing is used when a custom endpoint is set (MinIO and most
    S3-compatible stores need it); REWIND_S3_ADDRESSING_STYLE overrides.

    Args:
        bucket: the bucket name.
        prefix: key prefix inside the bucket ('' for the bucket root).
        timeout_s: connect and read timeout of every request.
        retries: attempts per request, including the first.
        part_bytes: multipart part size (at least 5 MiB).
        max_concurrency: parts uploaded in parallel per object.
    """

    presigns = True

    def __init__(self, bucket: str, prefix: str = "", *, timeout_s: float = 5.0, retries: int = 3,
                 part_bytes: int = 8 * 1024 * 1024, max_concurrency: int = 8) -> None:
        import boto3
        from botocore.config import Config

        if not bucket:
            raise InvalidArgument("store: an s3:// URL needs a bucket, e.g. s3://my-bucket/rewind")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.part_bytes = max(part_bytes, MIN_PART_BYTES)
        self.max_concurrency = max_concurrency
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        style = os.environ.get("REWIND_S3_ADDRESSING_STYLE") or ("path" if endpoint else "auto")
        config = Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": retries, "mode": "standard"},
            s3={"addressing_style": style},
            # SigV4 for presigned URLs too (botocore may presign with SigV2, which signs no headers).
            signature_version="s3v4",
            max_pool_connections=max(10, max_concurrency * 4),
            # Only checksum when the operation requires it: some S3-compatible
            # stores reject the newer default trailing checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client = boto3.session.Session().client("s3", config=config)
        self.endpoint = self.client.meta.endpoint_url
        self.pool = futures.ThreadPoolExecutor(max_workers=max_concurrency * 2, thread_name_prefix="rewind-s3")

    @classmethod
    def from_url(cls, url: str, options: StoreOptions) -> S3Store:
        """`s3://bucket/prefix` (or `s3://bucket`)."""
        parsed = urlparse(url)
        return cls(parsed.netloc, parsed.path, timeout_s=options.timeout_s, retries=options.retries,
                   part_bytes=options.part_bytes)

    def key_of(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _listing_prefix(self, prefix: str) -> str:
        """The bucket prefix of a listing; '' means the store's own folder, never a sibling (rewind-old/...)."""
        return self.key_of(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def call(self, action: str, key: str, fn, **kwargs):
        """Run one boto3 call, mapping its failures to RewindErrors that name the store."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "NoSuchUpload", "404", "NotFound"):
                raise ObjectMissing(f"s3://{self.bucket}/{key} does not exist") from None
            if code == "NoSuchBucket":
                raise FailedPrecondition(f"store {self.url}: bucket {self.bucket!r} does not exist at "
                                         f"{self.endpoint}; create it first (aws s3 mb / mc mb)") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise FailedPrecondition(f"store {self.url}: access denied ({code}); check AWS_ACCESS_KEY_ID "
                                         "and AWS_SECRET_ACCESS_KEY") from None
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
                raise StoreUnavailable(
                    f"store {self.url} at {self.endpoint} failed to {action} {key}: {code}") from None
            raise FailedPrecondition(f"store {self.url}: cannot {action} {key}: {code} {exc}") from None
        except NoCredentialsError:
            raise FailedPrecondition(f"store {self.url}: no AWS credentials; set AWS_ACCESS_KEY_ID and "
                                     "AWS_SECRET_ACCESS_KEY (or a profile)") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"store {self.url} at {self.endpoint} is unavailable: cannot {action} {key} "
                              f"({type(exc).__name__}: {exc})") from None

    def check(self) -> None:
        try:
            self.call("reach the bucket of", "", self.client.head_bucket, Bucket=self.bucket)
        except ObjectMissing:  # HEAD carries no error code, only 404
            raise FailedPrecondition(f"store {self.url}: bucket {self.bucket!r} does not exist at "
                                     f"{self.endpoint}; create it first (aws s3 mb / mc mb)") from None

    def open_writer(self, key: str) -> ObjectWriter:
        return _S3Writer(self, key)

    def put(self, key: str, data: bytes) -> None:
        # A single PUT replaces an object atomically on S3.
        self.call("write", key, self.client.put_object, Bucket=self.bucket, Key=self.key_of(key), Body=data)

    def read(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError

        response = self.call("read", key, self.client.get_object, Bucket=self.bucket, Key=self.key_of(key))
        body = response["Body"]
        try:
            while chunk := body.read(chunk_bytes):
                yield chunk
        except (BotoCoreError, OSError) as exc:
            raise StoreUnavailable(f"store {self.url} at {self.endpoint} is unavailable: reading {key} failed "
                              f"({type(exc).__name__}: {exc})") from None
        finally:
            body.close()

    def list(self, prefix: str) -> list[ObjectInfo]:
        found = []
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": self._listing_prefix(prefix)}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("list", prefix, self.client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                found.append(ObjectInfo(self._rel(obj["Key"]), obj["Size"], obj["LastModified"].timestamp(),
                                        obj.get("ETag", "")))
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def list_dirs(self, prefix: str) -> list[str]:
        names = []
        token = None
        base = self._listing_prefix(prefix)
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": base, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("list", prefix, self.client.list_objects_v2, **kwargs)
            names += [p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return sorted(names)
            token = page["NextContinuationToken"]

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            objects = [{"Key": self.key_of(k)} for k in keys[i:i + 1000]]
            response = self.call("delete", keys[i], self.client.delete_objects, Bucket=self.bucket,
                                 Delete={"Objects": objects, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise StoreUnavailable(f"store {self.url}: could not delete {first.get('Key')}: {first.get('Code')}")

    def presign_put(self, key: str, size: int, sha256: str, expires_s: float) -> Grant | None:
        if size > MAX_SINGLE_PUT_BYTES:
            return None
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        expires = max(1, int(expires_s))
        # Content-Length and x-amz-checksum-sha256 become signed headers (X-Amz-SignedHeaders): the
        # URL writes this key only, with these bytes only (S3 recomputes the checksum and refuses a mismatch).
        url = self.call("presign an upload to", key, self.client.generate_presigned_url, ClientMethod="put_object",
                        Params={"Bucket": self.bucket, "Key": self.key_of(key), "ContentLength": size,
                                "ChecksumSHA256": checksum},
                        ExpiresIn=expires)
        return Grant(url, {"x-amz-checksum-sha256": checksum}, float(expires))

    def presign_get(self, key: str, expires_s: float) -> Grant | None:
        url = self.call("presign a download of", key, self.client.generate_presigned_url, ClientMethod="get_object",
                        Params={"Bucket": self.bucket, "Key": self.key_of(key)}, ExpiresIn=max(1, int(expires_s)))
        return Grant(url, {}, float(max(1, int(expires_s))))

    def checksum_of(self, key: str) -> tuple[int, str | None]:
        head = self.call("read the checksum of", key, self.client.head_object, Bucket=self.bucket,
                         Key=self.key_of(key), ChecksumMode="ENABLED")
        checksum = head.get("ChecksumSHA256")
        # A multipart object's checksum is of its parts' checksums ("...-N"): not the object's sha256.
        digest = base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None
        return head["ContentLength"], digest

    def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        found = []
        base = self._listing_prefix(prefix)
        kwargs = {"Bucket": self.bucket, "Prefix": base}
        while True:
            page = self.call("list the multipart uploads of", prefix, self.client.list_multipart_uploads, **kwargs)
            for upload in page.get("Uploads", []):
                if upload["Key"].startswith(base):  # never another prefix's, even from a store that ignores Prefix
                    found.append(PendingUpload(self._rel(upload["Key"]), upload["UploadId"],
                                               upload["Initiated"].timestamp()))
            if not page.get("IsTruncated"):
                return found
            # Pages continue after a (key, upload id) pair: several uploads may share a key.
            kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page.get("NextUploadIdMarker", ""))

    def abort_upload(self, upload: PendingUpload) -> None:
        with contextlib.suppress(ObjectMissing):  # NoSuchUpload: finished or aborted meanwhile
            self.call("abort the upload of", upload.key, self.client.abort_multipart_upload, Bucket=self.bucket,
                      Key=self.key_of(upload.key), UploadId=upload.upload_id)
