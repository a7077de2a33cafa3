"""Domain errors raised by core code; the server interceptor maps them to google.rpc.Status.

Core code never imports grpc: it raises these, and `to_status` builds the rich,
language-neutral status (AIP-193) with ErrorInfo and, for bad input, BadRequest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "foretell.v1"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ForetellError(Exception):
    """Base of all errors a client may see; `code` is a google.rpc.Code value."""

    code: int = code_pb2.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata or {}

    def details(self) -> list[any_pb2.Any]:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata))
        return [info]

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code, message=self.message, details=self.details())


class InvalidArgument(ForetellError):
    code = code_pb2.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str = "") -> None:
        self.violations = [violations] if isinstance(violations, FieldViolation) else list(violations)
        if not message:
            first = self.violations[0]
            more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
            message = f"{first.field}: {first.description}{more}"
        super().__init__(message)

    def details(self) -> list[any_pb2.Any]:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
        )
        return [*super().details(), bad]


# gRPC clients refuse trailers past 8 KiB by default (the call then ends RESOURCE_EXHAUSTED and its status is
# lost), and a status may quote user input: what an RPC's error carries is bounded.
MAX_TRAILER_TEXT = 250
MAX_TRAILER_STATUS_BYTES = 3500


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TRAILER_TEXT else text[: MAX_TRAILER_TEXT - 1] + "\u2026"


def fit_trailers(status: status_pb2.Status) -> status_pb2.Status:
    """`status` with its texts cut short and BadRequest violations kept up to a byte budget."""
    out = status_pb2.Status(code=status.code, message=_cut(status.message))
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad, kept = error_details_pb2.BadRequest(), error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                kept.field_violations.add(field=_cut(v.field), description=_cut(v.description))
                if out.ByteSize() + kept.ByteSize() > MAX_TRAILER_STATUS_BYTES and len(kept.field_violations) > 1:
                    del kept.field_violations[-1]  # the message says how many there were
                    break
            detail = any_pb2.Any()
            detail.Pack(kept)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            for key, value in info.metadata.items():
                info.metadata[key] = _cut(value)
            detail = any_pb2.Any()
            detail.Pack(info)
        out.details.append(detail)
    return out


def invalid(field_name: str, description: str) -> InvalidArgument:
    return InvalidArgument(FieldViolation(field_name, description))


class NotFound(ForetellError):
    code = code_pb2.NOT_FOUND
    reason = "RESOURCE_NOT_FOUND"

    def __init__(self, resource: str, what: str = "resource") -> None:
        super().__init__(f"{what} {resource!r} not found", metadata={"resource": resource})


# What a resource is called in messages, by the collection id its name ends in (AIP-122).
_KINDS = {
    "datasetGroups": "dataset group",
    "datasets": "dataset",
    "importJobs": "import job",
    "exportJobs": "export job",
    "schemas": "schema",
    "solutions": "solution",
    "versions": "solution version",
    "predictors": "predictor",
    "forecasts": "forecast",
    "campaigns": "campaign",
    "filters": "filter",
    "batchInferenceJobs": "batch inference job",
    "operations": "operation",
}


def absent(name: str) -> NotFound:
    """The one answer for a resource the caller cannot see: it does not exist, or another tenant owns it.

    Built from the name alone, so the two cases cannot differ in code, message or details.
    """
    parts = name.split("/")
    return NotFound(name, _KINDS.get(parts[-2] if len(parts) >= 2 else "", "resource"))


class AlreadyExists(ForetellError):
    code = code_pb2.ALREADY_EXISTS
    reason = "RESOURCE_ALREADY_EXISTS"

    def __init__(self, resource: str, message: str = "") -> None:
        super().__init__(message or f"{resource!r} already exists", metadata={"resource": resource})


class FailedPrecondition(ForetellError):
    code = code_pb2.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Aborted(ForetellError):
    """A conflict with a concurrent call; the client may retry."""

    code = code_pb2.ABORTED
    reason = "ABORTED"


class ResourceExhausted(ForetellError):
    """A bounded queue or quota is full; the client may retry later."""

    code = code_pb2.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ForetellError):
    """The caller's deadline passed before the work (a peer call, a long loop) was done."""

    code = code_pb2.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Unauthenticated(ForetellError):
    """No credentials, or ones no key matches (core.auth)."""

    code = code_pb2.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(ForetellError):
    """The caller's key may not touch this dataset group, or may only read (core.auth)."""

    code = code_pb2.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unavailable(ForetellError):
    """A peer service did not answer; the caller may retry."""

    code = code_pb2.UNAVAILABLE
    reason = "UNAVAILABLE"


class Cancelled(ForetellError):
    code = code_pb2.CANCELLED
    reason = "CANCELLED"


@dataclass
class Violations:
    """Collects field violations so one response names every bad field."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_name: str, description: str) -> None:
        self.items.append(FieldViolation(field_name, description))

    def require(self, value: object, field_name: str) -> None:
        if not value:
            self.add(field_name, "is required")

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)
