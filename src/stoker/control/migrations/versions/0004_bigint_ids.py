"""64-bit row ids on PostgreSQL (its INTEGER is 32-bit; the API's ids are 64-bit). SQLite's
INTEGER is 64-bit already: nothing to do there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-20 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (("jobs", "id"), ("events", "id"), ("events", "job_id"), ("processes", "job_id"),
           ("audit", "id"))
SEQUENCES = ("jobs_id_seq", "events_id_seq", "audit_id_seq")


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())
    for sequence in SEQUENCES:
        op.execute(f"ALTER SEQUENCE {sequence} AS bigint")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for sequence in SEQUENCES:
        op.execute(f"ALTER SEQUENCE {sequence} AS integer")
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
