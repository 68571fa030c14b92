"""Review M9: an engine written for the old ``Engine.query`` contract (a plain
QueryResult, not a context manager) still works with ``claude-db query``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from claude_db import Engine
from claude_db.app import App
from claude_db.engine import Endpoint, QueryResult
from claude_db.lifecycle import delete_session, start_session
from claude_db_postgres import PostgresEngine


class OldQueryEngine(PostgresEngine):
    def query(self, endpoint: Endpoint, text: str) -> Any:  # the old contract
        return QueryResult(columns=["n"], rows=[(1,)], status="SELECT 1")


@pytest.fixture
def engine_class() -> type[Engine]:
    return OldQueryEngine


def test_a_plain_query_result_is_printed(
    claude_app: App, registered_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import claude_db.cli.common as common_cli
    import claude_db.cli.db as db_cli

    for module in (common_cli, db_cli):
        monkeypatch.setattr(module, "get_app", lambda: claude_app)
    start_session(claude_app, "old-query", engine_name="postgres", runtime_name="local",
                  workdir=tmp_path)
    try:
        result = CliRunner().invoke(db_cli.create_app(),
                                    ["query", "SELECT 1 AS n", "--csv", "--session", "old-query"])
        assert result.exit_code == 0, (result.output, result.exception)
        assert result.output == "n\n1\n"
    finally:
        delete_session(claude_app, "old-query")
