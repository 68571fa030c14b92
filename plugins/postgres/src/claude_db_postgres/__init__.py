"""The PostgreSQL engine for claude-db (the default engine)."""

from __future__ import annotations

from collections.abc import Callable

from claude_db import Engine, hookimpl
from claude_db_postgres.engine import PostgresEngine

__all__ = ["PostgresEngine"]


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(PostgresEngine)
