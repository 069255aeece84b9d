"""One S3 bucket and prefix, spoken to through boto3 with bounded time and translated errors.

Endpoint, region and credentials come from the AWS SDK's standard chain:
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), `AWS_REGION`, `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE` and the shared config files, web identity
(`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, as on EKS), container and instance
roles. Nothing here reads or logs a secret.

Every call is bounded: connect and read timeouts, one SDK retry (the loader
retries loads itself), and a whole-download deadline so a store that trickles
bytes cannot hold a load forever. Failures become two exceptions only:
`KeyNotFound` (the object is not there) and `StoreError` (anything else: down,
slow, denied, cut off mid-download), whose message names the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from coordinator.errors import InvalidName, RegistryUnavailable

log = logging.getLogger("modelcache.store")

SCHEMES = ("s3",)
PART_BYTES = 8 << 20
"""Multipart part size; S3 wants at least 5 MiB for every part but the last."""


def is_store_url(text: str) -> bool:
    """Whether a registry location names an object store (`s3://...`) rather than a directory."""
    return "://" in text


@dataclass(frozen=True)
class StoreLocation:
    """`s3://bucket/prefix`: where a registry's root lives in an object store."""

    scheme: str
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the bucket's root

    @classmethod
    def parse(cls, url: str) -> StoreLocation:
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in SCHEMES:
            raise InvalidName(
                "registry", url, f"unsupported scheme {scheme!r}: use a directory or s3://bucket/prefix"
            )
        bucket, _, prefix = rest.partition("/")
        if not bucket or any(c in bucket for c in " \\?#"):
            raise InvalidName("registry", url, "expected s3://bucket/prefix with a bucket name")
        prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise InvalidName("registry", url, "the prefix must not contain empty, '.' or '..' parts")
        return cls(scheme.lower(), bucket, prefix)

    def key(self, *parts: str) -> str:
        """The object key of `parts` below the prefix."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def relative(self, key: str) -> str:
        """`key` with the prefix removed."""
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")


class StoreObserver(Protocol):
    """Where a store reports its requests (node.metrics implements it; the CLI passes none)."""

    def store_request(self, operation: str, outcome: str, seconds: float) -> None: ...
    def store_bytes(self, direction: str, nbytes: int) -> None: ...


class KeyNotFound(FileNotFoundError):
    """The object does not exist (HTTP 404)."""


class StoreError(OSError):
    """The store could not answer: unreachable, too slow, refused, or cut off mid-transfer."""


class StoreSilent(StoreError):
    """The store did not answer in time (dropped packets, a hung server), or did not lately."""


@dataclass(frozen=True)
class Timeouts:
    """How long one store call may take."""

    connect_s: float = 2.0
    read_s: float = 5.0
    min_rate_bytes_per_s: float = 1 << 20
    """A download may take `read_s + size / min_rate` in all; slower is a failure."""
    silent_cooldown_s: float = 5.0
    """After a call timed out, further calls fail at once for this long instead of each
    waiting its own timeouts: one load makes several calls (listing, metadata, fallbacks),
    and a store that drops packets would otherwise hold it for a timeout per call."""


class S3Store:
    """Bounded, observed object operations on one bucket (a thin layer over a boto3 client)."""

    def __init__(
        self,
        location: StoreLocation,
        *,
        timeouts: Timeouts | None = None,
        observer: StoreObserver | None = None,
        client: Any = None,
    ) -> None:
        self.location = location
        self.timeouts = timeouts or Timeouts()
        self.observer = observer
        self._client = client if client is not None else _make_client(self.timeouts)
        self.endpoint = str(self._client.meta.endpoint_url)
        self._silent_until = 0.0  # monotonic time before which calls fail at once (StoreSilent)

    def describe(self) -> str:
        """How messages name this store: its URL and endpoint host, never credentials.

        The host is written without a scheme or path: nodes scrub path-like text from
        client messages, and the client should still read which store failed.
        """
        return f"object store {self.location} at {urlsplit(self.endpoint).netloc or self.endpoint}"

    # -- reads -----------------------------------------------------------------
    def read(self, key: str, limit: int, digest: Any = None) -> bytes:
        """At most `limit + 1` bytes of `key` (more than `limit` means it grew), hashed into `digest`."""
        deadline = time.monotonic() + self.timeouts.read_s + limit / self.timeouts.min_rate_bytes_per_s
        with self._call("get") as call:
            response = self._client.get_object(Bucket=self.location.bucket, Key=key)
            body = response["Body"]
            chunks: list[bytes] = []
            remaining = limit + 1
            try:
                while remaining > 0:
                    chunk = body.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    if digest is not None:
                        digest.update(chunk)
                    chunks.append(chunk)
                    remaining -= len(chunk)
                    call.nbytes += len(chunk)
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"{self.describe()} is too slow: {call.nbytes} bytes of {key} in "
                            f"{time.monotonic() - call.started:.1f}s"
                        )
            finally:
                body.close()
        if self.observer is not None:
            self.observer.store_bytes("download", call.nbytes)
        return b"".join(chunks)

    def exists(self, key: str) -> bool:
        try:
            with self._call("head"):
                self._client.head_object(Bucket=self.location.bucket, Key=key)
        except KeyNotFound:
            return False
        return True

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix` (one ListObjectsV2 page of up to 1,000 keys per request)."""
        token: str | None = None
        while True:
            args = {"Bucket": self.location.bucket, "Prefix": prefix}
            if token:
                args["ContinuationToken"] = token
            with self._call("list"):
                page = self._client.list_objects_v2(**args)
            for item in page.get("Contents", ()):
                yield item["Key"]
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    # -- writes ----------------------------------------------------------------
    def write(self, key: str, data: bytes) -> None:
        with self._call("put") as call:
            self._client.put_object(Bucket=self.location.bucket, Key=key, Body=data)
            call.nbytes = len(data)
        if self.observer is not None:
            self.observer.store_bytes("upload", len(data))

    def delete(self, key: str) -> None:
        with self._call("delete"):
            self._client.delete_object(Bucket=self.location.bucket, Key=key)

    def upload(
        self, src: Path, key: str, progress: Callable[[int, int], None] | None = None
    ) -> tuple[str, int]:
        """Upload `src` to `key`, reading it once; return the SHA-256 and size of the bytes sent.

        Files above one part go up in parts (multipart upload), so a large artifact never
        sits whole in memory; a failed or interrupted upload is aborted and leaves no object.
        """
        total = src.stat().st_size
        digest = hashlib.sha256()
        with src.open("rb") as fh:
            if total <= PART_BYTES:
                data = fh.read()
                digest.update(data)
                self.write(key, data)
                if progress is not None:
                    progress(len(data), total)
                return digest.hexdigest(), len(data)
            with self._call("put"):
                upload_id = self._client.create_multipart_upload(Bucket=self.location.bucket, Key=key)[
                    "UploadId"
                ]
            try:
                parts, done = [], 0
                for number, chunk in enumerate(iter(lambda: fh.read(PART_BYTES), b""), start=1):
                    digest.update(chunk)
                    with self._call("put_part") as call:
                        etag = self._client.upload_part(
                            Bucket=self.location.bucket,
                            Key=key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=chunk,
                        )["ETag"]
                        call.nbytes = len(chunk)
                    if self.observer is not None:
                        self.observer.store_bytes("upload", len(chunk))
                    parts.append({"ETag": etag, "PartNumber": number})
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                with self._call("put"):
                    self._client.complete_multipart_upload(
                        Bucket=self.location.bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    )
            except BaseException:
                self.abort(key, upload_id)
                raise
        return digest.hexdigest(), done

    def abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload, best effort (the bucket's lifecycle rule is the backstop)."""
        try:
            with self._call("abort"):
                self._client.abort_multipart_upload(Bucket=self.location.bucket, Key=key, UploadId=upload_id)
        except (StoreError, KeyNotFound):
            pass

    def _call(self, operation: str) -> _Call:
        return _Call(self, operation)


class _Call:
    """Times one request, reports it, and translates botocore's exceptions into ours."""

    def __init__(self, store: S3Store, operation: str) -> None:
        self.store, self.operation = store, operation
        self.nbytes = 0
        self.started = 0.0

    def __enter__(self) -> _Call:
        self.started = time.monotonic()
        wait = self.store._silent_until - self.started
        if wait > 0:
            raise StoreSilent(
                f"{self.store.describe()} is unavailable (it did not answer in time; "
                f"trying again in {wait:.0f}s)"
            )
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        seconds = time.monotonic() - self.started
        outcome = "ok"
        translated: BaseException | None = None
        if exc is not None:
            translated = _translate(exc, self.store, self.operation)
            outcome = "not_found" if isinstance(translated, KeyNotFound) else "error"
            if isinstance(translated, StoreSilent):
                self.store._silent_until = time.monotonic() + self.store.timeouts.silent_cooldown_s
        if self.store.observer is not None:
            self.store.observer.store_request(self.operation, outcome, seconds)
        if translated is not None and translated is not exc:
            raise translated from None
        return False


def _translate(exc: BaseException, store: S3Store, operation: str) -> BaseException:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, StoreError | KeyNotFound):
        return exc
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket"):
            return KeyNotFound(f"{store.location}: no such object")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return StoreError(f"{store.describe()} refused {operation} ({code}): check the AWS credentials")
        if code == "NoSuchBucket":
            return StoreError(f"{store.describe()}: bucket {store.location.bucket} does not exist")
        return StoreError(f"{store.describe()} failed {operation}: {code or status}")
    if isinstance(exc, NoCredentialsError):
        return StoreError(
            f"{store.describe()}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a role)"
        )
    if _timed_out(exc):
        log.warning("%s %s: %s", store.location, operation, exc)
        return StoreSilent(f"{store.describe()} is unavailable (no answer in time: {type(exc).__name__})")
    if isinstance(exc, BotoCoreError | OSError) or type(exc).__module__.startswith("urllib3"):
        # EndpointConnectionError, ConnectTimeout, ReadTimeout, ResponseStreamingError (cut off
        # mid-download), IncompleteReadError, NoCredentialsError: the store cannot be used now.
        log.warning("%s %s: %s", store.location, operation, exc)  # the full cause, for operators
        return StoreError(f"{store.describe()} is unavailable ({type(exc).__name__})")
    return exc


def _timed_out(exc: BaseException) -> bool:
    """A connect or read timeout (the store is silent), not a refusal (it is down, and says so)."""
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    return isinstance(exc, ConnectTimeoutError | ReadTimeoutError | TimeoutError) or (
        type(exc).__module__.startswith("urllib3") and "Timeout" in type(exc).__name__
    )


def _make_client(timeouts: Timeouts) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise RegistryUnavailable(
            "", None, "an s3:// registry needs boto3: pip install 'modelcache[s3]'"
        ) from None

    custom_endpoint = bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    config = Config(
        connect_timeout=timeouts.connect_s,
        read_timeout=timeouts.read_s,
        retries={"total_max_attempts": 2, "mode": "standard"},
        # Path-style addressing for custom endpoints: MinIO, Ceph RGW and test servers serve
        # buckets under one host name, not as subdomains.
        s3={"addressing_style": "path" if custom_endpoint else "auto"},
        # botocore >= 1.36 adds CRC checksums to every upload by default, which several
        # S3-compatible stores (GCS interoperability, older MinIO and Ceph) reject; the
        # artifact's SHA-256 in metadata.json is the integrity check that counts here.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", config=config)
