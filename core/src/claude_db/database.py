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
from claude_db.envfile import MARKER, read_env
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
    """The session: ``--session``, ``CLAUDE_SESSION``, ``.env`` here, else ``DATABASE_URL``."""
    name = session_name or os.environ.get(MARKER) or read_env(Path.cwd()).get(MARKER)
    if name:
        validate_name(name)  # a name from the environment must not reach outside the state dir
    if name and app.store.exists(name):
        session = app.store.load(name)
        if not session.has_database:
            raise UsageError(
                f"session {name!r} has no database (it started with CLAUDE_DB_ENABLED=false)"
            )
        from claude_db.lifecycle import parts

        engine, runtime = parts(app, session)
        return Target(name, engine, runtime, session)
    url = os.environ.get("DATABASE_URL")
    if url and not session_name:
        return _target_from_url(app, url, name or "DATABASE_URL")
    if name:
        raise SessionNotFoundError(f"no session named {name!r} (see claude-session list)")
    raise SessionNotFoundError(
        "no session here: pass --session NAME, set CLAUDE_SESSION, run where "
        "claude-session start wrote .env, or set DATABASE_URL"
    )


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
