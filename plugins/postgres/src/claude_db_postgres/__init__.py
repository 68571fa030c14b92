"""The PostgreSQL engine for claude-db (the default engine)."""

from __future__ import annotations

from collections.abc import Callable

import typer

from claude_db import Engine, hookimpl
from claude_db_postgres.engine import PostgresEngine

__all__ = ["PostgresEngine"]


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(PostgresEngine)


@hookimpl
def register_commands(app: typer.Typer) -> None:
    from claude_db.cli.db import open_shell

    @app.command(
        "psql", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )
    def psql(
        ctx: typer.Context,
        session: str | None = typer.Option(None, "--session", "-s", help="Session name."),
        database: str | None = typer.Option(None, "--database", "-d", help="Database to open."),
    ) -> None:
        """Open psql on the session's database (extra arguments go to psql)."""
        open_shell(session, database, list(ctx.args), engine_name=PostgresEngine.name)
