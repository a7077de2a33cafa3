"""Replicas that converge: leases on background work (core/leases.py), so that a starting replica never fails
another's running job; a generation per campaign, which every recommendation replica reconciles towards; pins
(core/pins.py), so that a solution version a campaign serves is not deleted under it.

Existing campaigns pin the version they serve.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "work_leases",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "tenant", "name"),
    )
    op.create_table(
        "resource_pins",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.String(length=256), nullable=False),
        sa.Column("holder", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "resource", "holder"),
    )
    op.execute(
        "INSERT INTO resource_pins (tenant, resource, holder) SELECT tenant, solution_version, name FROM campaigns"
        " WHERE solution_version <> ''"
    )
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("campaigns") as batch:
        batch.alter_column("generation", server_default=None)  # the store sets every value (as in 0001)


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("generation")
    op.drop_table("resource_pins")
    op.drop_table("work_leases")
