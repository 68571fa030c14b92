"""The MySQL/MariaDB engine for claude-db: ``pip install claude-db-mysql``, then ``--db mysql``."""

from __future__ import annotations

from collections.abc import Callable

from claude_db import Engine, hookimpl
from claude_db_mysql.engine import MySQLEngine

__all__ = ["MySQLEngine"]


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(MySQLEngine)
