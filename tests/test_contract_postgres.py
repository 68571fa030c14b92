"""The built-in PostgreSQL engine keeps the engine contract (claude_db.testing.EngineContract)."""

from __future__ import annotations

from claude_db.testing import EngineContract


class TestPostgresContract(EngineContract):
    engine_name = "postgres"
    runtimes = ("local",)
