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
        # The default fills existing rows, then goes: the stores set every value (as in 0001).
        op.add_column(table, sa.Column("dataset_group", sa.String(length=128), nullable=False, server_default=""))
        op.alter_column(table, "dataset_group", server_default=None)
        op.create_index(op.f(f"ix_{table}_dataset_group"), table, ["dataset_group"], unique=False)
    for statement in _BACKFILL:
        op.execute(statement)


# Each resource's group, from the tables that hold it (ids are [a-z0-9-]: no LIKE wildcards in names).
_BACKFILL = (
    """UPDATE batch_inference_jobs AS b SET dataset_group = s.dataset_group FROM solutions AS s
       WHERE b.solution_version LIKE s.name || '/versions/%'""",
    """UPDATE operations SET dataset_group = split_part(target, '/', 1) || '/' || split_part(target, '/', 2)
       WHERE target LIKE 'datasetGroups/%'""",
    """UPDATE operations AS o SET dataset_group = s.dataset_group FROM solutions AS s
       WHERE o.target LIKE s.name || '/versions/%'""",
    "UPDATE operations AS o SET dataset_group = p.dataset_group FROM predictors AS p WHERE o.target = p.name",
    """UPDATE operations AS o SET dataset_group = p.dataset_group FROM forecasts AS f, predictors AS p
       WHERE o.target = f.name AND f.predictor = p.name""",
    "UPDATE operations AS o SET dataset_group = c.dataset_group FROM campaigns AS c WHERE o.target = c.name",
    "UPDATE operations AS o SET dataset_group = b.dataset_group FROM batch_inference_jobs AS b WHERE o.target = b.name",
)


def downgrade() -> None:
    for table in ("operations", "batch_inference_jobs"):
        op.drop_index(op.f(f"ix_{table}_dataset_group"), table_name=table)
        op.drop_column(table, "dataset_group")
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
