"""The MongoDB engine for claude-db (``pip install claude-db-mongo``; ``--db mongo``)."""

from __future__ import annotations

from collections.abc import Callable

import typer

from claude_db import Engine, hookimpl
from claude_db_mongo.engine import MongoEngine

__all__ = ["MongoEngine"]


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(MongoEngine)


@hookimpl
def register_commands(app: typer.Typer) -> None:
    from claude_db.cli.db import open_shell

    extra_args = {"allow_extra_args": True, "ignore_unknown_options": True}

    @app.command("mongosh", context_settings=extra_args)
    def mongosh(
        ctx: typer.Context,
        session: str | None = typer.Option(None, "--session", "-s", help="Session name."),
        database: str | None = typer.Option(None, "--database", "-d", help="Database to open."),
    ) -> None:
        """Open mongosh on the session's database (extra arguments go to mongosh)."""
        open_shell(session, database, list(ctx.args), engine_name=MongoEngine.name)
