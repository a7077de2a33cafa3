"""SQLAlchemy storage of the training service: solutions, their versions, and training jobs.

A job row is the durable record of one worker run; it outlives the server process so that a
restarted service can re-attach to a worker still running or report one that died.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    select,
    update,
)
from sqlalchemy.engine import Row

from foretell.core.db import transaction
from foretell.core.errors import FailedPrecondition
from foretell.core.pins import Pins
from foretell.core.resources import Page, get_row, in_groups, insert_row, name_column, now, page_rows, tenant_key, times
from foretell.core.tenancy import mine

metadata = MetaData()

solutions = Table(
    "solutions",
    metadata,
    name_column(128),
    Column("dataset_group", String(128), nullable=False, index=True),
    Column("recipe", String(64), nullable=False),
    Column("hyper_parameters", JSON, nullable=False),
    Column("perform_hpo", Boolean, nullable=False, default=False),
    Column("hpo_config", LargeBinary, nullable=True),
    Column("event_type", String(256), nullable=False, default=""),
    Column("latest_solution_version", String(256), nullable=False, default=""),
    *times(),
    *tenant_key(),
)

solution_versions = Table(
    "solution_versions",
    metadata,
    name_column(256),
    Column("solution", String(128), nullable=False, index=True),
    Column("training_mode", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("snapshot_uri", Text, nullable=False, default=""),
    Column("artifact_uri", Text, nullable=False, default=""),
    Column("tuned_hyper_parameters", JSON, nullable=True),
    Column("metrics", JSON, nullable=True),
    Column("training_seconds", Float, nullable=True),
    Column("error", LargeBinary, nullable=True),
    Column("operation", String(80), nullable=False, default=""),
    *times(),
    *tenant_key(),
)

predictors = Table(
    "predictors",
    metadata,
    name_column(128),
    Column("dataset_group", String(128), nullable=False, index=True),
    # The Predictor proto as given (its inputs); outputs live in the columns below.
    Column("spec", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("snapshot_uri", Text, nullable=False, default=""),
    Column("artifact_uri", Text, nullable=False, default=""),
    Column("accuracy", JSON, nullable=True),
    Column("training_seconds", Float, nullable=True),
    Column("error", LargeBinary, nullable=True),
    Column("operation", String(80), nullable=False, default=""),
    *times(),
    *tenant_key(),
)

forecasts = Table(
    "forecasts",
    metadata,
    name_column(128),
    Column("predictor", String(128), nullable=False, index=True),
    Column("quantiles", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("artifact_uri", Text, nullable=False, default=""),
    Column("series_count", Integer, nullable=False, default=0),
    Column("error", LargeBinary, nullable=True),
    Column("operation", String(80), nullable=False, default=""),
    *times(),
    *tenant_key(),
)

# States of a job row: QUEUED (waiting for a slot), PREPARING (taking the snapshot),
# RUNNING (a worker exists: `handle` says where), DONE.
jobs = Table(
    "training_jobs",
    metadata,
    Column("name", String(80), primary_key=True),  # the operation name (global: operations/{uuid})
    Column("kind", String(32), nullable=False),  # "solution-version", "predictor", "forecast", "forecast-export"
    Column("target", String(256), nullable=False),
    Column("state", String(16), nullable=False),
    Column("job_dir", Text, nullable=False),
    Column("handle", String(256), nullable=False, default=""),
    Column("attempt", Integer, nullable=False, default=0),
    *times(),
    Column("tenant", String(64), nullable=False),  # whom the job runs for; last: where migration 0003 added it
)

ACTIVE_VERSION_STATES = ("PENDING", "RUNNING")


class TrainingStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        self._pins = Pins(engine)

    # ---- solutions -------------------------------------------------------------------

    def create_solution(self, values: dict[str, Any]) -> Row[Any]:
        return insert_row(self.engine, solutions, values, "solution")

    def get_solution(self, name: str) -> Row[Any]:
        return get_row(self.engine, solutions, name)

    def list_solutions(self, group: str, size: int, after: str | None, groups: Collection[str] | None = None) -> Page:
        where = [solutions.c.dataset_group == group] if group else []
        return page_rows(self.engine, solutions, size, after, *where, *in_groups(solutions.c.dataset_group, groups))

    def delete_solution(self, name: str) -> list[Row[Any]]:
        """Deletes the solution and its versions; returns the deleted versions (for their artifacts)."""
        self.get_solution(name)
        with transaction(self.engine) as conn:
            versions = conn.execute(
                select(solution_versions).where(mine(solution_versions), solution_versions.c.solution == name)
            ).fetchall()
            busy = [v.name for v in versions if v.state in ACTIVE_VERSION_STATES]
            if busy:
                raise FailedPrecondition(
                    f"solution {name!r} has versions still training: {', '.join(busy)}; cancel them first",
                    metadata={"resource": name},
                )
            self._not_served(name, [v.name for v in versions])
            conn.execute(delete(solution_versions).where(mine(solution_versions), solution_versions.c.solution == name))
            conn.execute(delete(solutions).where(mine(solutions), solutions.c.name == name))
        return list(versions)

    # ---- solution versions -----------------------------------------------------------

    def create_version(self, values: dict[str, Any]) -> Row[Any]:
        row = insert_row(self.engine, solution_versions, values, "solution version")
        with transaction(self.engine) as conn:
            conn.execute(
                update(solutions)
                .where(mine(solutions), solutions.c.name == values["solution"])
                .values(latest_solution_version=values["name"], update_time=now())
            )
        return row

    def get_version(self, name: str) -> Row[Any]:
        return get_row(self.engine, solution_versions, name)

    def update_version(self, name: str, **values: Any) -> Row[Any]:
        return self._update(solution_versions, name, values)

    def list_versions(self, solution: str, size: int, after: str | None) -> Page:
        return page_rows(self.engine, solution_versions, size, after, solution_versions.c.solution == solution)

    def latest_succeeded_version(self, solution: str) -> Row[Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(solution_versions)
                .where(
                    mine(solution_versions),
                    solution_versions.c.solution == solution,
                    solution_versions.c.state == "SUCCEEDED",
                )
                .order_by(solution_versions.c.create_time.desc())
                .limit(1)
            ).first()

    def delete_version(self, name: str) -> Row[Any]:
        row = self.get_version(name)
        if row.state in ACTIVE_VERSION_STATES:
            raise FailedPrecondition(
                f"solution version {name!r} is still training; cancel its operation first",
                metadata={"resource": name},
            )
        self._not_served(name, [name])
        with transaction(self.engine) as conn:
            conn.execute(delete(solution_versions).where(mine(solution_versions), solution_versions.c.name == name))
        return row

    # ---- predictors and forecasts ----------------------------------------------------

    def create_predictor(self, values: dict[str, Any]) -> Row[Any]:
        return insert_row(self.engine, predictors, values, "predictor")

    def get_predictor(self, name: str) -> Row[Any]:
        return get_row(self.engine, predictors, name)

    def update_predictor(self, name: str, **values: Any) -> Row[Any]:
        return self._update(predictors, name, values)

    def list_predictors(self, group: str, size: int, after: str | None, groups: Collection[str] | None = None) -> Page:
        where = [predictors.c.dataset_group == group] if group else []
        return page_rows(self.engine, predictors, size, after, *where, *in_groups(predictors.c.dataset_group, groups))

    def delete_predictor(self, name: str) -> Row[Any]:
        row = self.get_predictor(name)
        if row.state in ACTIVE_VERSION_STATES:
            raise FailedPrecondition(
                f"predictor {name!r} is still training; cancel its operation first", metadata={"resource": name}
            )
        with transaction(self.engine) as conn:
            used = conn.execute(
                select(forecasts.c.name).where(mine(forecasts), forecasts.c.predictor == name).limit(5)
            ).scalars()
            blocking = list(used)
            if blocking:
                raise FailedPrecondition(
                    f"predictor {name!r} has forecasts ({', '.join(blocking)}); delete them first",
                    metadata={"resource": name},
                )
            conn.execute(delete(predictors).where(mine(predictors), predictors.c.name == name))
        return row

    def create_forecast(self, values: dict[str, Any]) -> Row[Any]:
        return insert_row(self.engine, forecasts, values, "forecast")

    def get_forecast(self, name: str) -> Row[Any]:
        return get_row(self.engine, forecasts, name)

    def update_forecast(self, name: str, **values: Any) -> Row[Any]:
        return self._update(forecasts, name, values)

    def list_forecasts(
        self, predictor: str, size: int, after: str | None, groups: Collection[str] | None = None
    ) -> Page:
        where = [forecasts.c.predictor == predictor] if predictor else []
        if groups is not None:
            visible = select(predictors.c.name).where(mine(predictors), *in_groups(predictors.c.dataset_group, groups))
            where.append(forecasts.c.predictor.in_(visible))
        return page_rows(self.engine, forecasts, size, after, *where)

    def delete_forecast(self, name: str) -> Row[Any]:
        row = self.get_forecast(name)
        if row.state in ACTIVE_VERSION_STATES:
            raise FailedPrecondition(
                f"forecast {name!r} is still being generated; cancel its operation first", metadata={"resource": name}
            )
        with transaction(self.engine) as conn:
            conn.execute(delete(forecasts).where(mine(forecasts), forecasts.c.name == name))
        return row

    def _not_served(self, name: str, versions: list[str]) -> None:
        """FAILED_PRECONDITION while a campaign serves (or is switching to) one of `versions` (core/pins.py): its
        model would go from under it, and its next load would fail."""
        campaigns = self._pins.holders(versions)
        if campaigns:
            raise FailedPrecondition(
                f"{name!r} is served by {', '.join(campaigns[:5])}; update or delete those campaigns first",
                metadata={"resource": name},
            )

    def _update(self, table: Table, name: str, values: dict[str, Any]) -> Row[Any]:
        with transaction(self.engine) as conn:
            conn.execute(update(table).where(mine(table), table.c.name == name).values(update_time=now(), **values))
            return get_row(self.engine, table, name, conn)

    # ---- jobs ------------------------------------------------------------------------

    def create_job(self, name: str, kind: str, target: str, job_dir: str) -> Row[Any]:
        return insert_row(
            self.engine,
            jobs,
            {"name": name, "kind": kind, "target": target, "state": "QUEUED", "job_dir": job_dir},
            "job",
        )

    def get_job(self, name: str) -> Row[Any]:
        return get_row(self.engine, jobs, name)

    def update_job(self, name: str, **values: Any) -> None:
        with transaction(self.engine) as conn:
            conn.execute(update(jobs).where(mine(jobs), jobs.c.name == name).values(update_time=now(), **values))

    def unfinished_jobs(self) -> list[Row[Any]]:
        """Every tenant's jobs not DONE (each runs as its row's tenant)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(jobs).where(jobs.c.state != "DONE").order_by(jobs.c.create_time)))
