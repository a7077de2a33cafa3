"""Rich errors for Foretell clients.

The server reports failures as a ``google.rpc.Status`` (AIP-193) whose details hold
``google.rpc.ErrorInfo`` (machine-readable reason, domain "foretell.v1") and, for bad
input, ``google.rpc.BadRequest`` field violations. That format is language-neutral;
this module only turns it into one Python exception so callers need not parse
trailing metadata themselves.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["ERROR_DOMAIN", "ForetellError", "raise_for_operation"]

#: ``ErrorInfo.domain`` of errors raised by Foretell servers.
ERROR_DOMAIN = "foretell.v1"

_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


class ForetellError(Exception):
    """A failed RPC or long-running operation, with its structured details.

    ``reason`` and ``field_violations`` are the stable parts to branch on;
    ``message`` is for humans and may change.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[tuple[str, str]] = list(field_violations or [])
        #: The full ``google.rpc.Status`` when the server sent one, for details not unpacked here.
        self.status = status
        super().__init__(str(self))

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling replays __init__(*self.args); keep the fields instead.
        return (type(self), (self.code, self.message), self.__dict__)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        if self.field_violations:
            text += " (" + "; ".join(f"{field}: {desc}" for field, desc in self.field_violations) + ")"
        return text

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> ForetellError:
        """Builds the error from a ``google.rpc.Status``, unpacking ErrorInfo and BadRequest."""
        reason = domain = ""
        metadata: dict[str, str] = {}
        violations: list[tuple[str, str]] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend((v.field, v.description) for v in bad.field_violations)
        return cls(
            _CODES.get(status.code, grpc.StatusCode.UNKNOWN),
            status.message,
            reason=reason,
            domain=domain,
            metadata=metadata,
            field_violations=violations,
            status=status,
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ForetellError:
        """Builds the error from a failed call, reading the rich status from its trailers."""
        code: Any = getattr(error, "code", None)
        details: Any = getattr(error, "details", None)
        if not callable(code):  # an RpcError that is not a grpc.Call: nothing more to read
            return cls(grpc.StatusCode.UNKNOWN, str(error))
        try:
            status = rpc_status.from_call(error)
        except ValueError:  # trailers disagree with the call's status; trust the call
            status = None
        if status is not None:
            return cls.from_status(status)
        return cls(code() or grpc.StatusCode.UNKNOWN, (details() if callable(details) else "") or "")


def raise_for_operation(operation: operations_pb2.Operation) -> None:
    """Raises ForetellError if a long-running operation finished with an error.

    A failed operation is not a failed RPC (GetOperation itself succeeded), so gRPC
    raises nothing; call this after ``Client.wait_operation`` to get the same
    exception type as for a failed call.
    """
    if operation.WhichOneof("result") == "error" and operation.error.code != 0:
        raise ForetellError.from_status(operation.error)
