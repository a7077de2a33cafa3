"""Format versions of stored artifacts (models, predictors, forecast tables).

Artifacts outlive the server that wrote them: a rollback, or a replica not yet upgraded, may meet one that a newer
server wrote. Its loader must refuse it clearly (FAILED_PRECONDITION: upgrade the server) instead of misreading it.
A format goes up only when an older server could not read the new files correctly.
"""

from __future__ import annotations

from typing import Any

from foretell.core.errors import FailedPrecondition


class NewerFormat(FailedPrecondition):
    """An artifact written by a newer server than this one."""


def check(meta: dict[str, Any], understood: int, what: str, *, missing: int | None) -> int:
    """The `format` recorded in `meta` (`missing` when absent: what servers wrote before formats were recorded).

    NewerFormat above `understood`; ValueError when it is absent without a default or not a positive integer.
    """
    found = meta.get("format", missing)
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise ValueError(f"{what} has no valid format version ({found!r})")
    if found > understood:
        raise NewerFormat(
            f"{what} format {found} is newer than this server understands ({understood}); upgrade the server",
            metadata={"format": str(found), "understood": str(understood)},
        )
    return found
