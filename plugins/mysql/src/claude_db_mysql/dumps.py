"""Dumps and imports with the native clients (``mysqldump``/``mysql`` or MariaDB's names).

MySQL commits DDL implicitly, so one transaction cannot make an import all-or-nothing.
Instead an import first dumps every user database (the *snapshot*; when the caller took
a snapshot of the database imported into, core's, only the others) into a file without a
name (a killed command leaves none), then applies the file with the ``mysql`` client, which
stops at the first error; on any failure every database the import created is dropped and
the snapshot is replayed, which drops and recreates each database as it was. Server-wide
objects (users, grants, global variables) are not part of the snapshot. A kill leaves the
import as far as it got: the engine marks it first (``MySQLEngine.restore_with``).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

from claude_db import Tools
from claude_db.errors import ClaudeDbError, NotRunningError
from claude_db.faults import checkpoint
from claude_db_mysql.history import SCHEMA as HISTORY_SCHEMA
from claude_db_mysql.sql import quote_ident, quote_literal
from claude_db_mysql.switches import (
    SYSTEM_SCHEMAS,
    ImportRefusedError,
    SwitchGuard,
    created_databases,
)

CHUNK = 1 << 20
#: every dump: one consistent InnoDB snapshot, with routines, triggers and events, no
#: ``CREATE DATABASE``/``USE`` (it restores into any database name)
DUMP_OPTIONS = (
    "--single-transaction",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--no-tablespaces",  # MySQL 8 wants the PROCESS privilege for tablespaces
    "--default-character-set=utf8mb4",
    "--loose-set-gtid-purged=OFF",  # MySQL: no GTID statements; MariaDB skips `loose-` options
)
#: ``--comments``: comments inside routine, trigger and event bodies are part of their code
CLIENT_OPTIONS = ("--default-character-set=utf8mb4", "--batch", "--comments")
#: "ERROR 2003 (HY000): Can't connect..." (mysql), "Got error: 2002: ..." (mysqldump)
_CANNOT_CONNECT = re.compile(r"(?:^ERROR |Got error: )(?:2002|2003|2005)\b", re.MULTILINE)
#: mariadb-dump (10.5.25+, 10.11.8+, 11.x) begins dumps with this line, which MySQL's client
#: rejects ("Unknown command '\-'"): for it the line is blanked, keeping line numbers
SANDBOX_LINE = re.compile(rb"^/\*M!999999\\- enable the sandbox mode \*/ ?\r?\n")
_MYSQL_ERROR = re.compile(r"^ERROR (\d+) \(([0-9A-Z]+)\)(?: at line (\d+))?: (.*)$")


class Clients:
    """The client tools for ``tools.endpoint`` where ``tools`` runs them.

    MariaDB 11 images ship only ``mariadb``/``mariadb-dump`` and the MySQL images only
    ``mysql``/``mysqldump``: the names are looked up once. The password travels in
    ``MYSQL_PWD``, never on a command line.
    """

    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        endpoint = tools.endpoint
        self.database = endpoint.database
        self.env = {"MYSQL_PWD": endpoint.password}
        self.connection = [
            "--protocol=TCP", f"--host={endpoint.host}", f"--port={endpoint.port}",
            f"--user={endpoint.user}",
        ]

    @functools.cached_property
    def client(self) -> str:
        return self._pick("mariadb", "mysql")

    @functools.cached_property
    def dumper(self) -> str:
        return self._pick("mariadb-dump", "mysqldump")

    def _pick(self, *names: str) -> str:
        for name in names:
            if self.tools.has(name):
                return name
        return names[-1]  # running it reports it missing

    # -- plain commands -------------------------------------------------------------------

    def execute(self, sql: str, *, database: str | None = None) -> list[list[str]]:
        """Run statements with the client; return the rows of the last result."""
        argv = [self.client, *self.connection, *CLIENT_OPTIONS, "--skip-column-names",
                f"--execute={sql}"]
        if database:
            argv.append(f"--database={database}")
        proc = self.tools.popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise tool_error(self.client, err.decode(errors="replace"))
        return [line.split("\t") for line in out.decode().splitlines()]

    def user_databases(self) -> list[str]:
        # (the snapshots' history is no user's: an import never dumps or puts it back)
        excluded = ", ".join(f"'{name}'" for name in (*SYSTEM_SCHEMAS, HISTORY_SCHEMA))
        rows = self.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
            f"WHERE SCHEMA_NAME NOT IN ({excluded})"
        )
        return sorted(row[0] for row in rows if row and row[0])

    def history_dumpable(self, databases: list[str]) -> bool:
        """Whether the history of the system-versioned tables in ``databases`` can be
        dumped: mariadb-dump refuses the whole dump if one is versioned by transaction."""
        names = ", ".join(quote_literal(name) for name in databases)
        rows = self.execute(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA IN "
            f"({names}) AND GENERATION_EXPRESSION = 'ROW START' AND DATA_TYPE = 'bigint'"
        )
        return rows == [["0"]]

    # -- dumps ----------------------------------------------------------------------------

    def dump(
        self, databases: list[str] | None = None, *, schema_only: bool = False
    ) -> Iterator[bytes]:
        """Stream a dump of the endpoint's database, or of ``databases`` with their
        ``DROP``/``CREATE DATABASE`` statements; ``schema_only``: without rows."""
        names = databases or [self.database]
        argv = [self.dumper, *self.connection, *DUMP_OPTIONS]
        if schema_only:
            argv.append("--no-data")
        elif self.history_dumpable(names):
            argv.append("--loose-dump-history")  # MariaDB 10.11+ (MySQL has no versioning)
        if databases:
            argv += ["--add-drop-database", "--databases"]
        argv += ["--", *names]  # a name may begin with '-'
        dumper = self.dumper
        yield from self.tools.stream(argv, env=self.env,
                                     failed=lambda stderr: tool_error(dumper, stderr))

    def apply(self, chunks: Iterable[bytes], *, database: str | None) -> str | None:
        """Feed SQL to the client, which stops at the first error; return that error or None."""
        argv = [self.client, *self.connection, *CLIENT_OPTIONS]
        if database:
            argv.append(f"--database={database}")
        if self.client == "mysql":  # MySQL's client (MariaDB's is called `mariadb`)
            chunks = without_sandbox_line(chunks)
        code, stderr = self.tools.feed(argv, chunks, env=self.env)
        return None if code == 0 else client_error(stderr)

    # -- all-or-nothing imports -----------------------------------------------------------

    def restore(self, chunks: Iterable[bytes], *, snapshot_taken: bool = False) -> None:
        """Apply ``chunks`` all or nothing (see the module). ``snapshot_taken``: the caller
        took a snapshot of the database imported into, and puts it back if this fails;
        only the other user databases (usually none) are dumped here then."""
        guard = SwitchGuard(self.database)
        iterator = iter(chunks)
        head = next(iterator, b"")
        guard.check(head)  # a dump's CREATE DATABASE and USE come first: refused untouched
        before = self.user_databases()
        # `import --database x` of a dump that makes x itself: x need not exist yet
        connect_to: str | None = self.database
        if self.database not in before and self.database in created_databases(head):
            connect_to = None
        saved = [name for name in before if not (snapshot_taken and name == self.database)]
        # a file without a name: a command killed at any point leaves none behind
        with tempfile.TemporaryFile(prefix="claude-db-mysql-") as snapshot:
            if saved:
                for chunk in self.dump(saved):
                    snapshot.write(chunk)
            try:
                error = self.apply(itertools.chain([head], guard.checked(iterator)),
                                   database=connect_to)
                checkpoint("mysql-applied")  # (the tests' kill: the file applied up to its end)
            except BaseException as exc:  # refused on a later line, or interrupted
                refused = isinstance(exc, ImportRefusedError)
                self._roll_back(snapshot, before, saved,
                                reason=str(exc) if refused else "interrupted")
                raise
            if error is not None:
                self._roll_back(snapshot, before, saved, reason=error)
                raise ClaudeDbError(f"import failed, nothing was applied: {error}")

    def _roll_back(
        self, snapshot: IO[bytes], before: list[str], saved: list[str], *, reason: str
    ) -> None:
        """Drop the databases made since ``before``, put ``saved`` back as ``snapshot`` has
        them (raise if that fails)."""
        try:
            created = [db for db in self.user_databases() if db not in before]
            if created:
                self.execute("".join(f"DROP DATABASE {quote_ident(db)};" for db in created))
            if saved:
                snapshot.seek(0)
                failure = self.apply(iter(lambda: snapshot.read(CHUNK), b""), database=None)
                if failure is not None:
                    raise ClaudeDbError(failure)
        except (ClaudeDbError, OSError) as exc:
            kept = ""
            if saved:
                name = _kept(snapshot)
                kept = f"; they were saved before the import in {name} (mysql < {name} applies it)"
            raise ClaudeDbError(
                f"import failed ({reason}) and putting the databases back failed too "
                f"({exc}){kept}"
            ) from None


def _kept(snapshot: IO[bytes]) -> str:
    """A named copy of ``snapshot``: the user's way back when it could not be applied."""
    fd, name = tempfile.mkstemp(prefix="claude-db-mysql-snapshot-", suffix=".sql")
    with os.fdopen(fd, "wb") as out:
        snapshot.seek(0)
        shutil.copyfileobj(snapshot, out)
    return name


def without_sandbox_line(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` with MariaDB's sandbox-mode first line (if any) made an empty line."""
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += chunk
        if b"\n" in head or len(head) > 4096:
            break
    if match := SANDBOX_LINE.match(head):
        head = b"\n" + head[match.end():]
    if head:
        yield head
    yield from iterator


def tool_error(tool: str, stderr: str) -> ClaudeDbError:
    """The error of a client tool that failed; exit 4 when no server answered it."""
    message = client_error(stderr)
    if _CANNOT_CONNECT.search(stderr):
        return NotRunningError(f"{tool} cannot reach the server: {message}")
    return ClaudeDbError(f"{tool} failed: {message}")


def client_error(stderr: str) -> str:
    """The client's error as one line: ``line 3: ERROR 1064 (42000): ...``."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in lines:
        match = _MYSQL_ERROR.match(line)
        if match:
            code, state, at, message = match.groups()
            where = f"line {at}: " if at else ""
            return f"{where}ERROR {code} ({state}): {message}"
    meaningful = [line for line in lines if not _is_noise(line)]
    return meaningful[-1] if meaningful else (lines[-1] if lines else "no error output")


def _is_noise(line: str) -> bool:
    # warnings about `loose-` options one flavour lacks, or MariaDB 11's renamed programs
    return ("unknown variable 'loose-" in line or "unknown option '--loose-" in line
            or "Deprecated program name" in line)
