"""The Engine base class: everything claude-db knows about one kind of database."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from claude_db.errors import UsageError

# part of the engine contract, defined with the URLs they make
from claude_db.urls import Credentials as Credentials
from claude_db.urls import Endpoint as Endpoint
from claude_db.urls import build_url


@dataclass(frozen=True)
class ImportOptions:
    """How ``claude-db import`` applies a dump, beyond the default (``Engine.restore``)."""

    #: leave out ownership and privileges (``OWNER TO``, ``GRANT``, ``REVOKE``)
    skip_ownership: bool = False
    #: first create the roles the dump names that the server lacks (NOLOGIN, nothing else);
    #: dropped again if the import fails
    create_roles: bool = False
    #: statements outside one transaction; the caller restores a snapshot on failure
    transaction: bool = True


@dataclass
class QueryResult:
    """The result of a one-off query, engine-neutral: the CLI renders it as a table, JSON or
    CSV. ``rows`` (or ``documents``) stream from the server: they are read once, in order,
    while :meth:`Engine.query`'s context is open, so a result never has to fit in memory."""

    columns: list[str] = field(default_factory=list)
    rows: Iterable[Sequence[Any]] = ()
    status: str = ""  # what the server said, e.g. "INSERT 0 1"
    #: document engines: the result as JSON values (dicts, lists...), instead of columns/rows
    documents: Iterable[Any] | None = None

    # an engine written before ``Engine.query`` became a context manager returns a plain
    # result: it is its own context, with nothing to end
    def __enter__(self) -> QueryResult:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class DumpDirectory(Iterable[bytes]):
    """An import's source that is a directory dump (``pg_dump -Fd``) where ``restore_with``
    takes chunks: an engine that reads such directories takes ``path`` (its tools open it,
    as ``Tools.workdir`` is its parent); to any other, its bytes are a refusal."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        raise UsageError(f"{self.path} is a directory: give a dump file, or - for stdin")


class Tools(ABC):
    """Runs an engine's native client tools (psql, pg_dump, ...) where they belong.

    A runtime provides it: host binaries for the local runtime, ``docker exec`` inside
    the database container for the docker runtime. ``endpoint`` is the database as
    seen from where the tools run; ``client_endpoint`` the same database as seen from
    claude-db's own process (for engines that dump or restore through their driver),
    ``None`` when it is ``endpoint``.
    """

    endpoint: Endpoint
    client_endpoint: Endpoint | None = None
    #: set when the tools work on the user's files (an import): the directory their
    #: relative paths resolve against (the imported file's, as ``psql -f FILE``'s ``\ir``)
    workdir: Path | None = None
    #: the server's superuser as seen from claude-db's process, when the session's own user
    #: may not create roles (the local runtime's admin, through the server's unix socket)
    admin_endpoint: Endpoint | None = None

    @abstractmethod
    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (a tool name and its arguments) with extra ``env`` variables."""

    @abstractmethod
    def run_interactive(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        """Run ``argv`` attached to the user's terminal; return its exit status."""

    @abstractmethod
    def has(self, tool: str) -> bool:
        """Whether ``tool`` can be run here."""

    def stream(
        self, argv: Sequence[str], *, env: Mapping[str, str],
        failed: Callable[[str], BaseException],
    ) -> Generator[bytes, None, None]:
        """Run ``argv`` and yield its output in chunks (a dump going out). If it exits
        non-zero, ``failed(its stderr)`` is raised after the last chunk; if the reader stops
        early (an interrupt, a full disk), the tool is killed."""
        with tempfile.TemporaryFile() as errors:
            proc = self.popen(argv, env=env, stdout=subprocess.PIPE, stderr=errors)
            stdout = proc.stdout
            assert stdout is not None
            widen_pipe(stdout)
            finished = False
            try:
                while chunk := stdout.read(PIPE_BYTES):
                    yield chunk
                finished = True
            finally:
                if not finished:
                    proc.kill()
                stdout.close()
                code = proc.wait()
            if code != 0:
                errors.seek(0)
                raise failed(errors.read().decode(errors="replace"))

    def feed(
        self, argv: Sequence[str], chunks: Iterable[bytes], *, env: Mapping[str, str],
        stdout: int | IO[Any] = subprocess.DEVNULL,
    ) -> tuple[int, str]:
        """Run ``argv`` with ``chunks`` on its stdin (a dump coming in); return its exit
        status and its stderr. A tool that stops reading (it stopped at an error) ends the
        feeding; anything raised meanwhile (an interrupt, an unreadable input) kills the
        tool before it is raised. Killing ends the tool, not what it started: a client that
        commits at the end of its input must be told to commit after the last chunk, never
        by the end of input (see the postgres engine's restore)."""
        with tempfile.TemporaryFile() as errors:
            proc = self.popen(argv, env=env, stdin=subprocess.PIPE, stdout=stdout,
                              stderr=errors)
            stdin = proc.stdin
            assert stdin is not None
            widen_pipe(stdin)
            try:
                for chunk in chunks:
                    stdin.write(chunk)
                stdin.close()
            except BrokenPipeError:
                pass  # the tool stopped at an error: its message says which
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            code = proc.wait()
            errors.seek(0)
            return code, errors.read().decode(errors="replace")


#: pipe capacity to and from a tool: it runs ahead while a chunk is (de)compressed
PIPE_BYTES = 1 << 20


def widen_pipe(pipe: IO[Any]) -> None:
    """Grow a pipe from 64 KiB to :data:`PIPE_BYTES` where the OS allows it (Linux)."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with contextlib.suppress(OSError, ValueError):
            fcntl.fcntl(pipe.fileno(), setpipe, PIPE_BYTES)


def last_line(stderr: str) -> str:
    """A tool's last line of error output (what names its failure)."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else "no error output"


class LocalServer(ABC):
    """How an engine runs as local server processes from host binaries (the local runtime)."""

    #: OS users (in order of preference) to run the server as when claude-db runs as root.
    service_users: ClassVar[tuple[str, ...]] = ("nobody",)
    #: signal that asks the server for a fast, clean shutdown
    stop_signal: ClassVar[int] = 15

    #: Set by the runtime before use. ``pinned_bindir``: the binaries a session was created
    #: with, to use instead of those found on the host (its data may need exactly them).
    #: ``superuser``: the session's user is to be the server's superuser (``--superuser``),
    #: not only the owner of its database.
    pinned_bindir: Path | None = None
    superuser: bool = False
    #: the server's own administrator, reached through its unix socket without a password
    #: (None: the engine has none): ``Tools.admin_endpoint``
    admin_user: ClassVar[str | None] = None

    @abstractmethod
    def version(self) -> str:
        """The server version of :meth:`bindir`'s binaries, e.g. ``15.18`` (also a cache key)."""

    @abstractmethod
    def bindir(self) -> Path:
        """Directory of the server and client binaries: ``pinned_bindir`` when set, else
        the ones found on this host."""

    @abstractmethod
    def init_template(self, datadir: Path, credentials: Credentials, run_as: RunAs) -> None:
        """Initialise an empty data directory holding ``credentials``' user and database.

        The result is cached per (version, user, database, ``superuser``) and copied for
        every session; the per-session password is set by :meth:`set_password` after the
        first start. Unless ``superuser`` is set, the user must not be able to leave its
        database: no files or programs of the host, no other server.
        """

    @abstractmethod
    def server_argv(self, datadir: Path, port: int, socket_dir: Path) -> list[str]:
        """Command line of the server: 127.0.0.1:``port`` and a unix socket in ``socket_dir``."""

    @abstractmethod
    def set_password(self, socket_dir: Path, port: int, credentials: Credentials) -> None:
        """Set the session's password through the unix socket (called once, after first start)."""

    #: whether :meth:`change_password` works (else a session that comes back on another port
    #: keeps its password)
    changes_password: ClassVar[bool] = False

    def change_password(
        self, socket_dir: Path, port: int, credentials: Credentials, previous: str
    ) -> None:
        """Give the session's user ``credentials``' password instead of ``previous`` on its
        running server, through the unix socket; a retry after it was done is no error.
        For a session that comes back on another port: whatever took its old one may have
        been handed the password by the session's clients."""
        raise NotImplementedError

    #: whether :meth:`copy_running` can fork a running server (else core dumps and restores)
    copies_running: ClassVar[bool] = False

    def copy_running(
        self, source_datadir: Path, source_socket_dir: Path, source_port: int, datadir: Path
    ) -> str:
        """Fork: fill the new ``datadir`` with a consistent copy of the running server of
        ``source_datadir`` (which keeps serving), one that then starts cleanly; return the
        method (``reflink``: a copy-on-write clone, ``copy``: a plain file copy)."""
        raise NotImplementedError


@dataclass(frozen=True)
class RunAs:
    """The OS identity local servers run as (an unprivileged user when we are root)."""

    uid: int
    gid: int
    name: str


class Engine(ABC):
    """A kind of database. Subclass, set the class attributes, implement the methods.

    Registered through the ``register_engines`` hook; ``name`` is what ``--db`` takes.
    """

    name: ClassVar[str]
    #: URL schemes that identify this engine in a DATABASE_URL; the first one is used to build URLs
    url_schemes: ClassVar[tuple[str, ...]]
    default_image: ClassVar[str]
    default_port: ClassVar[int]
    default_user: ClassVar[str]
    default_database: ClassVar[str] = "appdb"
    #: the data directory inside the official image (mounted as a named volume)
    container_data_dir: ClassVar[str]
    #: name of the interactive client (``claude-db shell`` runs it)
    shell_name: ClassVar[str]
    #: databases on the server the engine keeps for itself (its snapshot history): no
    #: command takes them (``--database``), no import writes there. Every engine reserves
    #: ``claude_db_snapshots`` (README), whether it keeps snapshots there or not
    internal_databases: ClassVar[tuple[str, ...]] = ("claude_db_snapshots",)

    # -- connection contract --------------------------------------------------------------

    def url(self, endpoint: Endpoint) -> str:
        return build_url(self.url_schemes[0], endpoint)

    def native_env(self, endpoint: Endpoint) -> dict[str, str]:
        """Variables the engine's own tools read (``PGHOST``...), so they need no arguments."""
        return {}

    @abstractmethod
    def container_env(self, credentials: Credentials) -> dict[str, str]:
        """Environment for the official image that makes it create ``credentials``."""

    @abstractmethod
    def check_ready(self, endpoint: Endpoint, timeout: float) -> str:
        """Run an authenticated query against ``endpoint``; return the server version.

        Raise any exception while it is not ready: the readiness loop retries, unless
        :meth:`never_ready` says the exception will not clear by waiting.
        """

    def never_ready(self, error: Exception) -> bool:
        """Whether ``error`` from :meth:`check_ready` will never clear by waiting (a wrong
        password, a missing database): readiness then fails at once with its message."""
        return False

    def local_server(self) -> LocalServer | None:
        """How to run as local processes, or ``None`` if this engine cannot."""
        return None

    def local_unavailable_reason(self) -> str:
        """One line saying why :meth:`local_server` is ``None`` and what to do instead."""
        return f"the {self.name} engine cannot run on the local runtime; use --runtime docker"

    # -- operations ---------------------------------------------------------------------

    @abstractmethod
    def query(
        self, endpoint: Endpoint, text: str
    ) -> contextlib.AbstractContextManager[QueryResult]:
        """Run one query or command (several: the last one's result) and give its result:
        ``with engine.query(endpoint, text) as result: for row in result.rows: ...``.

        The columns (and ``status``) are known when the context is entered; the rows come
        from the server as they are read (a server-side or unbuffered cursor), so memory
        stays bounded whatever the result's size. Errors while reading are raised from the
        iteration; leaving the context early ends the query."""

    @abstractmethod
    def dump(self, tools: Tools) -> Iterator[bytes]:
        """Yield a dump of ``tools.endpoint``'s database; raise if the dump fails."""

    @abstractmethod
    def restore(self, tools: Tools, chunks: Iterable[bytes]) -> None:
        """Apply a dump: stop at the first error and leave nothing of it applied."""

    #: False: a killed :meth:`restore` may leave part of an import applied (MySQL commits
    #: DDL at once), so ``import`` takes the automatic snapshot first (``undo`` goes back)
    #: and passes ``ImportOptions(transaction=False)`` to :meth:`restore_with`
    imports_survive_kills: ClassVar[bool] = True

    #: export formats :meth:`dump_as` writes besides ``plain`` (e.g. PostgreSQL's ``custom``)
    export_formats: ClassVar[tuple[str, ...]] = ()

    def restore_with(
        self, tools: Tools, chunks: Iterable[bytes], options: ImportOptions
    ) -> None:
        """:meth:`restore` as ``options`` say; an engine that honours none refuses them."""
        if options != ImportOptions():
            raise UsageError(
                f"import --skip-ownership, --create-roles and --no-transaction are not for "
                f"{self.name}"
            )
        self.restore(tools, chunks)

    def dump_as(self, tools: Tools, export_format: str) -> Iterator[bytes]:
        """:meth:`dump` in ``export_format`` (``plain`` or one of :attr:`export_formats`)."""
        if export_format != "plain":
            raise UsageError(f"export --format {export_format} is not for {self.name}")
        return self.dump(tools)

    @abstractmethod
    def reset(self, endpoint: Endpoint) -> None:
        """Drop the database with everything in it and create it again, empty."""

    @abstractmethod
    def shell_argv(self, endpoint: Endpoint) -> list[str]:
        """Command line of the interactive client for ``endpoint`` (run through Tools)."""

    # -- snapshots ----------------------------------------------------------------------
    # The defaults keep a compressed dump (dump/restore above) in the snapshot's directory,
    # so every engine has snapshots; engines with a faster native way override all three.
    # ``endpoint`` is the database as reached from here, ``tools`` where its tools run.

    def snapshot_save(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        """Save the database of ``endpoint`` into ``directory`` (which holds only the
        snapshot's ``snapshot.json``, written by core first).

        On failure raise; core removes ``directory``. Anything kept outside it (e.g. a
        database on the server) must be recorded in it for the two methods below.
        """
        with gzip.open(directory / SNAPSHOT_DUMP, "wb", compresslevel=1) as out:
            for chunk in self.dump(tools):
                out.write(chunk)

    def snapshot_move(
        self, endpoint: Endpoint, tools: Tools, directory: Path, source: Path | None = None
    ) -> bool:
        """Keep the data in a snapshot in ``directory`` and make the database again: empty,
        or (``source``) as the snapshot saved there.

        Used before ``reset``, ``restore`` and ``undo`` by engines that can do it without
        copying the data (PostgreSQL renames the database). Return False (the default) to
        have core save a snapshot, then reset or restore. On failure raise with the
        database as it was; record anything kept outside ``directory`` in it first.
        """
        return False

    def snapshot_batch(self) -> contextlib.AbstractContextManager[None]:
        """Held around each snapshot command's calls (with core's lock): what they open
        may be shared until it ends (PostgreSQL: one admin connection, not one per call)."""
        return contextlib.nullcontext()

    def snapshot_catalog(self, endpoint: Endpoint) -> list[dict[str, Any]] | None:
        """The snapshots the server keeps itself, for engines whose snapshots live there
        (None, the default: only core's directories know them). Each is ``{"record":
        snapshot.json's content or None if unrecorded, "key": a name for an unrecorded one,
        "files": {name: text}}``, the files core writes into its directory to reach it."""
        return None

    def snapshot_recover(self, endpoint: Endpoint) -> list[str]:
        """Finish what interrupted snapshot commands left on the server; say what was done."""
        return []

    def snapshot_keep(self, endpoint: Endpoint, directory: Path) -> None:  # noqa: B027
        """Record with the server a snapshot only ``directory`` knows (catalog engines)."""

    def snapshot_deleted(self, endpoint: Endpoint, directory: Path) -> bool:
        """Whether core may remove ``directory``, a snapshot the server does not list:
        the server says it was deleted, or the directory holds nothing of it. The default:
        always (the server holds all of a snapshot's data; catalog engines)."""
        return True

    def snapshot_note(self, endpoint: Endpoint, note: dict[str, str]) -> None:  # noqa: B027
        """Keep with the server what core notes for ``undo``: the last destructive command
        that took no snapshot (``{"reason": ..., "at": ...}``), so the host and a session
        container both see it (catalog engines; others: core's file only)."""

    def snapshot_noted(self, endpoint: Endpoint) -> dict[str, str] | None:
        """The note :meth:`snapshot_note` kept with the server, if any."""
        return None

    def snapshot_restore(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        """Replace the database of ``endpoint`` with the snapshot saved in ``directory``."""
        self.reset(endpoint)
        with gzip.open(directory / SNAPSHOT_DUMP, "rb") as dump:
            self.restore(tools, iter(lambda: dump.read(1 << 20), b""))

    def snapshot_delete(  # noqa: B027 - deliberately empty: a dump needs nothing freed
        self, endpoint: Endpoint, tools: Tools, directory: Path
    ) -> None:
        """Free what the snapshot in ``directory`` holds outside it (core removes the directory)."""

    def snapshot_sizes(self, endpoint: Endpoint, directories: list[Path]) -> list[int]:
        """The bytes each snapshot takes: its directory's files, and what it keeps elsewhere."""
        return [sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in directories]

    def tables(self, endpoint: Endpoint, directory: Path | None = None) -> dict[str, Any]:
        """``{table: {"columns": {name: type}, "rows": count}}`` of the database, or of the
        snapshot in ``directory``, for ``claude-db diff``; raise UsageError where it cannot."""
        raise UsageError(f"diff is not supported for {self.name} databases")


#: the default snapshot's file, in the snapshot's directory
SNAPSHOT_DUMP = "dump.gz"
