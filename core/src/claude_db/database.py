"""What ``claude-db`` works on: the resolved session's database, and its operations."""

from __future__ import annotations

import bz2
import contextlib
import glob
import gzip
import io
import itertools
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from claude_db.app import App
from claude_db.engine import (
    Credentials,
    DumpDirectory,
    Endpoint,
    ImportOptions,
)
from claude_db.envfile import MARKER, find_env, worktree_top
from claude_db.errors import ClaudeDbError, SessionNotFoundError, UsageError
from claude_db.runtimes.url import UrlRuntime
from claude_db.session import validate_name
from claude_db.statedir import user_name

# Target and listening are imported from here too (they lived here)
from claude_db.target import Target as Target
from claude_db.target import listening as listening
from claude_db.target import parts
from claude_db.urls import parse_url

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
GZIP_LEVEL = 6  # gzip(1)'s default: Python's 9 is several times slower for little gain


def resolve(app: App, session_name: str | None) -> Target:
    """The database a command works on, by one rule: ``--session NAME``; else the ``.env``
    naming a session in the current directory or the nearest one above it (up to the top
    of its git checkout); else ``$CLAUDE_SESSION``; else ``$DATABASE_URL``. What puts the
    session named in doubt is recorded in :attr:`Target.conflict` (see :func:`locate`)."""
    if session_name:
        return _session_target(app, validate_name(session_name))
    found = locate(app)
    if found is None:
        raise SessionNotFoundError(
            "no session here: pass --session NAME, run in (or below) a directory where "
            "claude-session start wrote .env, or set CLAUDE_SESSION or DATABASE_URL"
        )
    target: Target | None = None
    if found.name and found.ours:
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
    conflict: str | None = None  # what puts it in doubt: an inherited variable, a copied .env
    ours: bool = False  # a session of this state directory


def locate(app: App) -> Located | None:
    """The session named here, without ``--session`` (see :func:`resolve`).

    A ``.env`` is the session's own where the session says it lives (or moved from): one
    copied with its directory, or left behind by a moved one whose name a new session took
    since, or written by another state directory, must not lead to this state directory's
    session of that name. Where the ``.env`` still holds that session's address, it is in
    doubt (:attr:`Located.conflict`: destructive commands refuse); where it holds another,
    or another state directory wrote it, every command refuses (exit 2)."""
    env_name = os.environ.get(MARKER) or None
    env_url = os.environ.get("DATABASE_URL") or None
    found = find_env(Path.cwd())
    if found is not None:
        path, values, writer = found
        name, url = values[MARKER], values.get("DATABASE_URL")
        _valid_name(name, str(path))
        ours = app.store.exists(name)
        conflict = None
        if ours:
            conflict = _not_its_home(app, path, name, url, writer)
        if env_name and env_name != name:
            conflict = f"CLAUDE_SESSION={env_name} is set, but {path} names session {name}"
        elif env_url and url and env_url != url:
            conflict = (f"DATABASE_URL is set to {describe_url(env_url)}, but {path} "
                        f"(session {name}) says {describe_url(url)}")
        return Located(name, url, str(path), conflict, ours)
    if env_name:
        _valid_name(env_name, MARKER)
        ours = app.store.exists(env_name)
        top = worktree_top(Path.cwd())  # inherited from another checkout's agent?
        doubt = None
        if top is not None and not (ours and _same_path(app.store.load(env_name).workdir,
                                                        str(top))):
            doubt = (f"CLAUDE_SESSION={env_name} is set, but {top} is a git worktree whose "
                     f"session that is not")
        return Located(env_name, env_url, MARKER, doubt, ours=ours)
    if env_url:
        return Located(None, env_url, "DATABASE_URL")
    return None


def _not_its_home(
    app: App, path: Path, name: str, url: str | None, writer: str | None
) -> str | None:
    """Why ``path`` is not session ``name``'s own ``.env`` though it names it (None: it is);
    raises where it leads to another database than the one it names."""
    ours = str(app.settings.state_dir)
    if writer is not None and not _same_path(writer, ours):
        raise UsageError(
            f"{path} was written by the state directory {writer}, not this one ({ours}): "
            f"set CLAUDE_DB_STATE_DIR={writer}, or pass --session {name} for this one's"
        )
    session = app.store.load(name)
    home = Path(session.workdir)
    if home.exists() and home.samefile(path.parent):
        return None
    now = None
    if session.has_database:
        engine, runtime = parts(app, session)
        now = engine.url(runtime.session_endpoint(session, engine))
    if url != now:
        raise UsageError(
            f"{path} names session {name}, but that is the session of {home}, at another "
            f"address (this .env is older than it): pass --session {name} if you mean it, "
            "or run claude-session start here for a session of this directory"
        )
    if not home.exists():  # moved here with its directory: no other one claims it
        return None
    return f"{path} names session {name}, which is the session of {home} (a copy?)"


def _same_path(a: str, b: str) -> bool:
    """The same directory, however spelt (a symlinked home, a trailing slash)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is gone, or not ours to see
        return os.path.realpath(a) == os.path.realpath(b)


def check_destructive(app: App, target: Target, what: str) -> None:
    """Refuse ``what`` (a command that destroys data) when the database is in doubt: an
    inherited variable names another one, or a bare URL that no session here owns."""
    if target.conflict:
        raise UsageError(f"refusing to {what}: {target.conflict}; "
                         "say which with --session NAME")
    if target.bare_url and not target.owned and not app.settings.allow_url_destructive:
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
    runtime = UrlRuntime(app.settings, endpoint)
    return Target(label, engine, runtime, runtime.record(label, engine, os.getcwd()))


# -- dumps --------------------------------------------------------------------------------


def export_to(
    target: Target, destination: str, database: str | None, export_format: str = "plain"
) -> int:
    """Write a dump to ``destination`` (``-`` = stdout); ``.gz`` compresses. Returns bytes."""
    target.require_running()
    chunks = target.engine.dump_as(target.tools(database), export_format)
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
    _refuse_planted(path)
    _sweep_partials(path)
    # a temporary file beside the target, renamed at the end: never a partial dump; the pid
    # in its name lets the next export remove it if this one is killed
    try:
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=PARTIAL
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
            os.fchmod(raw.fileno(), _mode_for(path))
            os.fsync(raw.fileno())
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


PARTIAL = ".partial"


def _mode_for(path: Path) -> int:
    """An existing file's mode if it is ours (a 0600 dump stays private), else a new file's:
    the umask's, never writable by group or others (``import`` runs a dump's ``\\!`` lines).
    Another user's mode is never copied: their 0666 would make our dump theirs to change."""
    with contextlib.suppress(OSError):
        found = path.lstat()
        if stat.S_ISREG(found.st_mode) and found.st_uid == os.geteuid():
            return found.st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o644 & ~umask  # not mkstemp's 0600: a dump like any file


def _refuse_planted(path: Path) -> None:
    """Refuse to replace another user's file in a sticky directory others may write (such
    as /tmp), as the kernel's fs.protected_regular refuses root's opening it: a rename
    would get around that, and the user would import what that user wrote there."""
    try:
        found, folder = path.lstat(), path.parent.stat()
    except FileNotFoundError:
        return
    shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and found.st_uid not in (os.geteuid(), folder.st_uid):
        raise UsageError(
            f"{path} belongs to {user_name(found.st_uid)}, in {path.parent} where others may "
            "create files: claude-db does not replace it; export to another name, or remove it "
            "first"
        )


def _sweep_partials(path: Path) -> None:
    """Remove ``.NAME.PID.*.partial`` files that our exports killed before their end left
    (another user's are theirs: left alone)."""
    for partial in path.parent.glob(f".{glob.escape(path.name)}.*{PARTIAL}"):
        pid = partial.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                if partial.lstat().st_uid == os.geteuid():
                    partial.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


def check_source(source: str) -> None:
    """What ``import`` accepts: ``-``, anything readable that is not a directory (a file, a
    FIFO, ``/dev/stdin``, a shell's ``<(...)``), or a ``pg_dump -Fd`` directory."""
    if source == "-":
        return
    path = Path(source)
    if path.is_dir() and not _dump_directory(path):
        raise UsageError(
            f"{source} is a directory without a toc.dat (not a pg_dump -Fd dump): give a "
            "dump file, or - for stdin"
        )
    if not path.exists():
        raise UsageError(f"{source} does not exist: give a dump file, or - for stdin")


def _dump_directory(path: Path) -> bool:
    """Whether ``path`` is a ``pg_dump -Fd`` directory (its table of contents in it)."""
    return path.is_dir() and (path / "toc.dat").is_file()


def import_from(
    target: Target, source: str, database: str | None,
    options: ImportOptions = ImportOptions(),
    data: Iterator[bytes] | DumpDirectory | None = None,
) -> None:
    """Apply a dump from ``source`` (``-`` = stdin; compression detected), all or nothing;
    ``data`` is ``source`` already :func:`opened` (else it is opened here)."""
    if data is None:
        with opened(source) as data:
            import_from(target, source, database, options, data)
        return
    target.require_running()
    tools = target.tools(database)
    if source != "-":  # the script's \i, \ir and \copy find files beside it
        tools.workdir = Path(os.path.abspath(source)).parent
    with _reading(source):
        target.engine.restore_with(tools, data, options)


@contextlib.contextmanager
def opened(source: str) -> Iterator[Iterator[bytes] | DumpDirectory]:
    """``source``'s bytes (decompressed) for :func:`import_from`, refused if there are none:
    a caller that replaces or snapshots the database opens it first, so empty input (an
    empty file, a failed pipe) changes nothing. A ``pg_dump -Fd`` directory is read where
    the engine's tools run (mounted on docker)."""
    check_source(source)
    if source != "-" and _dump_directory(Path(source)):
        yield DumpDirectory(Path(os.path.abspath(source)))
        return
    with contextlib.ExitStack() as stack:
        with _reading(source):
            chunks = stack.enter_context(_open_source(source))
            first = next((chunk for chunk in chunks if chunk), None)
        if first is None:
            raise UsageError(f"{_label(source)} is empty: nothing to import")
        yield itertools.chain([first], chunks)


@contextlib.contextmanager
def _reading(source: str) -> Iterator[None]:
    """Input that cannot be read or decompressed: one line, nothing applied."""
    try:
        yield
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:  # unreadable or corrupt
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ClaudeDbError(f"cannot read {source}, nothing was applied: {reason}") from None


#: compressed inputs, told by their first bytes (whatever the file is called)
COMPRESSED: dict[bytes, str] = {
    GZIP_MAGIC: "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}
#: recognised only to be refused clearly
UNSUPPORTED: dict[bytes, str] = {
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"Rar!": "rar",
    b"\x04\x22\x4d\x18": "lz4",
    b"\x89LZO": "lzop",
}
UTF8_BOM = b"\xef\xbb\xbf"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes | None: ...


@contextlib.contextmanager
def _open_source(source: str) -> Iterator[Iterator[bytes]]:
    """The input's bytes, decompressed (gzip, bzip2, xz, zstd, a one-member zip), without a
    leading UTF-8 byte-order mark (psql ignores it too)."""
    with contextlib.ExitStack() as stack:
        raw: IO[bytes] = (
            sys.stdin.buffer if source == "-" else stack.enter_context(open(source, "rb"))
        )
        head = raw.read(8)
        kind = next((k for magic, k in COMPRESSED.items() if head.startswith(magic)), None)
        if kind is None and (
            other := next((k for m, k in UNSUPPORTED.items() if head.startswith(m)), None)
        ):
            raise UsageError(
                f"{_label(source)} is {other}-compressed: decompress it first "
                "(gzip, bzip2, xz, zstd and zip are read as they are)"
            )
        if kind is None:  # plain: no extra layer
            rest = iter(lambda: raw.read(CHUNK), b"")  # the first chunk whole: engines look
            yield _without_bom(itertools.chain([head + raw.read(CHUNK - len(head))], rest))
            return
        whole = io.BufferedReader(_Prefixed(head, raw), CHUNK)
        stream: Readable = whole
        if kind == "gzip":
            stream = stack.enter_context(gzip.GzipFile(fileobj=whole))
        elif kind == "bzip2":
            stream = stack.enter_context(bz2.BZ2File(whole))
        elif kind == "xz":
            stream = stack.enter_context(lzma.LZMAFile(whole))
        elif kind == "zstd":
            stream = stack.enter_context(_unzstd(whole))
        elif kind == "zip":
            stream = stack.enter_context(_zip_member(source))
        yield _without_bom(iter(lambda: stream.read(CHUNK) or b"", b""))


def _label(source: str) -> str:
    return "stdin" if source == "-" else source


class _Prefixed(io.RawIOBase):
    """``raw`` with ``head`` (already read from it) in front again: stdin cannot seek."""

    def __init__(self, head: bytes, raw: IO[bytes]):
        self._head, self._raw = head, raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._raw.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._raw.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def _zip_member(source: str) -> Iterator[IO[bytes]]:
    if source == "-":
        raise UsageError("a zip archive cannot be read from stdin: give its file name")
    with zipfile.ZipFile(source) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1:
            raise UsageError(
                f"{source} holds {len(members)} files: a zip archive must hold exactly one dump"
            )
        with archive.open(members[0]) as member:
            yield member


@contextlib.contextmanager
def _unzstd(compressed: Readable) -> Iterator[Readable]:
    """zstd through the ``zstd`` program (Python 3.11 has no zstd module), fed by a thread."""
    program = shutil.which("zstd")
    if program is None:
        raise UsageError("the input is zstd-compressed and zstd is not installed: "
                         "decompress it first (zstd -d FILE)")
    proc = subprocess.Popen(
        [program, "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            while chunk := compressed.read(CHUNK) or b"":
                proc.stdin.write(chunk)
        with contextlib.suppress(OSError):
            proc.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    finished = False
    try:
        yield _Checked(proc)
        finished = True
    finally:
        proc.stdout.close()
        if not finished or proc.poll() is None:
            proc.kill()
        proc.wait()


class _Checked(io.RawIOBase):
    """A decompressor's output; its failure (a corrupt file) is an OSError at the end."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self._proc = proc

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        assert self._proc.stdout is not None and self._proc.stderr is not None
        data = self._proc.stdout.read(size)
        if not data and self._proc.wait() != 0:
            message = self._proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise OSError(0, f"zstd: {message[-1] if message else 'failed'}")
        return data


def _without_bom(chunks: Iterator[bytes]) -> Iterator[bytes]:
    first = next(chunks, b"")
    while len(first) < len(UTF8_BOM) and (more := next(chunks, b"")):
        first += more
    yield first.removeprefix(UTF8_BOM)
    yield from chunks


def _copy(chunks: Iterator[bytes], out: IO[bytes] | gzip.GzipFile) -> int:
    written = 0
    for chunk in chunks:
        out.write(chunk)
        written += len(chunk)
    return written
