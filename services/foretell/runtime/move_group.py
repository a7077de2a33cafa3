"""Hands a dataset group, and everything that belongs to it, from one tenant to another (`foretell db move-group`).

An upgrade to tenant namespaces (migration 0003) leaves every existing resource in the default tenant "", the
tenant of a server without API keys, which no API key acts for: an operator moves each group to the tenant whose
keys list it (docs/security.md, "Moving to tenant namespaces"). Moved in one transaction, or not at all: the
group, its datasets, their import and export jobs and rows, the solutions (with their versions), predictors (with
their forecasts), campaigns, filters and batch inference jobs of the group, its operations and finished training
jobs. Schemas its datasets use are copied (other groups of the old tenant may use them too). Artifacts stay where
they are: rows keep their URIs.

Run it with the services stopped: serving processes cache what they loaded by (tenant, name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, insert, select, update

from foretell.core import operations, tenancy
from foretell.dataset import parts
from foretell.dataset import store as dataset_store
from foretell.recommendation import store as recommendation_store
from foretell.training import store as training_store

UNFINISHED = ("PENDING", "RUNNING", "QUEUED", "PREPARING", "UPDATING")


class MoveRefused(ValueError):
    """The move would clash with the new tenant's names or cut an unfinished job short; nothing was changed."""


@dataclass
class Moved:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, what: str, n: int) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n


def move_group(engine: Engine, group: str, to_tenant: str, from_tenant: str = tenancy.DEFAULT) -> Moved:
    """Moves dataset group `group` ("datasetGroups/{id}") of `from_tenant` to `to_tenant`; MoveRefused otherwise."""
    if to_tenant != tenancy.DEFAULT and not tenancy.PATTERN.fullmatch(to_tenant):
        raise MoveRefused(f"{to_tenant!r} is not a tenant id ([A-Za-z0-9][A-Za-z0-9._@-]*, at most 63 characters)")
    if to_tenant == from_tenant:
        raise MoveRefused("the group already belongs to that tenant")
    moved = Moved()
    with engine.begin() as conn:
        plan = _Plan(conn, group, from_tenant, to_tenant)
        plan.check()
        plan.apply(moved)
    return moved


class _Plan:
    def __init__(self, conn: Connection, group: str, source: str, target: str) -> None:
        self.conn, self.group, self.source, self.target = conn, group, source, target
        d, t, r = dataset_store, training_store, recommendation_store
        if not self._names(d.dataset_groups, d.dataset_groups.c.name == group):
            raise MoveRefused(f"tenant {source!r} has no dataset group {group!r}")
        self.datasets = self._names(d.datasets, d.datasets.c.dataset_group == group)
        self.solutions = self._names(t.solutions, t.solutions.c.dataset_group == group)
        self.predictors = self._names(t.predictors, t.predictors.c.dataset_group == group)
        # Every resource table's rows that move, as (table, WHERE clause over the source tenant's rows).
        self.tables: list[tuple[str, Table, Any]] = [
            ("dataset groups", d.dataset_groups, d.dataset_groups.c.name == group),
            ("datasets", d.datasets, d.datasets.c.dataset_group == group),
            ("import jobs", d.import_jobs, d.import_jobs.c.dataset.in_(self.datasets)),
            ("export jobs", d.export_jobs, d.export_jobs.c.dataset.in_(self.datasets)),
            ("solutions", t.solutions, t.solutions.c.dataset_group == group),
            ("solution versions", t.solution_versions, t.solution_versions.c.solution.in_(self.solutions)),
            ("predictors", t.predictors, t.predictors.c.dataset_group == group),
            ("forecasts", t.forecasts, t.forecasts.c.predictor.in_(self.predictors)),
            ("campaigns", r.campaigns, r.campaigns.c.dataset_group == group),
            ("filters", r.filters, r.filters.c.dataset_group == group),
            ("batch inference jobs", r.batch_jobs, r.batch_jobs.c.dataset_group == group),
        ]

    def _names(self, table: Table, where: Any, tenant: str | None = None) -> list[str]:
        tenant = self.source if tenant is None else tenant
        rows = self.conn.execute(select(table.c.name).where(table.c.tenant == tenant, where))
        return [str(name) for name in rows.scalars()]

    def check(self) -> None:
        clashes: list[str] = []
        for _, table, where in self.tables:
            names = self._names(table, where)
            if names:
                clashes += self._names(table, table.c.name.in_(names), self.target)
            if "state" in table.c:
                busy = self.conn.execute(
                    select(table.c.name).where(table.c.tenant == self.source, where, table.c.state.in_(UNFINISHED))
                ).scalars()
                for name in busy:
                    raise MoveRefused(f"{name} is unfinished; move the group once its jobs have ended")
        if clashes:
            raise MoveRefused(f"tenant {self.target!r} already has {', '.join(sorted(clashes)[:10])}")

    def apply(self, moved: Moved) -> None:
        self._copy_schemas(moved)
        for what, table, where in self.tables:
            done = self.conn.execute(
                update(table).where(table.c.tenant == self.source, where).values(tenant=self.target)
            ).rowcount
            moved.add(what, done)
        old, new = tenancy.prefix(self.source), tenancy.prefix(self.target)
        for table in (*dataset_store.ROW_TABLES.values(), parts.dataset_parts, parts.dataset_marks):
            for name in self.datasets:
                done = self.conn.execute(
                    update(table).where(table.c.dataset == old + name).values(dataset=new + name)
                ).rowcount
                moved.add("rows", done)
        ops = operations.operations_table
        moved.add(
            "operations",
            self.conn.execute(
                update(ops)
                .where(ops.c.tenant == self.source, ops.c.dataset_group == self.group)
                .values(tenant=self.target)
            ).rowcount,
        )
        jobs = training_store.jobs
        targets = [*self.solutions, *self.predictors]
        owned = [jobs.c.target.in_(targets)] + [jobs.c.target.like(f"{s}/versions/%") for s in self.solutions]
        forecasts = self._names(training_store.forecasts, training_store.forecasts.c.predictor.in_(self.predictors))
        owned.append(jobs.c.target.in_(forecasts))
        for clause in owned:
            moved.add(
                "training jobs",
                self.conn.execute(
                    update(jobs)
                    .where(jobs.c.tenant == self.source, jobs.c.state == "DONE", clause)
                    .values(tenant=self.target)
                ).rowcount,
            )

    def _copy_schemas(self, moved: Moved) -> None:
        d = dataset_store
        used = self.conn.execute(
            select(d.datasets.c.schema).where(
                d.datasets.c.tenant == self.source, d.datasets.c.dataset_group == self.group
            )
        ).scalars()
        for name in sorted(set(used)):
            source = self.conn.execute(
                select(d.schemas).where(and_(d.schemas.c.tenant == self.source, d.schemas.c.name == name))
            ).first()
            there = self.conn.execute(
                select(d.schemas).where(and_(d.schemas.c.tenant == self.target, d.schemas.c.name == name))
            ).first()
            if source is None:
                continue
            if there is not None:
                if there.fields != source.fields or there.domain != source.domain:
                    raise MoveRefused(f"tenant {self.target!r} already has a different {name}")
                continue
            self.conn.execute(insert(d.schemas).values({**source._mapping, "tenant": self.target}))
            moved.add("schemas copied", 1)
