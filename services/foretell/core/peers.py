"""Channels to the other Foretell services, which may be this very process (all-in-one).

With TLS on, peer channels use TLS (and a client certificate under mutual TLS, core/tls.py); with
authentication on, every peer call carries the internal key (core/auth.py), in metadata only. It passes
every per-group check (services act for the system: jobs snapshot data long after the caller's call
ended, and each service checks its own caller before it calls a peer), but calls only the methods listed
in core/internal_calls.py: it is no admin key.
"""

from __future__ import annotations

import threading

import grpc

from foretell.client._auth import MetadataInterceptor, auth_metadata
from foretell.core import auth, tls
from foretell.core.deadlines import PeerInterceptor
from foretell.core.settings import Settings


class Peers:
    """One lazily opened channel per peer service, shared by every caller in the process."""

    def __init__(self, settings: Settings, own_target: str) -> None:
        self._targets = {
            "dataset": settings.dataset_target or own_target,
            "training": settings.training_target or own_target,
            # Only resolves campaigns/filters/batch jobs for authorization: served here or not at all.
            "recommendation": own_target,
        }
        self._max_message = settings.max_message_bytes
        self._credentials = tls.peer_credentials(settings)
        internal = settings.internal_api_key.get_secret_value()
        sends_key = settings.api_keys_file is not None or bool(internal)
        self._metadata = auth_metadata(bearer_token=auth.internal_key(internal)) if sends_key else []
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def channel(self, service: str) -> grpc.Channel:
        with self._lock:
            if service not in self._channels:
                self._channels[service] = self._open(self._targets[service])
            return self._channels[service]

    def stream_channel(self, service: str) -> grpc.Channel:
        """A new channel to `service` on a connection of its own, for one long-lived stream (an event feed); the
        caller closes it. On the shared channel, feeds would fill the connection's streams (HTTP/2
        MAX_CONCURRENT_STREAMS, FORETELL_MAX_STREAMS_PER_CONNECTION) and the peer's unary calls would wait
        behind them."""
        return self._open(self._targets[service], own_connection=True)

    def _open(self, target: str, own_connection: bool = False) -> grpc.Channel:
        options: list[tuple[str, object]] = [
            # Every replica of a peer behind a headless Service, not just the first address.
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", self._max_message),
            ("grpc.max_send_message_length", self._max_message),
        ]
        if own_connection:  # gRPC shares connections between channels of equal options unless told not to
            options.append(("grpc.use_local_subchannel_pool", 1))
        if self._credentials is None:
            channel = grpc.insecure_channel(target, options=options)
        else:
            channel = grpc.secure_channel(target, self._credentials, options=options)
        if self._metadata:
            channel = grpc.intercept_channel(channel, MetadataInterceptor(self._metadata))
        # The caller's deadline caps each peer call; the trace context goes along (core/deadlines.py).
        return grpc.intercept_channel(channel, PeerInterceptor())

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
