"""Core adds ``claude-db <shell_name>`` for every engine: an engine plugin needs no command
(nor any CLI import) for its shell alias."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from typer.testing import CliRunner

import claude_db.cli.db as db_cli
from claude_db import Engine, hookimpl
from claude_db.app import App
from claude_db_postgres import PostgresEngine


@pytest.fixture
def engine_class() -> type[Engine]:
    return PostgresEngine


class ClaimsPsql(PostgresEngine):
    name = "claims-psql"  # a second engine whose client is psql too: the first keeps it


class OwnClient(PostgresEngine):
    name = "own-client"
    shell_name = "own-sh"


class Engines:
    @hookimpl
    def register_engines(self, register: Callable[[type[Engine]], None]) -> None:
        register(ClaimsPsql)
        register(OwnClient)


def test_each_engine_gets_its_shell_alias_from_shell_name(
    claude_app: App, registered_engine: Engine, register_plugin: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register_plugin(Engines(), name="engines")
    monkeypatch.setattr(db_cli, "get_app", lambda: claude_app)
    app = db_cli.create_app()
    names = [command.name for command in app.registered_commands]
    assert names.count("psql") == 1 and names.count("own-sh") == 1
    runner = CliRunner()
    helped = runner.invoke(app, ["own-sh", "--help"])
    assert helped.exit_code == 0, helped.output
    assert "Open own-sh on the session's database" in helped.output
    # the alias is shell for its engine's sessions only: a postgres session is refused
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@127.0.0.1:1/db")
    refused = runner.invoke(app, ["own-sh"])
    assert refused.exit_code != 0
    assert "uses postgres, not own-client; use claude-db shell" in str(refused.exception)
