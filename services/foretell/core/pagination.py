"""AIP-158 pagination: page_size rules and opaque, request-bound page tokens."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from foretell.core.errors import invalid
from foretell.core.resources import Page

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(value: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if value < 0:
        raise invalid("page_size", "must not be negative")
    return min(value or default, maximum)


def _scope_hash(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:12]


def encode_token(after: str, scope: str) -> str:
    """Token for the page after resource `after`; `scope` binds it to the request's filters."""
    raw = json.dumps({"a": after, "s": _scope_hash(scope)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, scope: str) -> str | None:
    """The `after` key of a token, None for the first page; INVALID_ARGUMENT if forged or reused."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, bound = data["a"], data["s"]
    except (ValueError, KeyError, TypeError):
        raise invalid("page_token", "is not a token this server issued") from None
    if bound != _scope_hash(scope) or not isinstance(after, str):
        raise invalid("page_token", "belongs to a different list request")
    return after


def paged(request: Any, scope: str, fetch: Callable[[int, str | None], Page]) -> tuple[Sequence[Any], str]:
    """One page of rows of a List request (page_size, page_token) and the next page token, bound to `scope`."""
    page = fetch(page_size(request.page_size), decode_token(request.page_token, scope))
    return page.rows, encode_token(page.last, scope) if page.last else ""
