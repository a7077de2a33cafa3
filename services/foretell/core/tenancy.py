"""The tenant a call acts for: the namespace every resource name lives in.

As an AWS account scopes ARNs, a tenant is taken from the credentials (each API key belongs to one,
core/auth.py) and resource names are unique per tenant: two tenants may both own `solutions/movies`.
Names on the wire never carry the tenant; every store row does (its `tenant` column, part of the key), and
every query a store makes is limited to the current tenant, so another tenant's resource is simply absent.

The tenant is a context variable, set once per call by the auth interceptor (the key's tenant; for the
internal key, the tenant its peer service acts for, sent in HEADER) and by background work for the job it
runs (`acting_as(row.tenant)`): jobs outlive the call that started them. Peer calls carry it in HEADER
(core/deadlines.PeerInterceptor). With authentication off there is one tenant, DEFAULT.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

#: The tenant of a server without API keys, and of data stored before tenants existed.
DEFAULT = ""
#: Metadata a peer call carries: the tenant the calling service acts for (honoured from the internal key only).
HEADER = "x-foretell-tenant"
#: A tenant id: one plain path segment (it names the tenant's file area and artifact directory).
PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,62}")

T = TypeVar("T")

_tenant: ContextVar[str] = ContextVar("foretell_tenant", default=DEFAULT)


def current() -> str:
    """The tenant this code acts for."""
    return _tenant.get()


@contextmanager
def acting_as(tenant: str) -> Iterator[None]:
    """Runs the block for `tenant` (background jobs: the tenant stored with the job)."""
    token = _tenant.set(tenant)
    try:
        yield
    finally:
        _tenant.reset(token)


def mine(table: Any) -> Any:
    """The WHERE clause keeping `table`'s rows of the current tenant."""
    return table.c.tenant == _tenant.get()


def prefix(tenant: str | None = None) -> str:
    """Where the tenant's keys start in shared key spaces (dataset rows, artifact paths): "" for DEFAULT."""
    tenant = current() if tenant is None else tenant
    return f"tenants/{tenant}/" if tenant else ""


def carry(function: Callable[..., T]) -> Callable[..., T]:
    """`function`, to run in another thread for the tenant current here (pools do not copy context variables)."""
    tenant = current()

    def run(*args: Any, **kwargs: Any) -> T:
        with acting_as(tenant):
            return function(*args, **kwargs)

    return run
