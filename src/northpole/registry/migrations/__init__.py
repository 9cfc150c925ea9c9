"""Alembic migrations of the PostgreSQL gift registry (run by :mod:`northpole.registry.migrate`)."""
