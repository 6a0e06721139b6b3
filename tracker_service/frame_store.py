"""Where sampled production frames are kept: one small interface, a local folder or S3.

The gateway's frame sampler (frame_sampler.py) writes through it and `visionguard data
export-for-labeling` (control_plane/datasets/labeling.py) reads through it, so both agree on
one layout (the labelling-export contract, issue 14):

    frames/<YYYY-MM-DD>/<sha256 of the JPEG>.jpg    the bytes the client posted
    frames/<YYYY-MM-DD>/<sha256>.json                the record: time, stream, reason, model,
                                                     size, classes and the model's detections

`LocalFrameStore` keeps them under a directory (by default `<runtime_dir>/frames`); a write is
atomic (temporary file + rename), so a reader never sees half a frame. `S3FrameStore` talks to
any S3 API (the k8s overlay's MinIO) through boto3, with short timeouts and no retries: the
sampler backs off itself when the store is down, and a request never waits for it.

Both raise `StoreUnavailable` when the store cannot be reached or refuses a call, and
`StoreFull` when it has no room (the local disk is full, S3 quota exceeded); a missing key is
`KeyError`. This module imports nothing else of the gateway: the control plane uses it too.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

FRAMES_PREFIX = "frames/"


class FrameStoreError(Exception):
    """A frame store call failed."""


class StoreUnavailable(FrameStoreError):
    """The store cannot be reached or refused the call (down, bad credentials, no bucket)."""


class StoreFull(FrameStoreError):
    """The store has no room left for this object."""


class FrameStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def list(self, prefix: str = FRAMES_PREFIX) -> Iterator[tuple[str, int, float]]:
        """(key, size in bytes, modification time as Unix seconds) of each object."""

    def delete(self, key: str) -> None: ...

    def usage(self) -> int:
        """Bytes held under FRAMES_PREFIX."""


def frame_keys(sha256: str, when: datetime) -> tuple[str, str]:
    """The image's and the record's keys of a frame sampled at `when` (UTC day)."""
    day = when.astimezone(timezone.utc).strftime("%Y-%m-%d")
    stem = f"{FRAMES_PREFIX}{day}/{sha256}"
    return f"{stem}.jpg", f"{stem}.json"


def _checked_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a frame store key: {key!r}")
    return key


class LocalFrameStore:
    """Objects as files under `root` (created on the first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalFrameStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / _checked_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"{self.root}: {exc.strerror}") from exc
            raise StoreUnavailable(f"{self.root}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise StoreUnavailable(f"{self.root}: {exc}") from exc

    def list(self, prefix: str = FRAMES_PREFIX) -> Iterator[tuple[str, int, float]]:
        base = self.root / prefix.split("/")[0] if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _, files in os.walk(base):
            for name in sorted(files):
                if name.startswith(".put-"):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                yield key, st.st_size, st.st_mtime

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"{self.root}: {exc}") from exc

    def usage(self) -> int:
        return sum(size for _, size, _ in self.list(FRAMES_PREFIX))


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str
    region: str = "us-east-1"


class S3FrameStore:
    """Objects in one bucket of an S3 API (MinIO, AWS, ...) at `endpoint`."""

    def __init__(self, endpoint: str, bucket: str, credentials: S3Credentials, *,
                 timeout_s: float = 5.0) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint
        self.bucket = bucket
        self._client = boto3.client(
            "s3", endpoint_url=endpoint or None, aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key, region_name=credentials.region,
            config=Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                          retries={"max_attempts": 1, "mode": "standard"},
                          s3={"addressing_style": "path"}))

    def __repr__(self) -> str:
        return f"S3FrameStore({self.endpoint!r}, {self.bucket!r})"

    def _call(self, what: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404") and "Key" in kwargs:
                raise KeyError(kwargs["Key"]) from None
            if code in ("QuotaExceeded", "XMinioStorageFull", "EntityTooLarge"):
                raise StoreFull(f"{self}: {what}: {code}") from exc
            raise StoreUnavailable(f"{self}: {what}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"{self}: {what}: {exc}") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (idempotent)."""
        from botocore.exceptions import ClientError

        try:
            self._call("head bucket", self._client.head_bucket)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and cause.response.get("Error", {}).get(
                    "Code") in ("404", "NoSuchBucket")):
                raise
            self._call("create bucket", self._client.create_bucket)

    def put(self, key: str, data: bytes) -> None:
        self._call("put", self._client.put_object, Key=_checked_key(key), Body=data)

    def get(self, key: str) -> bytes:
        return self._call("get", self._client.get_object, Key=_checked_key(key))["Body"].read()

    def list(self, prefix: str = FRAMES_PREFIX) -> Iterator[tuple[str, int, float]]:
        token = None
        while True:
            kwargs = {"Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self._call("list", self._client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp()
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        self._call("delete", self._client.delete_object, Key=_checked_key(key))

    def usage(self) -> int:
        return sum(size for _, size, _ in self.list(FRAMES_PREFIX))
