"""Authentication by API key or bearer token, and authorization per dataset group.

`AuthInterceptor` (installed only when FORETELL_API_KEYS_FILE is set) reads `authorization: Bearer <token>`
or `x-api-key: <key>`, finds the principal whose key hashes to the same SHA-256 digest, and makes it the
current `Caller` (a contextvar) while the handler runs, and the key's tenant the current tenant
(core/tenancy.py: every store query is limited to it, so other tenants' names do not exist for the call). Servicers
then call `authorize(group)` or
`authorize_resource(name)` where they know which dataset group a request touches; `visible_groups()` filters
List* queries. With no interceptor there is no caller and every check passes (auth off).

A resource of a group the caller may not use answers exactly as an absent one (`errors.absent`: NOT_FOUND,
the same message). PERMISSION_DENIED remains only where the answer does not depend on anyone's data: a read-only
key on a mutating method, a call that affects every group of the tenant, creating a group the key does not list.

Keys and tokens are never logged or put in errors: only principals' names are.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from foretell.core import tenancy
from foretell.core.errors import (
    ForetellError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    absent,
    invalid,
)
from foretell.core.interceptors import rewrap
from foretell.core.internal_calls import internal_may_call
from foretell.core.settings import Settings

log = logging.getLogger("foretell.auth")

#: Services every caller may use: Kubernetes probes and grpcurl need them without a key.
OPEN_SERVICES = frozenset(
    ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"]
)
#: Method name prefixes that change nothing; the only ones a read-only key may call.
READ_PREFIXES = ("Get", "List", "Query", "Watch", "Wait")
INTERNAL_PRINCIPAL = "foretell-internal"
#: Methods only the internal principal may call (services' peer calls): PERMISSION_DENIED for every key handed to
#: people, all-groups ones included. The event feed, and its deprecated public twin kept for wire compatibility.
INTERNAL_ONLY_METHODS = frozenset(
    ["/foretell.v1.EventFeedService/WatchEvents", "/foretell.v1.DatasetService/WatchEvents"]
)
_GROUP_NAME = re.compile(r"datasetGroups/[a-z][a-z0-9-]{0,62}")
# Shared by every group of a tenant: schemas hold field definitions, no data.
_GLOBAL = ("schemas/",)
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
# Seconds a resolved resource -> dataset group answer is reused (operations are polled often).
RESOLVE_TTL_SECONDS = 5.0
# The group of a resource nobody here can resolve: no principal limited to some groups may access it.
UNRESOLVED = ""


@dataclass(frozen=True)
class Principal:
    """Who a key belongs to: a tenant (its namespace, core/tenancy.py) and the groups of that tenant it may use.

    `dataset_groups` None means every group of the tenant."""

    name: str
    dataset_groups: frozenset[str] | None
    read_only: bool = False
    tenant: str = tenancy.DEFAULT

    def may_access(self, group: str) -> bool:
        return self.dataset_groups is None or group in self.dataset_groups


@dataclass(frozen=True)
class Caller:
    principal: Principal
    resolver: GroupResolver | None


_caller: ContextVar[Caller | None] = ContextVar("foretell_caller", default=None)


def current() -> Principal | None:
    """The authenticated principal of this call; None when auth is off."""
    caller = _caller.get()
    return caller.principal if caller else None


def restricted() -> bool:
    """Whether the caller is limited to some dataset groups (so a check may need a lookup)."""
    principal = current()
    return principal is not None and principal.dataset_groups is not None


def _denied(principal: Principal) -> PermissionDenied:
    # Names the caller only: neither the owning group nor anything about the other tenant.
    return PermissionDenied(
        f"principal {principal.name!r} may not access this resource", metadata={"principal": principal.name}
    )


def authorize(group: str, name: str = "") -> None:
    """`absent(name)` (default: the group's) unless the caller may use dataset group `group`.

    `name` is the resource the request asked for: the one an absent resource's NOT_FOUND would name.
    """
    caller = _caller.get()
    if caller is not None and not caller.principal.may_access(group):
        raise absent(name or group)


def authorize_new_group(group: str) -> None:
    """PERMISSION_DENIED unless the caller's key lists `group`: decided by the key alone, so it leaks nothing."""
    caller = _caller.get()
    if caller is not None and not caller.principal.may_access(group):
        raise _denied(caller.principal)


def _owner(name: str) -> str:
    """The resource whose dataset group decides access to `name`: its group, else its top-level resource."""
    return name if name.startswith("datasetGroups/") else "/".join(name.split("/", 2)[:2])


def authorize_resource(name: str, shown: str = "") -> None:
    """`authorize` for the dataset group that resource `name` belongs to (resolved only when it matters).

    Refused or unknown, the answer is `absent(shown)`, by default the resource that owns `name` (`name`
    itself under a dataset group, else its top-level resource, as the lookup of an absent one reports).
    """
    caller = _caller.get()
    if caller is None or caller.principal.dataset_groups is None:
        return
    group = group_in_name(name)
    if group is None and name.startswith(_GLOBAL):
        return
    if group is None:
        if caller.resolver is None:
            raise _denied(caller.principal)
        try:
            group = caller.resolver.group_of(name)
        except NotFound:
            raise absent(shown or _owner(name)) from None
        if group == UNRESOLVED:
            raise _denied(caller.principal)  # the owner cannot be asked here, whether or not it exists
    if group is not None and not caller.principal.may_access(group):
        raise absent(shown or _owner(name))


def allowed(name: str) -> str:
    """`name`, once `authorize_resource(name)` passed (for use inside an expression)."""
    authorize_resource(name)
    return name


def group_in_name(name: str) -> str | None:
    """The "datasetGroups/{g}" prefix of a name under a dataset group, else None."""
    if not name.startswith("datasetGroups/"):
        return None
    return "/".join(name.split("/", 2)[:2])


def visible_groups() -> frozenset[str] | None:
    """The dataset groups whose resources List* queries may return to the caller; None: every group."""
    principal = current()
    return None if principal is None else principal.dataset_groups


def identity() -> str:
    """Who is calling, for what is bound to the caller (request ids, page tokens): the tenant and the principal
    (a name may be a principal of two tenants, and the internal key acts for any tenant); "" with auth off."""
    principal = current()
    return f"{tenancy.current()}\0{principal.name}" if principal else ""


def is_internal() -> bool:
    """Whether this call comes from a Foretell service on a peer channel (the internal key)."""
    principal = current()
    return principal is not None and principal.name == INTERNAL_PRINCIPAL


def authorize_internal() -> None:
    """For internal methods (INTERNAL_ONLY_METHODS): PERMISSION_DENIED for any principal but the internal one.

    Decided by the key alone, so it leaks nothing; the interceptor refuses these calls before the handler runs,
    and handlers check again in case a method is added without its line there. Auth off: every caller passes."""
    principal = current()
    if principal is not None and principal.name != INTERNAL_PRINCIPAL:
        raise _denied(principal)


def authorize_all_groups() -> None:
    """For calls that affect every group of the tenant (deleting a schema): only keys for all its groups."""
    principal = current()
    if principal is not None and principal.dataset_groups is not None:
        raise _denied(principal)


# ---- keys ----------------------------------------------------------------------------------------


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class KeyTable:
    """Principals by SHA-256 digest of their key; lookups compare every digest in constant time."""

    def __init__(self, entries: list[tuple[bytes, Principal]]) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, secret: str) -> Principal | None:
        wanted = digest(secret)
        found = None
        for candidate, principal in self._entries:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(candidate, wanted):
                found = principal
        return found


def _group_name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string")
    name = value if value.startswith("datasetGroups/") else f"datasetGroups/{value}"
    if not _GROUP_NAME.fullmatch(name):
        raise ValueError(f'{where} must be a dataset group id, datasetGroups/{{id}} or "*"')
    return name


def parse_keys(document: Any, source: str = "api keys") -> KeyTable:
    """The table from `{"keys": [{"principal", "key_sha256" | "key", "dataset_groups", "read_only"?}]}`.

    Errors name the entry and field, never a key.
    """
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{source}: expected {{"keys": [...]}} with at least one entry')
    table: list[tuple[bytes, Principal]] = []
    seen: set[bytes] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: keys[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object")
        unknown = set(entry) - {"principal", "key", "key_sha256", "dataset_groups", "read_only", "tenant"}
        if unknown:
            raise ValueError(f"{where} has unknown fields {sorted(unknown)}")
        principal = entry.get("principal")
        if not isinstance(principal, str) or not principal or principal == INTERNAL_PRINCIPAL:
            raise ValueError(f"{where}.principal must be a non-empty name other than {INTERNAL_PRINCIPAL!r}")
        if ("key" in entry) == ("key_sha256" in entry):
            raise ValueError(f"{where} needs exactly one of key_sha256 and key")
        if "key" in entry:
            key = entry["key"]
            if not isinstance(key, str) or len(key) < 16:
                raise ValueError(f"{where}.key must be a string of at least 16 characters")
            key_digest = digest(key)
        else:
            hexed = entry["key_sha256"]
            if not isinstance(hexed, str) or not _HEX_DIGEST.fullmatch(hexed.lower()):
                raise ValueError(f"{where}.key_sha256 must be 64 hex digits (sha256 of the key)")
            key_digest = bytes.fromhex(hexed)
        if key_digest in seen:
            raise ValueError(f"{where} repeats the key of an earlier entry")
        seen.add(key_digest)
        groups = entry.get("dataset_groups")
        if not isinstance(groups, list) or not groups:
            raise ValueError(f'{where}.dataset_groups must be a non-empty list of group ids, or ["*"]')
        allowed = (
            None
            if "*" in groups
            else frozenset(_group_name(g, f"{where}.dataset_groups[{j}]") for j, g in enumerate(groups))
        )
        read_only = entry.get("read_only", False)
        if not isinstance(read_only, bool):
            raise ValueError(f"{where}.read_only must be true or false")
        tenant = entry.get("tenant", principal)
        if not isinstance(tenant, str) or not tenancy.PATTERN.fullmatch(tenant) or tenant == INTERNAL_PRINCIPAL:
            where_tenant = f"{where}.tenant" if "tenant" in entry else f"{where}.tenant (default: the principal)"
            raise ValueError(f"{where_tenant} must be a tenant id: [A-Za-z0-9][A-Za-z0-9._@-]*, at most 63 characters")
        table.append((key_digest, Principal(principal, allowed, read_only, tenant)))
    return KeyTable(table)


def load_keys(path: Path) -> KeyTable:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the API keys file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        # The position only: the message would quote the text, which may hold a key.
        raise ValueError(f"the API keys file {path} is not valid JSON (line {exc.lineno})") from None
    return parse_keys(document, str(path))


# Used when FORETELL_INTERNAL_API_KEY is empty: enough for the all-in-one process, whose peer calls come
# back to itself. Services in separate processes need a shared key.
_PROCESS_INTERNAL_KEY = secrets.token_urlsafe(32)


def internal_key(configured: str) -> str:
    """The credential services send each other (and themselves) on peer channels."""
    return configured or _PROCESS_INTERNAL_KEY


def credential(metadata: Any) -> str | None:
    """The key or bearer token in a call's metadata; "" when one is present but malformed."""
    for key, value in metadata or ():
        if key == "x-api-key":
            return str(value)
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


# ---- resolving a resource's dataset group ------------------------------------------------------------


class GroupResolver:
    """Finds the dataset group a resource belongs to, asking the services that own it (internal key).

    Answers are cached for RESOLVE_TTL_SECONDS; a resource whose owner cannot be asked here (e.g. a
    campaign from a process that does not serve recommendations) resolves to PERMISSION_DENIED for
    callers limited to some groups.
    """

    def __init__(self, lookups: dict[str, Callable[[str], str]]) -> None:
        # collection -> function(top-level resource name) -> dataset group name
        self._lookups = lookups
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def group_of(self, name: str) -> str | None:
        """The group name, or None for global resources (schemas). NotFound for a missing resource."""
        parts = name.split("/")
        if len(parts) < 2 or name.startswith(_GLOBAL):
            return None
        if parts[0] == "datasetGroups":
            return "/".join(parts[:2])
        top = "/".join(parts[:2])
        key = (tenancy.current(), top)  # names are per tenant
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < RESOLVE_TTL_SECONDS:
            return hit[1]
        lookup = self._lookups.get(parts[0])
        if lookup is None:
            return UNRESOLVED
        group = lookup(top)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now, group)
        return group


PEER_TIMEOUT = 10.0


def peer_resolver(channel: Callable[[str], grpc.Channel]) -> GroupResolver:
    """A resolver that asks the training service (peer channels, internal key)."""
    # Imported here: the generated stubs are only needed once auth is on.
    from foretell.v1 import training_service_pb2 as train
    from foretell.v1 import training_service_pb2_grpc

    def training() -> training_service_pb2_grpc.TrainingServiceStub:
        return training_service_pb2_grpc.TrainingServiceStub(channel("training"))

    def asked(name: str, call: Callable[[], str]) -> str:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise absent(name) from None
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return UNRESOLVED  # the owning service does not run behind this channel
            raise Unavailable(f"cannot check access to {name!r} now; retry") from None

    def via(version: str) -> str:
        return resolver.group_of(version) or UNRESOLVED

    # Only what a service apart from its owner needs: operations carry their group (core/operations.py), and
    # campaigns, batch jobs and filters are only named to the recommendation service, which looks them up itself.
    # Every lookup here is a method the internal key may call (core/internal_calls.py).
    lookups: dict[str, Callable[[str], str]] = {
        "solutions": lambda n: asked(
            n, lambda: training().GetSolution(train.GetSolutionRequest(name=n), timeout=PEER_TIMEOUT).dataset_group
        ),
        "predictors": lambda n: asked(
            n, lambda: training().GetPredictor(train.GetPredictorRequest(name=n), timeout=PEER_TIMEOUT).dataset_group
        ),
        "forecasts": lambda n: via(
            asked(n, lambda: training().GetForecast(train.GetForecastRequest(name=n), timeout=PEER_TIMEOUT).predictor)
        ),
    }
    resolver = GroupResolver(lookups)
    return resolver


# ---- the interceptor -------------------------------------------------------------------------------------


def _service_and_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").partition("/")
    return service, method


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every call but health and reflection; sits inside ErrorInterceptor."""

    def __init__(self, keys: KeyTable, internal: str) -> None:
        self._keys = keys
        self._internal = digest(internal)
        self.resolver: GroupResolver | None = None

    def authenticate(self, metadata: Any) -> Principal:
        secret = credential(metadata)
        if secret is None:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>' or 'x-api-key: <key>'")
        principal = self._keys.lookup(secret) if secret else None
        if secret and hmac.compare_digest(digest(secret), self._internal):
            principal = Principal(INTERNAL_PRINCIPAL, None)
        if principal is None:
            raise Unauthenticated("invalid API key or token")
        return principal

    def principal_name(self, metadata: Any) -> str | None:
        """The name of the principal whose key `metadata` carries; None without a valid one (core/admission.py
        counts streams per principal, open services' included)."""
        try:
            return self.authenticate(metadata).name
        except Unauthenticated:
            return None

    def permit(self, principal: Principal, full_method: str) -> ForetellError | None:
        """Why `principal` may not call `full_method` ("/package.Service/Method") at all; None if it may.

        Decided by the key and the method alone: a read-only key calls reads only; the internal key only what
        the services call on each other (core/internal_calls.py), so it is no admin key.
        """
        _, method = _service_and_method(full_method)
        if principal.read_only and not method.startswith(READ_PREFIXES):
            return _denied(principal)
        if full_method in INTERNAL_ONLY_METHODS and principal.name != INTERNAL_PRINCIPAL:
            return _denied(principal)
        if principal.name == INTERNAL_PRINCIPAL and not internal_may_call(full_method):
            return PermissionDenied(
                f"the internal key may call only what Foretell's services call on each other, not {method}",
                metadata={"principal": principal.name},
            )
        return None

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        service, _ = _service_and_method(details.method)
        if handler is None or service in OPEN_SERVICES:
            return handler
        failure: ForetellError | None = None
        caller: Caller | None = None
        tenant = tenancy.DEFAULT
        try:
            principal = self.authenticate(details.invocation_metadata)
            failure = self.permit(principal, details.method)
            caller = Caller(principal, self.resolver)
            tenant = tenant_of(principal, details.invocation_metadata)
        except (Unauthenticated, InvalidArgument) as exc:
            failure = exc

        def wrap(behavior: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                if failure is not None:
                    raise failure
                with _as(caller, tenant):
                    result = behavior(request, context)
                return _as_caller(result, caller, tenant) if streaming_response else result

            return run

        return rewrap(handler, wrap)


def tenant_of(principal: Principal, metadata: Any) -> str:
    """The tenant a call acts for: the key's; for the internal key, the one its peer service sent (HEADER)."""
    if principal.name != INTERNAL_PRINCIPAL:
        return principal.tenant
    sent = [str(value) for key, value in metadata or () if key == tenancy.HEADER]
    if len(sent) > 1:
        raise invalid(tenancy.HEADER, "must be sent at most once")
    if sent and not tenancy.PATTERN.fullmatch(sent[0]):
        raise invalid(tenancy.HEADER, "must be a tenant id ([A-Za-z0-9][A-Za-z0-9._@-]*, at most 63 characters)")
    return sent[0] if sent else tenancy.DEFAULT


@contextmanager
def _as(caller: Caller | None, tenant: str) -> Iterator[None]:
    token = _caller.set(caller)
    try:
        with tenancy.acting_as(tenant):
            yield
    finally:
        _caller.reset(token)


def _as_caller(items: Iterator[Any], caller: Caller | None, tenant: str) -> Iterator[Any]:
    """A response stream whose generator body runs as `caller` (gRPC iterates it after the handler returns)."""
    iterator = iter(items)
    while True:
        with _as(caller, tenant):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


def auth_interceptor(settings: Settings) -> AuthInterceptor | None:
    """The interceptor for `settings`, or None when no API keys file is set (auth off)."""
    if settings.api_keys_file is None:
        return None
    try:
        keys = load_keys(settings.api_keys_file)
    except ValueError as exc:
        raise SystemExit(f"invalid settings: FORETELL_API_KEYS_FILE: {exc}") from None
    log.info("authentication on", extra={"principals": len(keys)})
    return AuthInterceptor(keys, internal_key(settings.internal_api_key.get_secret_value()))
