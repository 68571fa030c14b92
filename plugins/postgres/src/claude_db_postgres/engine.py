"""PostgreSQL: the official image's contract, psycopg for queries, pg_dump/psql for dumps."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from claude_db import Credentials, Endpoint, Engine, LocalServer, QueryResult, Tools
from claude_db.errors import ClaudeDbError, PartlyAppliedError
from claude_db_postgres import snapshots
from claude_db_postgres.local import PostgresLocalServer

CHUNK = 1 << 20
#: pipe capacity to and from pg_dump/psql: they run ahead while we (de)compress a chunk
PIPE_BYTES = 1 << 20


class PostgresEngine(Engine):
    name = "postgres"
    url_schemes = ("postgresql", "postgres")
    default_image = "postgres:17-alpine"
    default_port = 5432
    default_user = "postgres"
    container_data_dir = "/var/lib/postgresql/data"
    shell_name = "psql"

    def native_env(self, endpoint: Endpoint) -> dict[str, str]:
        return {
            "PGHOST": endpoint.host,
            "PGPORT": str(endpoint.port),
            "PGUSER": endpoint.user,
            "PGPASSWORD": endpoint.password,
            "PGDATABASE": endpoint.database,
        }

    def container_env(self, credentials: Credentials) -> dict[str, str]:
        return {
            "POSTGRES_USER": credentials.user,
            "POSTGRES_PASSWORD": credentials.password,
            "POSTGRES_DB": credentials.database,
        }

    def check_ready(self, endpoint: Endpoint, timeout: float) -> str:
        import psycopg

        try:
            with _connect(endpoint, timeout) as conn:
                return str(conn.info.parameter_status("server_version") or "")
        except psycopg.OperationalError:
            # the server answers but a killed reset or a crash during a drop left the
            # database missing or invalid: finish that (so attach repairs it)
            if not snapshots.repair(endpoint):
                raise
        return self.check_ready(endpoint, timeout)

    def never_ready(self, error: Exception) -> bool:
        return NEVER_READY.search(str(error)) is not None

    def local_server(self) -> LocalServer:
        return PostgresLocalServer()

    # -- operations -----------------------------------------------------------------------

    def query(self, endpoint: Endpoint, text: str) -> QueryResult:
        import psycopg

        try:
            with _connect(endpoint, timeout=10) as conn:
                conn.autocommit = True  # like psql -c: the statement commits on its own
                _load_as_server_text(conn.adapters)
                with conn.cursor() as cur:
                    cur.execute(text.encode())  # bytes: no client-side parameter parsing of '%'
                    while cur.nextset():  # several statements: the last one's result, as
                        pass  # psql -c showed before v15
                    result = QueryResult(status=cur.statusmessage or "")
                    if cur.description is not None:
                        result.columns = [col.name for col in cur.description]
                        result.rows = [tuple(_plain(v) for v in row) for row in cur.fetchall()]
                    return result
        except psycopg.Error as exc:
            raise ClaudeDbError(f"query failed: {_pg_message(exc)}") from None

    def dump(self, tools: Tools) -> Iterator[bytes]:
        argv = ["pg_dump", "--no-owner", "--no-privileges", "--quote-all-identifiers"]
        with tempfile.TemporaryFile() as errors:
            proc = tools.popen(
                argv, env=self.native_env(tools.endpoint), stdout=subprocess.PIPE, stderr=errors
            )
            assert proc.stdout is not None
            _widen(proc.stdout)
            try:
                while chunk := proc.stdout.read(CHUNK):
                    yield chunk
            finally:
                proc.stdout.close()
                code = proc.wait()
            if code != 0:
                raise ClaudeDbError(f"pg_dump failed: {_tail(errors)}")

    def restore(self, tools: Tools, chunks: Iterable[bytes]) -> None:
        # One transaction, stop at the first error: nothing of a failed import stays applied.
        # BEGIN and COMMIT are sent by us, COMMIT only once the whole input was read: psql's
        # --single-transaction would commit at end of input, and an interrupted `docker exec`
        # closes psql's input inside the container without killing psql.
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        # The local runtime's servers run with synchronous_commit=off: without this, a server
        # crash right after the import reported success would lose it whole.
        durable = {"PGOPTIONS": f"{os.environ.get('PGOPTIONS', '')} -c synchronous_commit=on"}
        with tempfile.TemporaryFile() as errors:
            proc = tools.popen(
                argv,
                env={**self.native_env(tools.endpoint), **durable},
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
            assert proc.stdin is not None
            _widen(proc.stdin)
            control = TransactionControl()
            try:
                proc.stdin.write(b"BEGIN; ")  # same line as the file's first: line numbers hold
                for chunk in chunks:
                    control.scan(chunk)
                    proc.stdin.write(chunk)
                control.finish()
                proc.stdin.write(b"\nCOMMIT;\n")
                proc.stdin.close()
            except BrokenPipeError:
                pass  # psql stopped at an error: its message says which
            except BaseException:
                proc.kill()  # interrupted: psql's transaction never commits
                proc.wait()
                raise
            if proc.wait() != 0:
                error = _psql_error(errors)
                failed_at = re.match(r"line (\d+):", error)
                if control.found is None or (
                    failed_at is not None and control.found[1] > int(failed_at.group(1))
                ):  # nothing ended our transaction before the error: nothing stays
                    raise ClaudeDbError(f"import failed, nothing was applied: {error}")
                what, line = control.found
                where = " at " if failed_at else ": "
                raise PartlyAppliedError(
                    f"import failed{where}{error}; the file has its own transaction "
                    f"control ({what} at line {line}), so what it committed before the error "
                    "stays applied",
                    failure=f"import failed{where}{error}",
                )

    def reset(self, endpoint: Endpoint) -> None:
        import psycopg
        from psycopg import sql

        name = sql.Identifier(endpoint.database)
        owner = sql.Identifier(endpoint.user)
        other = "postgres" if endpoint.database != "postgres" else "template1"
        maintenance = endpoint.with_database(other)
        try:
            with _connect(maintenance, timeout=10) as conn:
                conn.autocommit = True
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, owner))
        except psycopg.Error as exc:
            raise ClaudeDbError(f"reset failed: {_pg_message(exc)}") from None

    def shell_argv(self, endpoint: Endpoint) -> list[str]:
        return ["psql"]

    # -- snapshots: template databases on the server (claude_db_postgres.snapshots) -------

    def snapshot_save(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        snapshots.save(endpoint, tools, directory)

    def snapshot_move(
        self, endpoint: Endpoint, tools: Tools, directory: Path, source: Path | None = None
    ) -> bool:
        return snapshots.move(endpoint, directory, source)

    def snapshot_restore(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        snapshots.restore(endpoint, directory)

    def snapshot_delete(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        snapshots.delete(endpoint, directory)

    def snapshot_catalog(self, endpoint: Endpoint) -> list[dict[str, Any]] | None:
        return snapshots.catalog(endpoint)

    def snapshot_recover(self, endpoint: Endpoint) -> list[str]:
        return snapshots.recover(endpoint)

    def snapshot_keep(self, endpoint: Endpoint, directory: Path) -> None:
        snapshots.keep(endpoint, directory)


#: connection refusals that waiting never clears; libpq gives no SQLSTATE for a failed
#: connection, so the server's (English) message tells: wrong password, no such database
#: or role, not allowed by pg_hba.conf or to log in
NEVER_READY = re.compile(
    r'FATAL: +(password authentication failed|(database|role) "[^"]*" does not exist'
    r"|no pg_hba\.conf entry|role \S+ is not permitted to log in)"
)

#: a statement that ends our import's transaction or leaves its connection: COMMIT,
#: END TRANSACTION/WORK (a bare ``END;`` is left out: every PL/pgSQL body pg_dump writes
#: ends with one), ROLLBACK (not ROLLBACK TO a savepoint), ABORT, PREPARE TRANSACTION,
#: psql's \\c / \\connect (lower case: \\C sets a title). BEGIN and START TRANSACTION change
#: nothing inside our transaction. Looked for only at a line start and after a ``;``: two
#: regexes that each begin with one literal byte, which the regex engine skips to fast.
CONTROL = (
    rb"[ \t]*(?=[CcEeRrAaPp\\])(?:(?i:(COMMIT|END(?=[ \t]+(?:TRANSACTION|WORK)\b)"
    rb"|ROLLBACK(?![ \t]+TO\b)|ABORT|PREPARE[ \t]+TRANSACTION)\b)|(\\c(?:onnect)?)(?![A-Za-z]))"
)
CONTROL_AT = (re.compile(rb"\n" + CONTROL), re.compile(rb";" + CONTROL))
#: the end of the stream so far, scanned again with the next chunk (a line cut in two)
CARRY = 128
#: a match is decided only this far from the end of what was read: what follows tells
#: ``\\c`` from ``\\copy`` and ``ROLLBACK`` from ``ROLLBACK TO``
MARGIN = 32


class TransactionControl:
    """Finds the first statement of a script that commits or reconnects on its own, which
    ends the one transaction an import runs in. Scans only line starts and what follows a
    ``;``, chunk by chunk, with the end of the previous chunk scanned again where a line is
    cut in two.

    A false positive (such a word inside COPY data, a string or a PL/pgSQL body) only
    changes the wording of a failed import's error, never what is applied.
    """

    def __init__(self) -> None:
        self.found: tuple[str, int] | None = None
        self._carry = b"\n"  # before the first line: a newline, as if one ended there
        self._lines = 1  # newlines so far, that one included: the current line's number

    def scan(self, chunk: bytes) -> None:
        if self.found is not None or not chunk:
            return
        carry = self._carry
        joined = carry + chunk[:CARRY]
        match = _first(joined)
        if match and match.start() < len(carry) and match.end() <= len(joined) - MARGIN:
            self._found(match, self._lines - carry.count(b"\n", match.start() + 1))
            return
        match = _first(chunk)
        if match and match.end() <= len(chunk) - MARGIN:
            self._found(match, self._lines + chunk.count(b"\n", 0, match.start() + 1))
            return
        self._lines += chunk.count(b"\n")
        self._carry = (carry + chunk[-CARRY:])[-CARRY:]

    def finish(self) -> None:
        """The stream ended: decide what was waiting for more input."""
        if self.found is None and (match := _first(self._carry + b"\n")):
            self._found(match, self._lines - self._carry.count(b"\n", match.start() + 1))

    def _found(self, match: re.Match[bytes], line: int) -> None:
        word = (match.group(1) or match.group(2)).decode()
        self.found = (" ".join(word.upper().split()) if match.group(1) else word, line)


def _first(data: bytes) -> re.Match[bytes] | None:
    matches = [m for m in (pattern.search(data) for pattern in CONTROL_AT) if m]
    return min(matches, key=lambda m: m.start(), default=None)


def _widen(pipe: Any) -> None:
    """Grow a pipe from 64 KiB to :data:`PIPE_BYTES` where the OS allows it (Linux)."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with contextlib.suppress(OSError, ValueError):
            fcntl.fcntl(pipe.fileno(), setpipe, PIPE_BYTES)


def _connect(endpoint: Endpoint, timeout: float) -> Any:
    import psycopg

    return psycopg.connect(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        password=endpoint.password,
        dbname=endpoint.database,
        connect_timeout=max(1, int(timeout)),
        application_name="claude-db",
    )


#: types whose psycopg values are JSON-native (arrays of them load as lists of them)
JSON_NATIVE = frozenset({
    "bool", "int2", "int4", "int8", "oid", "xid", "xid8", "cid", "float4", "float8",
    "json", "jsonb", "text", "varchar", "bpchar", "name", '"char"',
})


class ServerFloat(float):
    """A float that prints as the server sent it (``1``, ``1e+20``, ``NaN``), not as Python
    would (``1.0``): JSON gets the number, tables and CSV the server's text."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> ServerFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value

    def __str__(self) -> str:
        return self.text


def _load_as_server_text(adapters: Any) -> None:
    """Load every non-JSON-native built-in type (numeric, dates and times, interval, bytea,
    uuid, inet, money, ranges...) as the server's text, as psql prints it; keep bool, ints,
    floats, json/jsonb and text as Python values. Array loaders use their element's loader,
    so arrays of these load as lists of server text. Unknown types already load as text."""
    from psycopg.adapt import Loader
    from psycopg.types.string import TextLoader

    class FloatLoader(Loader):
        def load(self, data: Any) -> ServerFloat:
            return ServerFloat(bytes(data).decode())

    for info in adapters.types:
        if info.name in ("float4", "float8"):
            adapters.register_loader(info.oid, FloatLoader)
        elif info.name not in JSON_NATIVE:
            adapters.register_loader(info.oid, TextLoader)


def _plain(value: Any) -> Any:
    """Text of a SQL_ASCII database arrives as bytes (in arrays too): as str, to print and
    JSON-encode it."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag else None
    lines = str(primary or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _tail(errors: Any) -> str:
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no error output"


def _psql_error(errors: Any) -> str:
    """psql's first ERROR line (``psql:<stdin>:3: ERROR:  ...``), tidied to one line."""
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    for line in lines:
        for marker in ("ERROR:", "FATAL:"):
            location, found, message = line.partition(marker)
            if found:
                line_no = re.search(r"^psql:[^:]*:(\d+):", location.strip())
                where = f"line {line_no.group(1)}: " if line_no else ""
                return f"{where}{message.strip()}"
    return lines[-1] if lines else "psql failed"
