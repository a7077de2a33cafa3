"""SQLAlchemy storage of the recommendation service: campaigns, filters, batch inference jobs.

Also maps rows to protos (the jobs answer operations with them) and keeps parsed filters in a
short-lived read-through cache, since every filtered request needs one.
"""

from __future__ import annotations

import threading
import time
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

from foretell.core import tenancy
from foretell.core.db import transaction
from foretell.core.errors import absent
from foretell.core.resources import (
    Page,
    get_row,
    in_groups,
    insert_row,
    name_column,
    now,
    page_rows,
    status_of,
    tenant_key,
    times,
    timestamp_of,
)
from foretell.core.tenancy import mine
from foretell.recommendation.filters import FilterExpression, parse_filter
from foretell.v1 import recommendation_pb2 as pb

metadata = MetaData()

campaigns = Table(
    "campaigns",
    metadata,
    name_column(128),
    Column("solution_version", String(256), nullable=False, index=True),
    Column("dataset_group", String(128), nullable=False, default=""),
    # Set once the version was resolved; a restart reloads from here without asking training.
    Column("artifact_uri", Text, nullable=False, default=""),
    Column("exploration_weight", Float, nullable=False, default=0.0),
    Column("exploration_cutoff_days", Float, nullable=False, default=0.0),
    Column("metadata_enabled", Boolean, nullable=False, default=False),
    Column("state", String(16), nullable=False),
    Column("error", LargeBinary, nullable=True),
    Column("operation", String(80), nullable=False, default=""),
    *times(),
    *tenant_key(),
    # Bumped whenever what the campaign serves changes: replicas load a higher one (campaigns.reconcile).
    # Last: where migration 0004 added it.
    Column("generation", Integer, nullable=False, default=0),
)
filters = Table(
    "filters",
    metadata,
    name_column(128),
    Column("dataset_group", String(128), nullable=False, index=True),
    Column("expression", Text, nullable=False),
    *times(),
    *tenant_key(),
)
batch_jobs = Table(
    "batch_inference_jobs",
    metadata,
    name_column(128),
    Column("solution_version", String(256), nullable=False, index=True),
    Column("input_uri", Text, nullable=False),
    Column("output_uri", Text, nullable=False),
    Column("num_results", Integer, nullable=False),
    Column("filter", String(128), nullable=False, default=""),
    Column("filter_values", JSON, nullable=True),
    Column("state", String(16), nullable=False),
    Column("error", LargeBinary, nullable=True),
    Column("operation", String(80), nullable=False, default=""),
    *times(),
    # That of the solution version, stored so that lists filter by it in SQL. Last: where migration 0002 added it.
    Column("dataset_group", String(128), nullable=False, default="", index=True),
    *tenant_key(),
)

NEXT_GENERATION = campaigns.c.generation + 1

# Parsed filters are cached this long; filters are immutable, so only a deletion elsewhere can
# make an entry stale (another replica may serve a deleted filter for up to this long).
FILTER_CACHE_SECONDS = 30.0


class RecommendationStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        self._filters: dict[tuple[str, str], tuple[float, FilterExpression, str]] = {}
        self._filter_lock = threading.Lock()

    # ---- campaigns ---------------------------------------------------------------------------

    def create_campaign(self, values: dict[str, Any]) -> Row[Any]:
        return insert_row(self.engine, campaigns, values, "campaign")

    def get_campaign(self, name: str) -> Row[Any]:
        return get_row(self.engine, campaigns, name)

    def list_campaigns(self, size: int, after: str | None, groups: Collection[str] | None = None) -> Page:
        return page_rows(self.engine, campaigns, size, after, *in_groups(campaigns.c.dataset_group, groups))

    def campaigns_in(self, *states: str) -> list[Row[Any]]:
        """Every tenant's campaigns in `states` (start-up recovery acts for each row's tenant)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(campaigns).where(campaigns.c.state.in_(states))).fetchall())

    def update_campaign(self, name: str, **values: Any) -> Row[Any]:
        with transaction(self.engine) as conn:
            changed = conn.execute(
                update(campaigns).where(mine(campaigns), campaigns.c.name == name).values(update_time=now(), **values)
            ).rowcount
            if not changed:
                raise absent(name)
            return get_row(self.engine, campaigns, name, conn)

    def delete_campaign(self, name: str) -> None:
        with transaction(self.engine) as conn:
            if not conn.execute(delete(campaigns).where(mine(campaigns), campaigns.c.name == name)).rowcount:
                raise absent(name)

    # ---- filters -----------------------------------------------------------------------------

    def create_filter(self, name: str, dataset_group: str, expression: str) -> Row[Any]:
        return insert_row(
            self.engine, filters, {"name": name, "dataset_group": dataset_group, "expression": expression}, "filter"
        )

    def get_filter(self, name: str) -> Row[Any]:
        return get_row(self.engine, filters, name)

    def list_filters(
        self, dataset_group: str, size: int, after: str | None, groups: Collection[str] | None = None
    ) -> Page:
        where = [filters.c.dataset_group == dataset_group] if dataset_group else []
        return page_rows(self.engine, filters, size, after, *where, *in_groups(filters.c.dataset_group, groups))

    def delete_filter(self, name: str) -> None:
        with transaction(self.engine) as conn:
            if not conn.execute(delete(filters).where(mine(filters), filters.c.name == name)).rowcount:
                raise absent(name)
        with self._filter_lock:
            self._filters.pop((tenancy.current(), name), None)

    def parsed_filter(self, name: str) -> tuple[FilterExpression, str]:
        """(expression, dataset group) of filter `name`; NotFound naming it."""
        key = (tenancy.current(), name)  # names are per tenant
        cached = self._filters.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1], cached[2]
        row = self.get_filter(name)
        expression = parse_filter(row.expression)
        with self._filter_lock:
            if len(self._filters) > 1000:
                self._filters.clear()
            self._filters[key] = (time.monotonic() + FILTER_CACHE_SECONDS, expression, row.dataset_group)
        return expression, row.dataset_group

    # ---- batch inference jobs ----------------------------------------------------------------

    def create_batch_job(self, values: dict[str, Any]) -> Row[Any]:
        return insert_row(self.engine, batch_jobs, values, "batch inference job")

    def get_batch_job(self, name: str) -> Row[Any]:
        return get_row(self.engine, batch_jobs, name)

    def list_batch_jobs(
        self, solution_version: str, size: int, after: str | None, groups: Collection[str] | None = None
    ) -> Page:
        where = [batch_jobs.c.solution_version == solution_version] if solution_version else []
        return page_rows(self.engine, batch_jobs, size, after, *where, *in_groups(batch_jobs.c.dataset_group, groups))

    def batch_jobs_in(self, *states: str) -> list[Row[Any]]:
        """Every tenant's batch jobs in `states` (start-up recovery acts for each row's tenant)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(batch_jobs).where(batch_jobs.c.state.in_(states))).fetchall())

    def update_batch_job(self, name: str, **values: Any) -> Row[Any]:
        with transaction(self.engine) as conn:
            conn.execute(
                update(batch_jobs)
                .where(mine(batch_jobs), batch_jobs.c.name == name)
                .values(update_time=now(), **values)
            )
            return get_row(self.engine, batch_jobs, name, conn)


# ---- rows -> protos ------------------------------------------------------------------------


def state_value(state: str) -> Any:
    return pb.DeploymentState.Value("DEPLOYMENT_STATE_" + state)


def to_campaign(row: Row[Any]) -> pb.Campaign:
    return pb.Campaign(
        name=row.name,
        solution_version=row.solution_version,
        exploration_config=pb.ExplorationConfig(
            exploration_weight=row.exploration_weight,
            exploration_item_age_cutoff_days=row.exploration_cutoff_days,
        ),
        enable_metadata_with_recommendations=row.metadata_enabled,
        state=state_value(row.state),
        error=status_of(row.error),
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
    )


def to_filter(row: Row[Any]) -> pb.Filter:
    return pb.Filter(
        name=row.name,
        dataset_group=row.dataset_group,
        filter_expression=row.expression,
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
    )


def to_batch_job(row: Row[Any]) -> pb.BatchInferenceJob:
    return pb.BatchInferenceJob(
        name=row.name,
        solution_version=row.solution_version,
        input_uri=row.input_uri,
        output_uri=row.output_uri,
        num_results=row.num_results,
        filter=row.filter,
        filter_values=row.filter_values or {},
        state=state_value(row.state),
        error=status_of(row.error),
        create_time=timestamp_of(row.create_time),
        update_time=timestamp_of(row.update_time),
        operation=row.operation,
    )
