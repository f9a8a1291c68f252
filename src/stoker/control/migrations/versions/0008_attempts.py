"""Attempts: every allocation of a job on a flavor (admission to release, launch, nodes, GPUs,
CPUs, outcome) for the accounting. Allocations made before this revision are not in it.

Revision ID: 0008
Revises: 0007
Create Date: 2027-02-03 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "attempts",
        sa.Column("job_id", ID, nullable=False),
        sa.Column("hold", sa.Integer(), nullable=False),
        sa.Column("flavor", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("admitted_at", sa.Double(), nullable=False),
        sa.Column("ranks", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Double(), nullable=False),
        sa.Column("cpus", sa.Double(), nullable=False),
        sa.Column("nodes", sa.JSON(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("ended_at", sa.Double(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("cause", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("job_id", "hold", "flavor"),
    )
    op.create_index("ix_attempts_admitted_at", "attempts", ["admitted_at"])
    op.create_index("ix_attempts_ended_at", "attempts", ["ended_at"])
    op.create_index("ix_attempts_tenant", "attempts", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_attempts_tenant", table_name="attempts")
    op.drop_index("ix_attempts_ended_at", table_name="attempts")
    op.drop_index("ix_attempts_admitted_at", table_name="attempts")
    op.drop_table("attempts")
