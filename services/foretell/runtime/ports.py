"""Binding the server's port with a one-line answer when it cannot be had."""

from __future__ import annotations

import errno
import socket

import grpc

from foretell.core import tls
from foretell.core.settings import Settings


def listen(server: grpc.Server, settings: Settings) -> int:
    """Binds settings.host:port (TLS when configured) and returns the port; SystemExit saying why otherwise.

    Probed before gRPC tries: its failure is a RuntimeError (a traceback at start) after a core log line, and
    does not say whether the port is taken.
    """
    if settings.port and port_in_use(settings.host, settings.port):
        raise SystemExit(f"cannot start: port {settings.port} is in use")
    address = f"{settings.host}:{settings.port}"
    try:
        port = tls.add_port(server, settings, address)
    except RuntimeError:
        port = 0
    if port == 0:
        if settings.port and port_in_use(settings.host, settings.port):  # taken between the probe and the bind
            raise SystemExit(f"cannot start: port {settings.port} is in use")
        raise SystemExit(f"cannot start: cannot listen on {address}")
    return port


def port_in_use(host: str, port: int) -> bool:
    """Whether some socket already listens on `port` at an address `host` resolves to."""
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False  # gRPC reports an unresolvable host itself
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC binds: a port whose old connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
    return False
