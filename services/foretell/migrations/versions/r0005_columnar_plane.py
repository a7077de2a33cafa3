"""The columnar data plane (dataset/parts.py): a manifest of each dataset's Parquet files, and the mark of the
rows written one at a time that the files already hold.

Rows an earlier release imported into SQL stay there, as the datasets' SQL tail: readers take them with the
files, and the first snapshot of each dataset folds them into a Parquet file.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dataset_parts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("dataset", sa.String(length=320), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("import_job", sa.String(length=384), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dataset_parts_dataset", "dataset_parts", ["dataset"])
    op.create_table(
        "dataset_marks",
        sa.Column("dataset", sa.String(length=320), nullable=False),
        sa.Column("compacted_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("dataset"),
    )


def downgrade() -> None:
    op.drop_table("dataset_marks")
    op.drop_index("ix_dataset_parts_dataset", table_name="dataset_parts")
    op.drop_table("dataset_parts")
