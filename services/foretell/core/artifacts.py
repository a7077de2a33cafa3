"""Artifact URIs <-> local paths. The local directory is the default artifact store."""

from __future__ import annotations

from pathlib import Path

from foretell.core.errors import FieldViolation, InvalidArgument


def uri_of(path: Path) -> str:
    return "file://" + str(path.resolve())


def path_of(uri: str, field: str = "uri") -> Path:
    """A filesystem path from "file:///x" or a plain path; other schemes are INVALID_ARGUMENT."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" in uri:
        raise InvalidArgument(FieldViolation(field, "only file:// URIs and paths are supported"))
    return Path(uri)
