"""Assertions on rich gRPC errors (google.rpc.Status with ErrorInfo/BadRequest details)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


def violations_of(status: status_pb2.Status) -> dict[str, str]:
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def reason_of(status: status_pb2.Status) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "foretell.v1"
            return info.reason
    return ""


def expect_error(call: Callable[[], Any], code: grpc.StatusCode, field: str | None = None) -> status_pb2.Status:
    """Runs `call`, asserts it fails with `code` (and a BadRequest violation of `field`)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    assert "Traceback" not in (error.details() or "")
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status attached"
    assert reason_of(status), "no ErrorInfo detail"
    if field is not None:
        fields = violations_of(status)
        assert field in fields, f"no violation of {field!r} in {fields}"
    return status
