"""The scheduler's state between cycles, kept by the leader for every server and for its
successor: why each queued job waits, the nominated jobs, admission fair sharing's usage.

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-10 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The jobs' id type since 0004: BIGINT on PostgreSQL, INTEGER on SQLite.
JOB_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "waiting",
        sa.Column("job_id", JOB_ID, nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("flavor", sa.String(length=128), nullable=True),
        sa.Column("requested", sa.JSON(), nullable=True),
        sa.Column("available", sa.JSON(), nullable=True),
        sa.Column("borrowable", sa.JSON(), nullable=True),
        sa.Column("starving", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_table(
        "nominations",
        sa.Column("job_id", JOB_ID, nullable=False),
        sa.Column("victims", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_table(
        "tenant_usage",
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("penalty", sa.JSON(), nullable=False),
        sa.Column("sampled_at", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("queue", "tenant"),
    )


def downgrade() -> None:
    op.drop_table("tenant_usage")
    op.drop_table("nominations")
    op.drop_table("waiting")
