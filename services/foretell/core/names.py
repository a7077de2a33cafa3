"""Resource ids and names (AIP-122): `collection/{id}` segments with checked ids."""

from __future__ import annotations

import re
import uuid

from foretell.core.errors import invalid

_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")  # \Z: "$" would accept a trailing newline
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")


def check_id(value: str, field_name: str) -> str:
    if not value:
        raise invalid(field_name, "is required")
    if not _ID.match(value):
        raise invalid(field_name, "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter")
    return value


def new_id() -> str:
    return "x" + uuid.uuid4().hex[:20]


def check_request_id(value: str, field_name: str = "request_id") -> str:
    if value and not _REQUEST_ID.match(value):
        raise invalid(field_name, "must be 1-128 characters of letters, digits and ._:-")
    return value


def parse(name: str, field_name: str, *collections: str) -> list[str]:
    """Ids in a name like "datasetGroups/a/datasets/b" for collections ("datasetGroups", "datasets")."""
    if not name:
        raise invalid(field_name, "is required")
    parts = name.split("/")
    if len(parts) != 2 * len(collections) or any(
        parts[2 * i] != c or not _ID.match(parts[2 * i + 1]) for i, c in enumerate(collections)
    ):
        pattern = "/".join(f"{c}/{{id}}" for c in collections)
        raise invalid(field_name, f"must be a resource name of the form {pattern}")
    return parts[1::2]


def check_name(name: str, field_name: str, *collections: str) -> str:
    parse(name, field_name, *collections)
    return name
