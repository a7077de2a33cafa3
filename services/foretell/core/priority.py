"""The CPU priority of background work (training workers, large exports) that shares a machine with serving."""

from __future__ import annotations

import os

# Serving comes first: at the lowest priority background work gets about 1.5% of a CPU that a busy server also
# wants (nice 10 left a training worker 10%, enough to push a loaded 2-core server over its concurrency limit)
# and all of an idle one. In a pod of its own nothing changes.
WORKER_NICE = 19


def lower_priority() -> None:
    """Lowers this process's CPU priority before any thread (BLAS, torch) starts: threads inherit it."""
    os.nice(WORKER_NICE)
