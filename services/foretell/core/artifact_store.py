"""Where finished artifact directories live: a local directory (default) or an S3-compatible bucket.

An artifact is a directory written once and then only read. Both backends publish it atomically:
- local: the copy is made in a hidden sibling and renamed into place, so the directory either is
  complete or is not there (a directory written in place by a worker is already where it belongs);
- S3: every file is uploaded first and the marker object (MARKER, a manifest of the files) last.
  A prefix without the marker is an incomplete or half-deleted artifact: `exists` is False and
  `get_dir` refuses it, so readers never see a partial artifact.

Readers of an S3 artifact download it into a local cache directory (temp dir + rename). The cache
stores the marker's ETag; the marker carries a fresh id on every put, so a rewritten artifact always
has a new ETag and the next `get_dir` downloads it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from foretell.core import tenancy
from foretell.core.artifacts import is_s3, parse_s3, path_of, uri_of
from foretell.core.errors import FailedPrecondition, NotFound, Unavailable
from foretell.core.settings import Settings

MARKER = ".foretell-complete.json"
MARKER_FORMAT = 1
_DELETE_BATCH = 1000  # DeleteObjects' limit


class ArtifactNotFound(NotFound):
    """No complete artifact at the URI: never written, still being written, or deleted."""

    def __init__(self, uri: str, why: str) -> None:
        super().__init__(uri, "artifact")
        self.message = f"no complete artifact at {uri!r}: {why}"
        self.args = (self.message,)


class ArtifactStore(Protocol):
    def put_dir(self, local_dir: Path, uri: str) -> None:
        """Publish the finished directory `local_dir` at `uri`, replacing what was there."""

    def get_dir(self, uri: str, cache_dir: Path) -> Path:
        """A local directory holding the complete artifact (`cache_dir` unless the store is local)."""

    def exists(self, uri: str) -> bool:
        """Whether a complete artifact is at `uri`."""

    def delete(self, uri: str) -> None:
        """Remove the artifact (everything under the prefix); no error when nothing is there."""

    def read_bytes(self, uri: str, name: str) -> bytes:
        """One file of the artifact, by its relative path, without fetching the rest."""


def store_for(uri: str, settings: Settings | None = None, field: str = "uri") -> ArtifactStore:
    """The backend for `uri`: file:// or a plain path -> local; s3://bucket/prefix -> S3."""
    if is_s3(uri):
        parse_s3(uri, field)  # bad URIs fail here, naming the field
        endpoint, region = (settings.s3_endpoint_url, settings.s3_region) if settings else ("", "")
        return S3Store(_s3_client(endpoint, region), field)
    path_of(uri, field)  # other schemes are INVALID_ARGUMENT
    return LocalStore(field)


def cache_dir_for(uri: str, cache_root: Path) -> Path:
    """A stable cache directory for `uri` under `cache_root`."""
    return cache_root / hashlib.sha256(uri.encode()).hexdigest()[:32]


def fetch_dir(uri: str, settings: Settings, field: str = "uri") -> Path:
    """A local directory holding the artifact at `uri`; S3 artifacts are cached under artifacts/cache."""
    cache_root = settings.artifacts / "cache"
    found = store_for(uri, settings, field).get_dir(uri, cache_dir_for(uri, cache_root))
    if found.parent == cache_root:
        evict_cache(cache_root, settings.artifact_cache_bytes, keep=found)
    return found


class Artifacts:
    """A service's view of the artifact store, from the settings.

    Jobs write each artifact into a local directory under `artifact_dir` (`local_dir`); when it is
    finished, `publish` puts it at its URI (`uri`), under `artifact_uri` when that is set. Locally the
    two are the same directory and publishing costs nothing; with S3 the local copy goes once the
    upload is complete. Readers take any URI (`fetch`, `read_bytes`), so artifacts recorded before
    `artifact_uri` changed are still found.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local_root = settings.artifacts
        self.root_uri = settings.artifact_uri.rstrip("/") or uri_of(settings.artifacts)

    @property
    def s3(self) -> tuple[str, str]:
        """(endpoint URL, region) of the S3-compatible store, for a job that reads files there itself."""
        return self.settings.s3_endpoint_url, self.settings.s3_region

    def local_dir(self, collection: str, *parts: str) -> Path:
        """`collection/[tenants/<tenant>/]parts`: names are per tenant, so each tenant's artifacts have a
        directory of their own (the default tenant's are where they were before tenants existed)."""
        return self.local_root.joinpath(collection, tenancy.prefix(), *parts)

    def uri(self, collection: str, *parts: str) -> str:
        tenant = tenancy.prefix().rstrip("/")
        return "/".join([self.root_uri, collection, *([tenant] if tenant else []), *parts])

    def publish(self, local_dir: Path, uri: str) -> None:
        store_for(uri, self.settings).put_dir(local_dir, uri)
        if is_s3(uri):
            shutil.rmtree(local_dir, ignore_errors=True)

    def discard(self, local_dir: Path, uri: str) -> None:
        """Removes an unfinished artifact: what the job wrote locally, and whatever a publish cut short put at
        `uri` (locally the same directory, removed once). No partial artifact may ever be served."""
        shutil.rmtree(local_dir, ignore_errors=True)
        if is_s3(uri):
            self.delete(uri)

    def fetch(self, uri: str, field: str = "artifact_uri") -> Path:
        return fetch_dir(uri, self.settings, field)

    def read_bytes(self, uri: str, name: str) -> bytes:
        return store_for(uri, self.settings).read_bytes(uri, name)

    def delete(self, uri: str) -> None:
        if uri:
            store_for(uri, self.settings).delete(uri)

    def upload_file(self, local_file: Path, uri: str, field: str = "uri") -> None:
        """One finished file (an export, a batch output) to `uri`: a path, file:// or s3://bucket/key."""
        if is_s3(uri):
            bucket, key = parse_s3(uri, field)
            with _reachable(uri):
                self._client().upload_file(str(local_file), bucket, key)
            return
        target = path_of(uri, field)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != local_file.resolve():
            partial = _sibling(target, "partial")
            shutil.copyfile(local_file, partial)
            os.replace(partial, target)

    def download_file(self, uri: str, local_file: Path, field: str = "uri") -> Path:
        """A local copy of the file at `uri` (the file itself when `uri` is local)."""
        if not is_s3(uri):
            return path_of(uri, field)
        bucket, key = parse_s3(uri, field)
        local_file.parent.mkdir(parents=True, exist_ok=True)
        with _reachable(uri):
            try:
                self._client().download_file(bucket, key, str(local_file))
            except Exception as exc:
                if _is_missing(exc):
                    raise NotFound(uri, "object") from None
                raise
        return local_file

    def _client(self) -> Any:
        return _s3_client(self.settings.s3_endpoint_url, self.settings.s3_region)


def evict_cache(cache_root: Path, max_bytes: int, keep: Path) -> None:
    """Removes cached artifacts, least recently fetched first, until the cache is under `max_bytes`.
    Loaded models and tables live in memory, so removing a directory a reader loaded from is safe."""
    os.utime(keep)  # fetched now: the most recently used
    entries = []
    for entry in cache_root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue  # a download or swap in progress
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        entries.append((entry.stat().st_mtime, size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= max_bytes:
            break
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
            total -= size


# ---- local ---------------------------------------------------------------------------------


class LocalStore:
    def __init__(self, field: str = "uri") -> None:
        self._field = field

    def put_dir(self, local_dir: Path, uri: str) -> None:
        target = path_of(uri, self._field)
        if not local_dir.is_dir():
            raise FileNotFoundError(f"{local_dir} is not a directory")
        if target.exists() and target.resolve() == local_dir.resolve():
            return  # written in place: already published (no copy)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = _sibling(target, "partial")
        try:
            shutil.copytree(local_dir, partial, copy_function=shutil.copy2)  # looked up now: tests patch it
            _swap_in(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def get_dir(self, uri: str, cache_dir: Path) -> Path:
        target = path_of(uri, self._field)
        if not target.is_dir():
            raise ArtifactNotFound(uri, "no such directory")
        return target

    def exists(self, uri: str) -> bool:
        return path_of(uri, self._field).is_dir()

    def delete(self, uri: str) -> None:
        shutil.rmtree(path_of(uri, self._field), ignore_errors=True)

    def read_bytes(self, uri: str, name: str) -> bytes:
        try:
            return (self.get_dir(uri, Path()) / _relative(name, uri)).read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(uri, f"it has no file {name!r}") from None


# ---- S3 --------------------------------------------------------------------------------------


class S3Store:
    """An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...) through a boto3 client."""

    def __init__(self, client: Any, field: str = "uri") -> None:
        self._s3 = client
        self._field = field

    def put_dir(self, local_dir: Path, uri: str) -> None:
        with _reachable(uri):
            self._put_dir(local_dir, uri)

    def get_dir(self, uri: str, cache_dir: Path) -> Path:
        with _reachable(uri):
            return self._get_dir(uri, cache_dir)

    def exists(self, uri: str) -> bool:
        with _reachable(uri):
            return self._exists(uri)

    def delete(self, uri: str) -> None:
        with _reachable(uri):
            self._delete(uri)

    def read_bytes(self, uri: str, name: str) -> bytes:
        with _reachable(uri):
            return self._read_bytes(uri, name)

    def _put_dir(self, local_dir: Path, uri: str) -> None:
        bucket, prefix = parse_s3(uri, self._field)
        if not local_dir.is_dir():
            raise FileNotFoundError(f"{local_dir} is not a directory")
        files = {p.relative_to(local_dir).as_posix(): p for p in sorted(local_dir.rglob("*")) if p.is_file()}
        files.pop(MARKER, None)  # a directory fetched from a store carries the old marker
        # Old files must not mix with new ones; the marker goes first, so readers stop at once.
        self._delete(uri)
        try:
            for name, path in files.items():
                self._s3.upload_file(str(path), bucket, f"{prefix}/{name}")
        except Exception as exc:
            # upload_file wraps the ClientError in S3UploadFailedError; its text names the code.
            if "NoSuchBucket" in str(exc):
                raise FailedPrecondition(f"{self._field}: S3 bucket {bucket!r} does not exist") from None
            raise
        manifest = {
            "format": MARKER_FORMAT,
            "put_id": uuid.uuid4().hex,  # a new ETag on every put, even of identical content
            "files": {name: path.stat().st_size for name, path in files.items()},
        }
        self._s3.put_object(Bucket=bucket, Key=f"{prefix}/{MARKER}", Body=json.dumps(manifest).encode())

    def _get_dir(self, uri: str, cache_dir: Path) -> Path:
        bucket, prefix = parse_s3(uri, self._field)
        etag, manifest = self._marker(uri)
        if _cached_etag(cache_dir) == etag:
            return cache_dir
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        partial = _sibling(cache_dir, "partial")
        try:
            for name, size in manifest["files"].items():
                dest = partial / _relative(name, uri)
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._s3.download_file(bucket, f"{prefix}/{name}", str(dest))
                except Exception as exc:
                    if _is_missing(exc):
                        raise ArtifactNotFound(uri, f"{name!r} is listed in the marker but missing") from None
                    raise
                if dest.stat().st_size != size:
                    raise ArtifactNotFound(uri, f"{name!r} has {dest.stat().st_size} bytes, the marker says {size}")
            (partial / MARKER).write_text(json.dumps({"etag": etag, **manifest}))
            _swap_in(partial, cache_dir, keep_if=lambda: _cached_etag(cache_dir) == etag)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return cache_dir

    def _exists(self, uri: str) -> bool:
        bucket, prefix = parse_s3(uri, self._field)
        try:
            self._s3.head_object(Bucket=bucket, Key=f"{prefix}/{MARKER}")
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def _delete(self, uri: str) -> None:
        bucket, prefix = parse_s3(uri, self._field)
        try:
            # The marker first: from here on readers see no artifact, never a shrinking one.
            self._s3.delete_object(Bucket=bucket, Key=f"{prefix}/{MARKER}")
            keys = [o["Key"] for page in self._pages(bucket, f"{prefix}/") for o in page.get("Contents", [])]
        except Exception as exc:
            if _is_missing(exc):
                return
            raise
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + _DELETE_BATCH]]
            answer = self._s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OSError(f"S3 refused to delete {first.get('Key')!r}: {first.get('Message')}")

    def _read_bytes(self, uri: str, name: str) -> bytes:
        bucket, prefix = parse_s3(uri, self._field)
        _, manifest = self._marker(uri)
        if name not in manifest["files"]:
            raise ArtifactNotFound(uri, f"it has no file {name!r}")
        try:
            body: bytes = self._s3.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()
        except Exception as exc:
            if _is_missing(exc):
                raise ArtifactNotFound(uri, f"{name!r} is listed in the marker but missing") from None
            raise
        return body

    def _marker(self, uri: str) -> tuple[str, dict[str, Any]]:
        """The marker's ETag and manifest; one GET, so the two always belong together."""
        bucket, prefix = parse_s3(uri, self._field)
        try:
            found = self._s3.get_object(Bucket=bucket, Key=f"{prefix}/{MARKER}")
        except Exception as exc:
            if _is_missing(exc):
                raise ArtifactNotFound(uri, f"no {MARKER} marker (never written, incomplete or deleted)") from None
            raise
        manifest = json.loads(found["Body"].read())
        if manifest.get("format") != MARKER_FORMAT or not isinstance(manifest.get("files"), dict):
            raise ArtifactNotFound(uri, f"unknown marker format {manifest.get('format')!r}")
        return str(found["ETag"]), manifest

    def _pages(self, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        yield from self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)


@lru_cache(maxsize=8)
def _s3_client(endpoint_url: str, region: str) -> Any:
    """One client per endpoint (clients are thread-safe and slow to build). Credentials come from
    boto3's chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, or the pod's web identity."""
    import boto3.session  # imported here: the local store does not need boto3
    from botocore.config import Config

    config = Config(
        # Bounded, so a reader holding a load lock fails in seconds, not minutes, when S3 is down.
        connect_timeout=5,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 3},
        # Custom endpoints (MinIO, moto, RGW) rarely have wildcard DNS for bucket subdomains.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    # Its own session: boto3's default session keeps the first credentials it finds for good.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config)


# ---- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _reachable(uri: str) -> Iterator[None]:
    """botocore's own errors (no credentials, no connection) as errors a client can act on."""
    from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise FailedPrecondition(f"cannot reach {uri!r}: {exc} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)") from exc
    except BotoCoreError as exc:
        raise Unavailable(f"the S3 artifact store did not answer for {uri!r}: {exc}") from exc


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def _relative(name: str, uri: str) -> Path:
    """`name` as a path inside the artifact; a marker naming ../x must not write outside the cache."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise ArtifactNotFound(uri, f"{name!r} is not a path inside the artifact")
    return Path(*parts)


def _sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.{kind}")


def _cached_etag(cache_dir: Path) -> str | None:
    try:
        return str(json.loads((cache_dir / MARKER).read_text())["etag"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _swap_in(ready: Path, target: Path, keep_if: Callable[[], bool] | None = None) -> None:
    """Rename `ready` to `target`; an existing `target` is moved aside first and then removed.

    rename(2) cannot replace a non-empty directory, so there is a moment without `target`; readers
    then find nothing rather than a mix. When another writer got there first and `keep_if()` says its
    copy is just as good, that copy stays.
    """
    old = _sibling(target, "old")
    with contextlib.suppress(FileNotFoundError):
        os.rename(target, old)
    try:
        os.rename(ready, target)
    except OSError:
        if keep_if is None or not keep_if():
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
