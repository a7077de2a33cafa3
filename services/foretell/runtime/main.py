"""Process entry point: the only place that reads settings, configures logging and handles signals."""

from __future__ import annotations

import faulthandler
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
SIGNAL_CHECK_SECONDS = 0.5
# How far past its grace period a stopping process may run before it dumps every thread's stack and exits 1.
STOP_SLACK_SECONDS = 5.0


def serve(
    settings: Settings, services: Iterable[ServiceName] = ALL_SERVICES, ready: threading.Event | None = None
) -> None:
    """Runs until SIGTERM/SIGINT, then drains in-flight calls for settings.grace_seconds."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # A stop that overruns its grace (a handler stuck in a call that ignores cancellation, or a thread the
        # interpreter would wait for forever at exit) must not keep the process alive: the stacks of all threads go
        # to stderr as evidence, then the process exits 1. Armed until the process ends, interpreter exit included.
        faulthandler.dump_traceback_later(settings.grace_seconds + STOP_SLACK_SECONDS, exit=True)
        log.info("shutting down", extra={"signal": signal.Signals(signum).name, "grace_s": settings.grace_seconds})
        stopping.set()

    # Before the server says "serving": a supervisor may stop it the moment it is up.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app: App = create_server(settings, services)
    app.start()
    if ready is not None:
        ready.set()
    # Python runs signal handlers in the main thread, but the kernel may deliver SIGTERM to any thread (gRPC's, the
    # pool's); a main thread blocked in a plain wait() then never wakes to run the handler. Waking every half
    # second lets it (a server under load once ignored SIGTERM this way until killed).
    while not stopping.wait(SIGNAL_CHECK_SECONDS):
        pass
    app.stop(settings.grace_seconds)
    log.info("stopped")


def run(services: Iterable[ServiceName] = ALL_SERVICES) -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, service="foretell-" + "+".join(services))
    serve(settings, services)
