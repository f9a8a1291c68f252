"""Node health: each node's health state, its automatic cordon, consecutive passes and
failures, repair flag, drain and last check reports; and ``node_events``, its history.

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-20 10:00:00.000000
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

COLUMNS: tuple[sa.Column[Any], ...] = (
    sa.Column("cordoned_by", sa.String(length=128), nullable=False, server_default=""),
    sa.Column("auto_cordon", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("health", sa.String(length=16), nullable=False, server_default="healthy"),
    sa.Column("health_reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("passes", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("repair", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("drain", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("drain_reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("drained_at", sa.Double(), nullable=True),
    sa.Column("last_checks", sa.JSON(), nullable=True),
)


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("nodes", column)
    op.create_table(
        "node_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_node_events_node_id", "node_events", ["node", "id"])


def downgrade() -> None:
    op.drop_index("ix_node_events_node_id", table_name="node_events")
    op.drop_table("node_events")
    with op.batch_alter_table("nodes") as batch:  # SQLite drops columns by copying the table
        for column in reversed(COLUMNS):
            batch.drop_column(column.name)
