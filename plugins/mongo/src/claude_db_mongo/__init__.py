"""The MongoDB engine for claude-db (``pip install claude-db-mongo``; ``--db mongo``)."""

from __future__ import annotations

from collections.abc import Callable

from claude_db import Engine, hookimpl
from claude_db_mongo.engine import MongoEngine

__all__ = ["MongoEngine"]


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(MongoEngine)
