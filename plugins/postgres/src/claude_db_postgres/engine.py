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
from claude_db.errors import ClaudeDbError
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
        with _connect(endpoint, timeout) as conn:
            return str(conn.info.parameter_status("server_version") or "")

    def local_server(self) -> LocalServer:
        return PostgresLocalServer()

    # -- operations -----------------------------------------------------------------------

    def query(self, endpoint: Endpoint, text: str) -> QueryResult:
        import psycopg

        try:
            with _connect(endpoint, timeout=10) as conn:
                conn.autocommit = True  # like psql -c: the statement commits on its own
                with conn.cursor() as cur:
                    cur.execute(text.encode())  # bytes: no client-side parameter parsing of '%'
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
            try:
                proc.stdin.write(b"BEGIN; ")  # same line as the file's first: line numbers hold
                for chunk in chunks:
                    proc.stdin.write(chunk)
                proc.stdin.write(b"\nCOMMIT;\n")
                proc.stdin.close()
            except BrokenPipeError:
                pass  # psql stopped at an error: its message says which
            except BaseException:
                proc.kill()  # interrupted: psql's transaction never commits
                proc.wait()
                raise
            if proc.wait() != 0:
                raise ClaudeDbError(f"import failed, nothing was applied: {_psql_error(errors)}")

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
        snapshots.save(endpoint, directory)

    def snapshot_move(self, endpoint: Endpoint, tools: Tools, directory: Path) -> bool:
        return snapshots.move(endpoint, directory)

    def snapshot_restore(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        snapshots.restore(endpoint, directory)

    def snapshot_delete(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        snapshots.delete(endpoint, directory)


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


def _plain(value: Any) -> Any:
    """Values as JSON/CSV-friendly Python: leave basic types, stringify the rest."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


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
