"""claude-db-example: the ``example`` engine and the hooks it implements.

This module is the plugin registered under the entry point ``example`` (group
``claude_db``); ``claude_db_example.runtime`` is a second plugin of the same
distribution.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from claude_db import Engine, hookimpl
from claude_db.session import Session
from claude_db_example.engine import ExampleEngine

__all__ = ["ExampleEngine"]


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(ExampleEngine)


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command("example-tables")
    def example_tables(
        session: str | None = typer.Option(None, "--session", "-s", help="Session name."),
    ) -> None:
        """List the tables of an example session's database (the example plugin's command)."""
        from claude_db.app import get_app
        from claude_db.database import resolve
        from claude_db.errors import UsageError

        target = resolve(get_app(), session)
        if target.engine.name != ExampleEngine.name:
            raise UsageError(f"session {target.name!r} uses {target.engine.name}, not example")
        target.require_running()
        with target.engine.query(
            target.endpoint(),
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' ORDER BY table_name",
        ) as result:
            for row in result.rows:
                print(row[0])


@hookimpl
def session_env(session: Session) -> dict[str, str] | None:
    if session.engine != ExampleEngine.name:
        return None
    return {"EXAMPLE_SESSION": session.name}


def _event(what: str, session: Session) -> None:
    if session.engine == ExampleEngine.name:
        print(f"example: session {session.name} {what}", file=sys.stderr)


@hookimpl
def session_started(session: Session) -> None:
    _event("started", session)


@hookimpl
def session_stopped(session: Session) -> None:
    _event("stopped", session)


@hookimpl
def session_deleted(session: Session) -> None:
    _event("deleted", session)
