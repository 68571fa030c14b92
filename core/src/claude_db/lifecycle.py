"""The session lifecycle: start, stop, attach, delete, and a session's environment."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from claude_db import worktrees
from claude_db.app import App
from claude_db.engine import Credentials, Endpoint, Engine
from claude_db.envfile import (
    MARKER,
    Owner,
    dotenv_text,
    owner,
    put_back,
    read_env,
    refresh_env,
    refuse_symlink,
    remove_env,
    write_env,
)
from claude_db.errors import ClaudeDbError, SessionExistsError, UsageError
from claude_db.faults import checkpoint
from claude_db.gc import collect_garbage
from claude_db.locks import try_hold
from claude_db.processes import signals_held
from claude_db.readiness import wait_until_ready
from claude_db.runtime import Runtime
from claude_db.session import STARTING_MARKER, Session, validate_name
from claude_db.settings import Settings
from claude_db.target import parts
from claude_db.urls import new_password


def start_session(
    app: App,
    name: str,
    *,
    engine_name: str | None = None,
    runtime_name: str | None = None,
    workdir: Path,
    image: str | None = None,
    session_image: str | None = None,
    publish: bool = False,
    superuser: bool = False,
    write_dotenv: bool = True,
    worktree: dict[str, Any] | None = None,
    like: Session | None = None,
    create: Callable[[Session, Engine, Runtime], None] | None = None,
) -> tuple[Session, list[str]]:
    """Create a session and its database, wait until it answers; return it and notes.

    A session of that name with this work directory is not an error: it is made to run
    (as ``attach --no-shell``) and its ``.env`` put right; the notes say so. A fork:
    the new session is ``like`` that one (engine, runtime, images, user and database;
    its own password), and ``create`` makes its database instead of the runtime."""
    validate_name(name)
    settings = app.settings
    notes: list[str] = []
    if like is not None and like.credentials is not None:
        settings = replace(settings, enabled=True, user=like.credentials.user,
                           database=like.credentials.database, password=None,
                           image=like.image, session_image=like.session_image,
                           superuser=bool(like.runtime_state.get("superuser")))
        publish = like.publish
    if not workdir.is_dir():
        what = "is not a directory" if workdir.exists() else "does not exist"
        raise UsageError(f"work directory {workdir} {what}")
    if app.store.exists(name) and like is None:  # a fork refuses it when it locks it
        return _start_existing(app, app.store.load(name), workdir, engine_name, runtime_name,
                               image)
    session = Session(name=name, workdir=str(workdir.resolve()), engine=None, runtime=None,
                      worktree=worktree)
    engine: Engine | None = None
    runtime: Runtime | None = None
    if settings.enabled:
        _require_quotable(settings)
        if like is not None:
            engine, runtime = parts(app, like)
        else:
            engine = app.plugins.engine(engine_name or settings.engine)
            runtime, note = app.choose_runtime(runtime_name or settings.runtime, engine,
                                               _database_image(settings, engine, image))
            notes += [note] if note else []
        session.engine, session.runtime = engine.name, runtime.name
        session.credentials = Credentials(
            user=settings.user or engine.default_user,
            password=settings.password or new_password(),
            database=settings.database or engine.default_database,
        )
        session.image = _database_image(settings, engine, image)
        session.session_image = session_image or settings.session_image
        session.publish = publish
        if superuser or settings.superuser:  # the local runtime's create reads it
            session.runtime_state["superuser"] = True
        if not runtime.runs_containers and like is None:
            notes += _ignored_container_options(runtime, image, session_image, publish, settings)
    elif session_image:  # asked for by name: silently making none would surprise
        raise UsageError("--image makes a session container beside the session's database, "
                         "and CLAUDE_DB_ENABLED is false: unset it, or start without --image")
    else:
        notes.append("CLAUDE_DB_ENABLED is false: the session has no database"
                     + (" and no container (CLAUDE_SESSION_IMAGE ignored)"
                        if settings.session_image else ""))
    if write_dotenv:  # before anything is made: the directory must be free for us
        refuse_symlink(workdir)
        notes += _claim(app, name, workdir)

    store = app.store
    notes += _sweep_orphans(app, [runtime.name] if runtime is not None else [])
    # locked before the directory exists: gc never takes a session being made for an orphan
    with store.lock(name):
        raced = store.load(name) if store.exists(name) else None  # a start of it won meanwhile
        if raced is None or like is not None:  # a fork's reserve refuses a taken name
            notes += _create(app, session, engine, runtime, workdir, write_dotenv, create)
    if raced is not None:
        return _start_existing(app, raced, workdir, engine_name, runtime_name, image,
                               swept=True)
    app.plugins.hook.session_started(session=session)
    return session, notes


def _create(
    app: App, session: Session, engine: Engine | None, runtime: Runtime | None, workdir: Path,
    write_dotenv: bool, create: Callable[[Session, Engine, Runtime], None] | None = None,
) -> list[str]:
    """Make the session (its lock held): database, state, ``.env``; all or nothing."""
    store, name = app.store, session.name
    dotenv_before = dotenv_text(workdir) if write_dotenv else None
    # until start is done: if this process dies (kill -9), gc knows the session never was
    starting = store.reserve(name) / STARTING_MARKER
    starting.touch()
    try:
        notes: list[str] = []
        if engine is not None and runtime is not None:
            if create is not None:
                create(session, engine, runtime)
            else:
                runtime.create(session, engine)
            store.save(session)
            wait_until_ready(
                engine,
                runtime.endpoint(session, engine),
                timeout=app.settings.ready_timeout,
                failure=lambda: runtime.failure_details(session),
                what=f"the {engine.name} database of session {name!r}",
            )
            runtime.start_workspace(session, engine, session_env(app, session))
        store.save(session)
        if write_dotenv:
            notes += write_env(workdir, session_env(app, session, for_dotenv=True),
                               _owner(app, session))
            checkpoint("dotenv-written")
        starting.unlink()
        return notes
    except BaseException:
        # nothing may leak: undo whatever part of the session was made, uninterrupted
        with signals_held():
            if engine is not None and runtime is not None:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    runtime.delete(session, engine, keep_data=False)
            store.release(name)
            if write_dotenv:  # .env as it was: no variables of a session that is not
                with contextlib.suppress(ClaudeDbError, OSError):
                    put_back(workdir, dotenv_before)
        raise


def _start_existing(
    app: App, session: Session, workdir: Path, engine_name: str | None,
    runtime_name: str | None, image: str | None, *, swept: bool = False,
) -> tuple[Session, list[str]]:
    """``start`` of a session that exists: in its own work directory, make it run. The
    cheap sweep runs as on every start (``swept``: this start ran it already)."""
    notes = [f"session {session.name} {ALREADY_HERE}"]
    if Path(session.workdir) != workdir.resolve():
        if not _moved_here(app, session, workdir):
            raise SessionExistsError(
                f"session {session.name!r} already exists, for {session.workdir}; give this "
                "directory's session another name: claude-session start NAME"
            )
        session, moved = _rehome(app, session, workdir)
        notes.append(moved)
    if not swept:
        with app.store.lock(session.name):  # busy to the sweep: never taken (a killed start's)
            notes += _sweep_orphans(app, [session.runtime] if session.runtime else [])
    notes += kept_settings(app, session, engine_name, runtime_name, image)
    notes += ensure_running(app, session)
    return session, notes


def _moved_here(app: App, session: Session, workdir: Path) -> bool:
    """Whether ``session``'s work directory moved to ``workdir`` (``mv``, ``git worktree
    move``): the one it records is gone, and the ``.env`` here is its own."""
    try:
        found = owner(workdir)
    except UsageError:  # a symlinked .env names nothing
        return False
    return (not Path(session.workdir).exists() and found is not None
            and found in (_owner(app, session), Owner(session.name, None)))


def _rehome(app: App, session: Session, workdir: Path) -> tuple[Session, str]:
    """Record ``workdir`` as ``session``'s work directory (and where git now has it)."""
    with app.store.lock(session.name):
        session = app.store.load(session.name)
        before = session.workdir
        session.workdir = str(workdir.resolve())
        if session.worktree:
            found = worktrees.find_worktree(workdir)
            session.worktree = found.to_json() if found is not None and found.linked else None
        app.store.save(session)
    return session, f"note: session {session.name} moved here from {before}: recorded"


def kept_settings(
    app: App, session: Session, engine_name: str | None = None, runtime_name: str | None = None,
    image: str | None = None,
) -> list[str]:
    """Notes for what an existing session keeps although the command or settings ask for
    something else (they apply to new sessions), with the way to move its data."""
    if not session.has_database:
        return []
    changed = []
    if engine_name and engine_name != session.engine:
        changed.append(f"engine {session.engine} (--db {engine_name})")
    if runtime_name and runtime_name not in ("auto", session.runtime):
        changed.append(f"runtime {session.runtime} (--runtime {runtime_name})")
    wanted = image or app.settings.image
    runs_containers = parts(app, session)[1].runs_containers
    if wanted and runs_containers and wanted != session.image:
        given = f"--db-image {wanted}" if image else f"CLAUDE_DB_IMAGE={wanted}"
        changed.append(f"database image {session.image} ({given})")
    if not changed:
        return []
    n = session.name
    return [f"note: session {n} keeps its {', '.join(changed)}: those apply to new sessions; "
            f"to move its data: claude-db export {n}.sql.gz --session {n}, claude-session "
            f"delete {n} --yes, claude-session start {n} with the new options, claude-db "
            f"import {n}.sql.gz"]


def _claim(app: App, name: str, workdir: Path) -> list[str]:
    """Refuse a work directory whose ``.env`` belongs to another live session; a gone
    session's variables are replaced, with a note."""
    found = owner(workdir)
    if found is None or found == _owner_named(app, name) or found == Owner(name, None):
        return []
    state = Path(found.state_dir) if found.state_dir else app.settings.state_dir
    try:
        alive = (state / "sessions" / found.name / "session.json").exists()
    except OSError:  # another user's state directory: it may well live
        alive = True
    if alive and found.state_dir in (None, str(app.settings.state_dir)):
        with contextlib.suppress(ClaudeDbError):  # a copy's .env: that session lives elsewhere
            home = Path(app.store.load(found.name).workdir)
            if home.is_dir() and not home.samefile(workdir):
                return [f"note: .env named session {found.name}, which is the session of "
                        f"{home} (a copy?); replacing its variables"]
    if alive:
        raise SessionExistsError(
            f"{workdir.resolve()} belongs to {found.describe()}: use it with claude-session "
            f"attach {found.name}, or start {name} elsewhere with --workdir DIR"
        )
    return [f"note: .env named {found.describe()}, which no longer exists; replacing its "
            "variables"]


def _owner(app: App, session: Session) -> Owner:
    return _owner_named(app, session.name)


def _owner_named(app: App, name: str) -> Owner:
    return Owner(name, str(app.settings.state_dir))


#: the note of a start that found its session already there
ALREADY_HERE = "already exists here; making sure it runs"


def _database_image(settings: Settings, engine: Engine, image: str | None) -> str:
    return image or settings.image or engine.default_image


def _ignored_container_options(
    runtime: Runtime, image: str | None, session_image: str | None, publish: bool,
    settings: Settings,
) -> list[str]:
    given = [
        ("--db-image", image), ("--image", session_image), ("--publish", publish),
        ("CLAUDE_DB_IMAGE", not image and settings.image),
        ("CLAUDE_SESSION_IMAGE", not session_image and settings.session_image),
    ]
    names = [name for name, value in given if value]
    if not names:
        return []
    return [f"note: the {runtime.name} runtime runs no containers: {', '.join(names)} ignored"]


def _require_quotable(settings: Settings) -> None:
    """What we write to ``.env`` is single-quoted, which python-dotenv and a POSIX shell
    (``set -a; . ./.env``) both read literally, except for ``'``, backslashes and ``${``
    (python-dotenv expands ``${VAR}`` even there)."""
    for variable, value in (
        ("CLAUDE_DB_USER", settings.user),
        ("CLAUDE_DB_PASSWORD", settings.password),
        ("CLAUDE_DB_NAME", settings.database),
    ):
        if value and ("${" in value or any(c in "'\\" or not c.isprintable() for c in value)):
            raise UsageError(
                f"{variable} must not contain quotes ('), backslashes, ${{ or unprintable "
                "characters"
            )


def _sweep_orphans(app: App, runtimes: list[str]) -> list[str]:
    """The cheap orphan sweep every start runs (see claude_db.gc), asking also the runtimes
    the new session uses; never fails a start."""
    try:
        removed = [o for o in collect_garbage(app, cheap=True, runtimes=runtimes)
                   if o.removed]
    except Exception as exc:
        return [f"warning: the orphan sweep failed ({exc}); see claude-session gc --dry-run"]
    # a reclaimed worktree's session is named with where its data went; the rest (processes,
    # directories, locks of sessions already gone) only counted
    said = [f"removed session {o.what}: {o.detail}" for o in removed if o.kind == "session"]
    if rest := len(removed) - len(said):
        said.append(f"removed {rest} leftover{'s' if rest > 1 else ''} of gone sessions")
    return said


def stop_session(app: App, name: str) -> Session:
    store = app.store
    store.load(name)  # an unknown name fails before it gets a lock file
    with store.lock(name):
        session = store.load(name)
        if session.has_database:
            engine, runtime = parts(app, session)
            runtime.stop(session, engine)
            store.save(session)
    app.plugins.hook.session_stopped(session=session)
    return session


def ensure_running(app: App, session: Session) -> list[str]:
    """Start whatever of the session stopped and wait until its database answers; the
    session's ``.env`` follows if the database's address changed. Returns notes."""
    if not session.has_database:
        return []
    engine, runtime = parts(app, session)
    credentials = session.credentials
    with app.store.lock(session.name):
        runtime.start(session, engine)
        app.store.save(session)
    endpoint = runtime.endpoint(session, engine)

    def wait() -> None:
        wait_until_ready(
            engine, endpoint, timeout=app.settings.ready_timeout,
            failure=lambda: runtime.failure_details(session),
            what=f"the {engine.name} database of session {session.name!r}",
        )

    notes: list[str] = []
    try:
        wait()
    except ClaudeDbError:
        # the server answers, the database not: a killed reset or a crash while dropping
        # left it missing or invalid. Finished only while no other command holds the
        # session (one restoring it would see its work undone)
        with try_hold(app.store.lock_file(session.name)) as locked, \
                contextlib.suppress(Exception):
            notes = engine.snapshot_recover(endpoint) if locked else []
        if not notes:
            raise
        wait()
    with app.store.lock(session.name):
        runtime.start_workspace(session, engine, session_env(app, session))
        app.store.save(session)
    values = session_env(app, session, for_dotenv=True)
    notes += refresh_env(Path(session.workdir), values, _owner(app, session))
    if session.credentials != credentials:
        notes.append(f"gave session {session.name!r} a new password: it came back on another "
                     "port, and what listened on its old one may have got the old one")
    # a start killed late left the session unfinished (a sweep would take it for garbage,
    # data and all): running, ready and in its .env, it is whole now
    with app.store.lock(session.name):
        (app.store.directory(session.name) / STARTING_MARKER).unlink(missing_ok=True)
    return notes


def stale_dotenv(app: App, session: Session) -> tuple[str, str] | None:
    """``(in .env, current)`` DATABASE_URLs when the session's ``.env`` holds another address
    than its database has now (a re-created container); ``attach`` writes the new one."""
    workdir = Path(session.workdir)
    found = owner(workdir)
    if not session.has_database or found is None or found.name != session.name:
        return None
    written = read_env(workdir).get("DATABASE_URL")
    current = session_env(app, session, for_dotenv=True).get("DATABASE_URL")
    return (written, current) if written and current and written != current else None


def delete_session(app: App, name: str, *, keep_data: bool = False) -> tuple[Session, list[str]]:
    store = app.store
    notes: list[str] = []
    store.load(name)  # an unknown name fails before it gets a lock file
    with store.lock(name):
        session = store.load(name)
        if session.has_database:
            engine, runtime = parts(app, session)
            runtime.delete(session, engine, keep_data=keep_data)
            if kept := session.runtime_state.get("kept_data"):
                notes.append(f"kept the data of {name!r} in {kept}")
        if remove_session_env(app, session):
            notes.append(f"removed the session's variables from {Path(session.workdir) / '.env'}")
        store.release(name)
    app.plugins.hook.session_deleted(session=session)
    return session, notes


def remove_session_env(app: App, session: Session) -> bool:
    """Take the session's block out of its ``.env`` (the user's own lines come back), if
    the block is this session's of this state directory."""
    return remove_env(Path(session.workdir), _owner(app, session))


def session_env(app: App, session: Session, *, for_dotenv: bool = False) -> dict[str, str]:
    """Everything a session's programs need: DATABASE_URL, components, native variables."""
    env: dict[str, str] = {}
    for extra in app.plugins.hook.session_env(session=session):
        env.update(extra or {})
    if session.has_database:
        engine, runtime = parts(app, session)
        env.update(database_env(engine, runtime.session_endpoint(session, engine)))
    env[MARKER] = session.name
    return env


def database_env(engine: Engine, endpoint: Endpoint) -> dict[str, str]:
    return {
        "DATABASE_URL": engine.url(endpoint),
        "DB_HOST": endpoint.host,
        "DB_PORT": str(endpoint.port),
        "DB_USER": endpoint.user,
        "DB_PASSWORD": endpoint.password,
        "DB_NAME": endpoint.database,
        **engine.native_env(endpoint),
    }


def start_here(app: App, workdir: Path, **options: Any) -> tuple[Session, list[str]]:
    """``claude-session start`` without a name: the session of ``workdir`` (named as
    :func:`session_name` says), made or made to run. Two starts in two worktrees whose
    readable names are alike race for the name: the loser takes its disambiguated one."""
    worktree = worktrees.find_worktree(workdir)
    recorded = worktree.to_json() if worktree is not None and worktree.linked else None
    name, notes = worktrees.name_here(app, workdir, worktree)
    try:
        session, started = start_session(app, name, workdir=workdir, worktree=recorded,
                                         **options)
        return session, notes + started
    except SessionExistsError:
        again = worktrees.session_name(app, workdir, worktree)
        if again == name:
            raise
        return start_session(app, again, workdir=workdir, worktree=recorded, **options)
