"""What ``claude-db`` works on: the resolved session's database, and its operations."""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from claude_db.app import App
from claude_db.engine import Credentials, Endpoint, Engine, Tools
from claude_db.envfile import MARKER, find_env
from claude_db.errors import ClaudeDbError, NotRunningError, SessionNotFoundError, UsageError
from claude_db.processes import HostTools
from claude_db.runtime import Runtime
from claude_db.session import Session, validate_name
from claude_db.urls import parse_url

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
GZIP_LEVEL = 6  # gzip(1)'s default: Python's 9 is several times slower for little gain


@dataclass
class Target:
    """A session's database as claude-db reaches it (``runtime`` is None for a bare URL)."""

    name: str
    engine: Engine
    runtime: Runtime | None
    session: Session | None
    url_endpoint: Endpoint | None = None
    #: an inherited variable names another database than the one resolved (see resolve)
    conflict: str | None = None
    #: a bare URL that is a session's own (its session container's environment)
    owned: bool = False

    def endpoint(self, database: str | None = None) -> Endpoint:
        if self.runtime is None or self.session is None:
            assert self.url_endpoint is not None
            return self.url_endpoint.with_database(database)
        return self.runtime.endpoint(self.session, self.engine).with_database(database)

    def tools(self, database: str | None = None) -> Tools:
        if self.runtime is None or self.session is None:
            return HostTools(self.endpoint(database))
        tools = self.runtime.tools(self.session, self.engine)
        tools.endpoint = tools.endpoint.with_database(database)
        tools.client_endpoint = self.endpoint(database)
        return tools

    def require_running(self) -> None:
        if self.runtime is None or self.session is None:
            endpoint = self.endpoint()
            if not listening(endpoint):  # a bare URL has no session to ask
                raise NotRunningError(
                    f"nothing answers at {endpoint.host}:{endpoint.port} ({self.name})"
                )
            return
        status = self.runtime.status(self.session)
        if status != "running":
            raise NotRunningError(
                f"the database of session {self.name!r} is {status}; "
                f"start it with: claude-session attach {self.name} --no-shell"
            )


def listening(endpoint: Endpoint, timeout: float = 5) -> bool:
    """Whether something accepts TCP connections at ``endpoint`` (a unix socket directory
    is taken as yes: the engine's own connection tells)."""
    if not endpoint.host or endpoint.host.startswith("/"):
        return True
    try:
        socket.create_connection((endpoint.host, endpoint.port), timeout=timeout).close()
    except OSError:  # refused, unreachable, unresolvable, timed out
        return False
    return True


def resolve(app: App, session_name: str | None) -> Target:
    """The database a command works on, by one rule: ``--session NAME``; else the ``.env``
    naming a session in the current directory or the nearest one above it; else
    ``$CLAUDE_SESSION``; else ``$DATABASE_URL``. An inherited variable that names another
    database than that ``.env`` is recorded in :attr:`Target.conflict`."""
    if session_name:
        return _session_target(app, validate_name(session_name))
    found = locate()
    if found is None:
        raise SessionNotFoundError(
            "no session here: pass --session NAME, run in (or below) a directory where "
            "claude-session start wrote .env, or set CLAUDE_SESSION or DATABASE_URL"
        )
    target: Target | None = None
    if found.name and app.store.exists(found.name):
        target = _session_target(app, found.name)
    elif found.url:  # a session this state directory does not know, or a session container
        target = _target_from_url(app, found.url, found.name or "DATABASE_URL")
        env = os.environ
        target.owned = bool(found.name) and (env.get(MARKER), env.get("DATABASE_URL")) == (
            found.name, found.url)
    if target is None:
        raise SessionNotFoundError(
            f"no session named {found.name!r} ({found.source} names it; see claude-session list)"
        )
    target.conflict = found.conflict
    return target


@dataclass(frozen=True)
class Located:
    """Which session the current directory and environment name, and where that came from."""

    name: str | None
    url: str | None  # the DATABASE_URL that goes with it
    source: str  # a .env's path, CLAUDE_SESSION or DATABASE_URL
    conflict: str | None = None  # an inherited variable naming something else


def locate() -> Located | None:
    """The session named here, without ``--session`` (see :func:`resolve`)."""
    env_name = os.environ.get(MARKER) or None
    env_url = os.environ.get("DATABASE_URL") or None
    found = find_env(Path.cwd())
    if found is not None:
        path, values = found
        name, url = values[MARKER], values.get("DATABASE_URL")
        _valid_name(name, str(path))
        conflict = None
        if env_name and env_name != name:
            conflict = f"CLAUDE_SESSION={env_name} is set, but {path} names session {name}"
        elif env_url and url and env_url != url:
            conflict = (f"DATABASE_URL is set to {describe_url(env_url)}, but {path} "
                        f"(session {name}) says {describe_url(url)}")
        return Located(name, url, str(path), conflict)
    if env_name:
        _valid_name(env_name, MARKER)
        return Located(env_name, env_url, MARKER)
    if env_url:
        return Located(None, env_url, "DATABASE_URL")
    return None


def check_destructive(app: App, target: Target, what: str) -> None:
    """Refuse ``what`` (a command that destroys data) when the database is in doubt: an
    inherited variable names another one, or a bare URL that no session here owns."""
    if target.conflict:
        raise UsageError(f"refusing to {what}: {target.conflict}; "
                         "say which with --session NAME")
    if target.session is None and not target.owned and not app.settings.allow_url_destructive:
        endpoint = target.endpoint()
        raise UsageError(
            f"refusing to {what} {endpoint.host}:{endpoint.port}/{endpoint.database}: no "
            f"session here owns that URL ({target.name}); set "
            "CLAUDE_DB_ALLOW_URL_DESTRUCTIVE=true to allow it"
        )


def describe_url(url: str) -> str:
    """``host:port/database`` of a URL, without its credentials."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.hostname or '?'}{port}{parts.path or ''}"
    except ValueError:
        return "a URL that does not parse"


def _valid_name(name: str, source: str) -> None:
    try:
        validate_name(name)  # a name from a file or the environment must stay in the state dir
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None


def _session_target(app: App, name: str) -> Target:
    session = app.store.load(name)
    if not session.has_database:
        raise UsageError(
            f"session {name!r} has no database (it started with CLAUDE_DB_ENABLED=false)"
        )
    from claude_db.lifecycle import parts

    engine, runtime = parts(app, session)
    return Target(name, engine, runtime, session)


def _target_from_url(app: App, url: str, label: str) -> Target:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme:
        raise UsageError(f"{label} is not a URL like postgresql://user:password@host/db")
    engine = app.plugins.engine_for_scheme(scheme)
    _, host, port, user, password, database = parse_url(url, engine.default_port)
    endpoint = Endpoint(
        host, port, Credentials(user, password, database or engine.default_database)
    )
    return Target(label, engine, None, None, url_endpoint=endpoint)


# -- dumps --------------------------------------------------------------------------------


def export_to(target: Target, destination: str, database: str | None) -> int:
    """Write a dump to ``destination`` (``-`` = stdout); ``.gz`` compresses. Returns bytes."""
    target.require_running()
    chunks = target.engine.dump(target.tools(database))
    if destination == "-":
        try:
            return _copy(chunks, sys.stdout.buffer)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise ClaudeDbError(f"cannot write to stdout: {exc.strerror or exc}") from None
    path = Path(destination)
    if path.is_dir():
        raise UsageError(f"{destination} is a directory")
    if not path.parent.is_dir():
        raise UsageError(f"directory {path.parent} does not exist")
    # a temporary file beside the target, renamed at the end: never a partial dump
    try:
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".partial"
        )
    except OSError as exc:
        raise ClaudeDbError(f"cannot write {destination}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL) as out:
                    written = _copy(chunks, out)
            else:
                written = _copy(chunks, raw)
            raw.flush()
            os.fsync(raw.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp's 0600 would surprise: a dump like any file
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):  # e.g. a full disk: the user's problem, not a crash
            getattr(chunks, "close", lambda: None)()  # stop the dump tool now
            raise ClaudeDbError(
                f"cannot write {destination}, nothing was written: {exc.strerror or exc}"
            ) from None
        raise
    return written


def import_from(target: Target, source: str, database: str | None) -> None:
    """Apply a dump from ``source`` (``-`` = stdin; gzip detected), all or nothing."""
    from claude_db.snapshots import check_source

    check_source(source)
    target.require_running()
    tools = target.tools(database)
    # the script's \i, \ir and \copy find files beside it, as with psql -f FILE
    tools.workdir = Path(source).resolve().parent if source != "-" else Path.cwd()
    try:
        with _open_source(source) as stream:
            target.engine.restore(tools, iter(lambda: stream.read(CHUNK), b""))
    except (OSError, EOFError, zlib.error) as exc:  # unreadable or corrupt input (a bad .gz)
        raise ClaudeDbError(f"cannot read {source}, nothing was applied: {exc}") from None


@contextlib.contextmanager
def _open_source(source: str) -> Iterator[IO[bytes] | gzip.GzipFile]:
    if source == "-":
        raw: IO[bytes] = sys.stdin.buffer
        head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        yield gzip.GzipFile(fileobj=raw) if head == GZIP_MAGIC else raw
        return
    with open(source, "rb") as raw_file:
        compressed = source.endswith(".gz") or raw_file.read(2) == GZIP_MAGIC
        raw_file.seek(0)
        if compressed:
            with gzip.GzipFile(fileobj=raw_file) as unzipped:
                yield unzipped
        else:
            yield raw_file


def _copy(chunks: Iterator[bytes], out: IO[bytes] | gzip.GzipFile) -> int:
    written = 0
    for chunk in chunks:
        out.write(chunk)
        written += len(chunk)
    return written
