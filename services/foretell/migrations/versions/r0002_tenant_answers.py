"""Tenant-safe answers: request ids scoped by principal and bound to a fingerprint, a shared secret for
page tokens, and the dataset group of operations and batch inference jobs so that lists filter in SQL.

`idempotency_keys` is rebuilt: its stored answers cannot be bound to a principal or a request after the
fact, and they are only retry answers (a retry of a call made before the upgrade runs again). Downgrading
drops the new table's answers the same way.

Existing operations and batch jobs get their group from the resources they name (rows whose resource is
gone keep "": only keys for every group list them).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("idempotency_keys")
    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("principal", "method", "request_id"),
    )
    op.create_index(op.f("ix_idempotency_keys_create_time"), "idempotency_keys", ["create_time"], unique=False)
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    for table in ("batch_inference_jobs", "operations"):
        # Batch mode: SQLite alters a column by copying the table. The default fills existing rows, then goes: the
        # stores set every value (as in 0001).
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("dataset_group", sa.String(length=128), nullable=False, server_default=""))
        with op.batch_alter_table(table) as batch:
            batch.alter_column("dataset_group", server_default=None)
            batch.create_index(op.f(f"ix_{table}_dataset_group"), ["dataset_group"], unique=False)
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    """Each operation's and batch job's group, from the resources they name (in Python: the same on SQLite and
    PostgreSQL, and these metadata tables are small)."""

    def pairs(sql: str) -> dict[str, str]:
        return {str(a): str(b) for a, b in conn.execute(sa.text(sql))}

    solutions = pairs("SELECT name, dataset_group FROM solutions")
    predictors = pairs("SELECT name, dataset_group FROM predictors")
    forecasts = {f: predictors.get(p, "") for f, p in pairs("SELECT name, predictor FROM forecasts").items()}
    campaigns = pairs("SELECT name, dataset_group FROM campaigns")

    def group_of(name: str) -> str:
        if name.startswith("datasetGroups/"):
            return "/".join(name.split("/")[:2])
        if name.startswith("solutions/"):
            return solutions.get("/".join(name.split("/")[:2]), "")
        return predictors.get(name) or forecasts.get(name) or campaigns.get(name, "")

    batch = {
        name: group_of(version)
        for name, version in pairs("SELECT name, solution_version FROM batch_inference_jobs").items()
    }
    for name, group in batch.items():
        conn.execute(
            sa.text("UPDATE batch_inference_jobs SET dataset_group = :g WHERE name = :n"), {"g": group, "n": name}
        )
    for name, target in pairs("SELECT name, target FROM operations").items():
        group = batch.get(target) or group_of(target)
        if group:
            conn.execute(sa.text("UPDATE operations SET dataset_group = :g WHERE name = :n"), {"g": group, "n": name})


def downgrade() -> None:
    for table in ("operations", "batch_inference_jobs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(op.f(f"ix_{table}_dataset_group"))
            batch.drop_column("dataset_group")
    op.drop_table("server_secrets")
    op.drop_index(op.f("ix_idempotency_keys_create_time"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.create_table(
        "idempotency_keys",
        sa.Column("method", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("method", "request_id"),
    )
