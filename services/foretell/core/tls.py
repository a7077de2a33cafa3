"""TLS for the server's port and for the services' peer channels, from the FORETELL_TLS_* settings.

With a certificate and key the port serves TLS; with a client CA as well it requires a client
certificate signed by that CA (mutual TLS). Peer channels (services calling each other, or this
process calling itself) then use TLS too, trusting FORETELL_TLS_CA_FILE (or the system roots) and,
under mutual TLS, presenting the service's own certificate as the client certificate. Files are
read once at start: rotate certificates by restarting.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from foretell.core.settings import Settings


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SystemExit(f"cannot read the {what} {path}: {exc.strerror}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """None without TLS settings (plaintext)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (_read(settings.tls_key_file, "TLS key"), _read(settings.tls_cert_file, "TLS certificate"))
    client_ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=_read(client_ca, "TLS client CA") if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def peer_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Credentials for peer channels: None when this service serves plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    roots = _read(settings.tls_ca_file, "TLS CA") if settings.tls_ca_file else None
    if settings.tls_client_ca_file is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=_read(settings.tls_key_file, "TLS key"),
        certificate_chain=_read(settings.tls_cert_file, "TLS certificate"),
    )


def add_port(server: grpc.Server, settings: Settings, address: str) -> int:
    """Binds `address` with TLS when configured; returns the port (0 when it could not bind)."""
    credentials = server_credentials(settings)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)
