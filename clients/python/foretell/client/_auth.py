"""Credentials on every call: TLS channel credentials, and an API key or bearer token as metadata.

The key goes in metadata through a client interceptor rather than call credentials, because gRPC
only attaches call credentials on TLS channels and a key is also useful over plaintext on a trusted
network (or behind a TLS-terminating proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

__all__ = ["MetadataInterceptor", "auth_metadata", "read_pem", "tls_credentials"]


def read_pem(value: bytes | str | Path | None) -> bytes | None:
    """PEM bytes as given, or read from a path (str or Path)."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def tls_credentials(
    root_certificates: bytes | str | Path | None = None,
    certificate_chain: bytes | str | Path | None = None,
    private_key: bytes | str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS trusting ``root_certificates`` (default: the system roots), with a client certificate for mTLS."""
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("a client certificate needs its private key, and the other way round")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(root_certificates),
        private_key=read_pem(private_key),
        certificate_chain=read_pem(certificate_chain),
    )


def auth_metadata(api_key: str | None = None, bearer_token: str | None = None) -> list[tuple[str, str]]:
    if api_key and bearer_token:
        raise ValueError("pass an API key or a bearer token, not both")
    if api_key:
        return [("x-api-key", api_key)]
    if bearer_token:
        return [("authorization", f"Bearer {bearer_token}")]
    return []


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _CallDetails(_Details, grpc.ClientCallDetails):
    pass


class MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the credential) to every call on a channel."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = list(metadata)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *self._metadata],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]) -> Any:
        return continuation(self._details(details), requests)
