"""Alembic environment for Foretell's schema (env.py, versions/); run it through foretell.core.migrations."""
