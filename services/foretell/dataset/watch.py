"""Wakes WatchEvents streams as soon as PutEvents stores events in this process.

Streams also poll on a short timeout, so events written by other processes (other pods
sharing the database) arrive too, a little later.
"""

from __future__ import annotations

import threading


class EventBell:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rings = 0
        self.closed = False

    @property
    def rings(self) -> int:
        return self._rings

    def ring(self) -> None:
        with self._cond:
            self._rings += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Returns once rung after `seen` rings, on close, or after `timeout` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._rings != seen or self.closed, timeout)

    def wait_closed(self, timeout: float) -> None:
        """Returns after `timeout` seconds, or at once on close."""
        with self._cond:
            self._cond.wait_for(lambda: self.closed, timeout)

    def close(self) -> None:
        """Ends every stream (server shutdown): they would otherwise hold the drain for its full grace."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
