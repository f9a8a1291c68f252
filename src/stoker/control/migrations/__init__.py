"""Alembic migrations of the control-plane store, run programmatically by `control.db.migrate`."""
