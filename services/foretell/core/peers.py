"""Channels to the other Foretell services, which may be this very process (all-in-one)."""

from __future__ import annotations

import threading

import grpc

from foretell.core.deadlines import PeerInterceptor
from foretell.core.settings import Settings


class Peers:
    """One lazily opened channel per peer service, shared by every caller in the process."""

    def __init__(self, settings: Settings, own_target: str) -> None:
        self._targets = {
            "dataset": settings.dataset_target or own_target,
            "training": settings.training_target or own_target,
        }
        self._max_message = settings.max_message_bytes
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def channel(self, service: str) -> grpc.Channel:
        with self._lock:
            if service not in self._channels:
                channel = grpc.insecure_channel(
                    self._targets[service],
                    options=[
                        # Every replica of a peer behind a headless Service, not just the first address.
                        ("grpc.lb_policy_name", "round_robin"),
                        ("grpc.max_receive_message_length", self._max_message),
                        ("grpc.max_send_message_length", self._max_message),
                    ],
                )
                # The caller's deadline caps each peer call; the trace context goes along (core/deadlines.py).
                self._channels[service] = grpc.intercept_channel(channel, PeerInterceptor())
            return self._channels[service]

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
