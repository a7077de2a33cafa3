"""Artifact URIs <-> local paths. The local directory is the default artifact store.

`s3://bucket/prefix` URIs name artifacts in an S3-compatible store; foretell.core.artifact_store
reads and writes both kinds. `path_of` stays local-only so code that needs a directory fails
clearly on an s3:// URI instead of treating it as a relative path.
"""

from __future__ import annotations

import re
from pathlib import Path

from foretell.core.errors import FieldViolation, InvalidArgument, invalid

# S3 bucket naming rules (3-63 lowercase letters, digits, dots, hyphens; alphanumeric at both ends).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def uri_of(path: Path) -> str:
    return "file://" + str(path.resolve())


def path_of(uri: str, field: str = "uri") -> Path:
    """A filesystem path from "file:///x" or a plain path; other schemes are INVALID_ARGUMENT."""
    if "\x00" in uri:  # no OS path holds one; Path.resolve()/open() would raise ValueError (INTERNAL)
        raise InvalidArgument(FieldViolation(field, "must not contain a NUL character"))
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" in uri:
        raise InvalidArgument(FieldViolation(field, "only file:// URIs and paths are supported"))
    return Path(uri)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_s3(uri: str, field: str = "uri") -> tuple[str, str]:
    """(bucket, prefix) of "s3://bucket/some/prefix", the prefix without slashes at either end."""
    if not is_s3(uri):
        raise invalid(field, f"expected an s3://bucket/prefix URI, got {uri!r}")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise invalid(field, f"{bucket!r} is not a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    prefix = prefix.strip("/")
    if not prefix:
        raise invalid(field, f"{uri!r} needs a key prefix after the bucket (s3://{bucket}/some/prefix)")
    # Keys become local cache paths on download: no empty, "." or ".." segments.
    if any(part in ("", ".", "..") for part in prefix.split("/")):
        raise invalid(field, f"{uri!r} has an empty, '.' or '..' path segment")
    return bucket, prefix
