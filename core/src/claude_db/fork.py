"""Forks: a new session holding a copy of a running session's data, the source serving on.

The fastest consistent way the runtime has (``Runtime.create_copy``: the local runtime
clones a base backup's files, ``reflink`` or ``copy``), else ``dump``: the new session is
created as any other, then the engine's dump of the source streams into its restore.
Either way the new session is made by ``start_session`` under its ``.starting`` marker, so
a fork killed at any moment leaves a session ``gc`` removes, never a half-made one that
looks whole; the source is only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_db.app import App
from claude_db.engine import Engine
from claude_db.errors import NotRunningError, SessionExistsError, UsageError
from claude_db.faults import checkpoint
from claude_db.lifecycle import start_session
from claude_db.readiness import wait_until_ready
from claude_db.runtime import Runtime
from claude_db.session import Session, validate_name
from claude_db.target import parts

METHODS = ("reflink", "copy", "dump")


@dataclass
class Fork:
    session: Session
    source: str
    method: str  # one of METHODS
    notes: list[str]


def fork_session(
    app: App, source_name: str, name: str, *, workdir: Path, engine_name: str | None = None,
    runtime_name: str | None = None, image: str | None = None,
    worktree: dict[str, Any] | None = None,
) -> Fork:
    """Make session ``name`` (``.env`` in ``workdir``) with a copy of ``source_name``'s data.

    ``engine_name``, ``runtime_name`` and ``image``, when given, must be the source's: a
    fork is of the same kind as its source."""
    validate_name(name)
    source = app.store.load(validate_name(source_name))
    if not source.has_database:
        raise UsageError(f"session {source.name} has no database to fork")
    if app.store.exists(name):
        raise SessionExistsError(f"session {name!r} already exists: fork into a new name, or "
                                 f"claude-session delete {name} first")
    _same_kind(source, engine_name, runtime_name, image)
    runtime = parts(app, source)[1]
    if runtime.status(source) != "running":
        raise NotRunningError(f"session {source.name} is not running: claude-session attach "
                              f"{source.name} --no-shell starts it, then fork")
    methods: list[str] = []

    def create(session: Session, engine: Engine, runtime: Runtime) -> None:
        # on record before anything is made: `list` shows the fork as starting, and once
        # killed as unfinished (its start marker), which gc removes with what it made
        app.store.save(session)
        # the source's lock: no reset, restore or stop of it while it is copied
        with app.store.lock(source.name):
            current = app.store.load(source.name)
            if runtime.status(current) != "running":
                raise NotRunningError(f"session {source.name} stopped")
            method = runtime.create_copy(session, engine, current)
            if method is None:
                runtime.create(session, engine)
                app.store.save(session)  # what the runtime made, for gc to find
                _copy_by_dump(app, engine, runtime, current, session)
                method = "dump"
        checkpoint("fork-filled")
        methods.append(method)

    session, notes = start_session(app, name, workdir=workdir, like=source, create=create,
                                   worktree=worktree)
    return Fork(session, source.name, methods[0], notes)


def _copy_by_dump(
    app: App, engine: Engine, runtime: Runtime, source: Session, session: Session
) -> None:
    wait_until_ready(
        engine, runtime.endpoint(session, engine), timeout=app.settings.ready_timeout,
        failure=lambda: runtime.failure_details(session),
        what=f"the {engine.name} database of session {session.name!r}",
    )
    checkpoint("fork-created")
    engine.restore(runtime.tools(session, engine), engine.dump(runtime.tools(source, engine)))


def _same_kind(
    source: Session, engine_name: str | None, runtime_name: str | None, image: str | None
) -> None:
    given = [("--db", engine_name, source.engine), ("--runtime", runtime_name, source.runtime),
             ("--db-image", image, source.image)]
    for option, value, its in given:
        if value and value != its and not (option == "--runtime" and value == "auto"):
            raise UsageError(f"{option} {value}: a fork has its source's, and session "
                             f"{source.name} has {its}")

