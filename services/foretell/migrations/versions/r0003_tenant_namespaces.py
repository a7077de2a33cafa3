"""Tenant namespaces: every resource table is keyed by (tenant, name), so two tenants may own the same name.

Existing rows belong to the default tenant "" (the tenant of a server without API keys); `foretell db
move-group` hands a dataset group and everything of it to a tenant (docs/security.md). Operations and training
jobs keep their global names (operations/{uuid}) and record their tenant. The row tables (interactions,
entities, series) are not touched: the default tenant's rows keep their keys.

Downgrading refuses while any row belongs to a tenant other than "": names would collide.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYED = (
    "dataset_groups",
    "schemas",
    "datasets",
    "import_jobs",
    "export_jobs",
    "solutions",
    "solution_versions",
    "predictors",
    "forecasts",
    "campaigns",
    "filters",
    "batch_inference_jobs",
)


def _tenant_column() -> sa.Column[str]:
    return sa.Column("tenant", sa.String(length=64), nullable=False, server_default="")


def _set_key(table: str, columns: list[str]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        # PostgreSQL named the unnamed key of 0001 {table}_pkey.
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, columns)
        return
    # SQLite changes a key by copying the table (batch mode). The copy's columns still say which was the key, so
    # SQLAlchemy warns that the named key replaces it, which is the point; tests/service/test_sqlite_upgrade.py
    # upgrades an old file, so a release that makes this an error is caught there.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*as primary_key=True, not matching", category=sa.exc.SAWarning)
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.create_primary_key(f"{table}_pkey", columns)


def upgrade() -> None:
    for table in KEYED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(_tenant_column())
        _set_key(table, ["tenant", "name"])
        with op.batch_alter_table(table) as batch:
            batch.alter_column("tenant", server_default=None)  # the stores set every value (as in 0001)
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint("uq_dataset_type_per_group", type_="unique")
        batch.create_unique_constraint("uq_dataset_type_per_group", ["tenant", "dataset_group", "dataset_type"])
    for table in ("operations", "training_jobs"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(_tenant_column())
        with op.batch_alter_table(table) as batch:
            batch.alter_column("tenant", server_default=None)
    op.create_index(op.f("ix_operations_tenant"), "operations", ["tenant"], unique=False)


def downgrade() -> None:
    conn = op.get_bind()
    for table in (*KEYED, "operations", "training_jobs"):
        if conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE tenant <> ''")).scalar():  # noqa: S608 (constant)
            raise RuntimeError(f"{table} holds rows of tenants other than the default one; move them first")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("tenant")
    op.drop_index(op.f("ix_operations_tenant"), table_name="operations")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("tenant")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint("uq_dataset_type_per_group", type_="unique")
        batch.create_unique_constraint("uq_dataset_type_per_group", ["dataset_group", "dataset_type"])
    for table in KEYED:
        _set_key(table, ["name"])
        with op.batch_alter_table(table) as batch:
            batch.drop_column("tenant")
