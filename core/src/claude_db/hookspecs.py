"""The claude-db plugin contract: every hook a plugin may implement.

Plugins implement hooks with ``from claude_db import hookimpl`` and register
under the entry-point group ``claude_db``. Built-in runtimes and the PostgreSQL
engine use exactly these hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from claude_db.engine import Engine
    from claude_db.runtime import Runtime
    from claude_db.session import Session

hookspec = pluggy.HookspecMarker("claude_db")
#: mark hook implementations with ``@hookimpl`` (plugins import it from ``claude_db``, never
#: pluggy)
hookimpl = pluggy.HookimplMarker("claude_db")


@hookspec
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    """Hand engine classes to claude-db.

    Called once, when the plugin manager is first used. Call ``register(cls)``
    for each :class:`~claude_db.engine.Engine` subclass; its ``name`` class
    attribute is the name users pass to ``--db``. Registering a name another
    plugin already registered is reported as an error naming both plugins.
    """


@hookspec
def register_runtimes(register: Callable[[type[Runtime]], None]) -> None:
    """Hand runtime classes (where databases run: ``docker``, ``local``) to claude-db.

    Called once, like :func:`register_engines`, with the same duplicate rules.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add commands to the ``claude-db`` CLI.

    Called when the ``claude-db`` application is built, with its root
    :class:`typer.Typer`; add commands with ``@app.command()``.
    """


@hookspec
def session_env(session: Session) -> dict[str, str] | None:
    """Return extra environment variables for a session, or ``None``.

    Called whenever a session's environment is computed (``start``, ``env``,
    ``attach``, ``.env``). Results of all plugins are merged; core variables
    (``DATABASE_URL``...) win on conflict.
    """


@hookspec
def session_started(session: Session) -> None:
    """Called after ``claude-session start`` has made a session and its database is ready."""


@hookspec
def session_stopped(session: Session) -> None:
    """Called after ``claude-session stop`` has stopped a session's database."""


@hookspec
def session_deleted(session: Session) -> None:
    """Called after ``claude-session delete`` has removed a session and its resources."""
