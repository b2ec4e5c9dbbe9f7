"""The store tests' databases: a fresh PostgreSQL database per test (tests.services)."""

from tests.services import pg_database

__all__ = ["pg_database"]
