"""The built-in PostgreSQL engine keeps the engine contract (claude_db.testing.EngineContract):
host binaries on the local runtime, the locally built test image on docker."""

from __future__ import annotations

import os

from claude_db.testing import EngineContract


class TestPostgresContract(EngineContract):
    engine_name = "postgres"
    runtimes = ("local", "docker")
    docker_image = os.environ.get("CLAUDE_DB_IMAGE") or "claude-db-test/postgres:15"
