"""Process entry point: the only place that reads settings, configures logging and handles signals."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType

from foretell.core.logs import configure_logging
from foretell.core.settings import ALL_SERVICES, ServiceName, Settings, load_settings
from foretell.runtime.server import App, create_server

log = logging.getLogger("foretell.main")

# How long a thread may hold the GIL while another waits (CPython's default is 5 ms). Every accept, message and
# status passes through the gRPC event loop's one thread; with the handler threads busy it waits this long for
# the GIL each time, so at 5 ms a backlog starves the very thread that would drain it (docs/benchmarks.md, the
# load test). 1 ms costs some extra switching and keeps the loop fed.
GIL_SWITCH_SECONDS = 0.001


def serve(
    settings: Settings, services: Iterable[ServiceName] = ALL_SERVICES, ready: threading.Event | None = None
) -> None:
    """Runs until SIGTERM/SIGINT, then drains in-flight calls for settings.grace_seconds."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    app: App = create_server(settings, services)
    app.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name, "grace_s": settings.grace_seconds})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ready is not None:
        ready.set()
    stopping.wait()
    app.stop(settings.grace_seconds)
    log.info("stopped")


def run(services: Iterable[ServiceName] = ALL_SERVICES) -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, service="foretell-" + "+".join(services))
    serve(settings, services)
