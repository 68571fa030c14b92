"""The ``example`` engine: PostgreSQL under its own name and URL scheme.

Written against the :class:`claude_db.Engine` contract from scratch (psycopg for queries,
``pg_dump``/``psql`` through :class:`claude_db.Tools` for dumps), reusing the postgres
plugin's :class:`~claude_db_postgres.local.PostgresLocalServer` to run locally.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from claude_db import ClaudeDbError, Credentials, Endpoint, Engine, LocalServer, QueryResult, Tools
from claude_db_postgres.local import PostgresLocalServer


class ExampleEngine(Engine):
    name = "example"
    url_schemes = ("example",)
    default_image = "postgres:17-alpine"
    default_port = 5432
    default_user = "example"
    default_database = "exampledb"
    container_data_dir = "/var/lib/postgresql/data"
    shell_name = "psql"

    # -- connection contract ----------------------------------------------------------

    def native_env(self, endpoint: Endpoint) -> dict[str, str]:
        # psql and pg_dump read these: they need no arguments
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

    # -- operations ---------------------------------------------------------------------

    def query(self, endpoint: Endpoint, text: str) -> QueryResult:
        try:
            with _connect(endpoint, timeout=10) as conn:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(text.encode())
                    result = QueryResult(status=cur.statusmessage or "")
                    if cur.description is not None:
                        result.columns = [col.name for col in cur.description]
                        result.rows = [tuple(_plain(v) for v in row) for row in cur.fetchall()]
                    return result
        except psycopg.Error as exc:
            raise ClaudeDbError(f"query failed: {_first_line(exc)}") from None

    def dump(self, tools: Tools) -> Iterator[bytes]:
        with tempfile.TemporaryFile() as errors:
            proc = tools.popen(
                ["pg_dump", "--no-owner", "--no-privileges"],
                env=self.native_env(tools.endpoint), stdout=subprocess.PIPE, stderr=errors,
            )
            assert proc.stdout is not None
            try:
                while chunk := proc.stdout.read(1 << 20):
                    yield chunk
            finally:
                proc.stdout.close()
                code = proc.wait()
            if code != 0:
                raise ClaudeDbError(f"pg_dump failed: {_last_line(errors)}")

    def restore(self, tools: Tools, chunks: Iterable[bytes]) -> None:
        # one transaction that stops at the first error: a failed import applies nothing
        with tempfile.TemporaryFile() as errors:
            proc = tools.popen(
                ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"],
                env=self.native_env(tools.endpoint), stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=errors,
            )
            assert proc.stdin is not None
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # psql stopped at an error; its message says which
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if proc.wait() != 0:
                raise ClaudeDbError(f"import failed, nothing was applied: {_last_line(errors)}")

    def reset(self, endpoint: Endpoint) -> None:
        maintenance = endpoint.with_database("postgres")
        try:
            with _connect(maintenance, timeout=10) as conn:
                conn.autocommit = True
                name, owner = sql.Identifier(endpoint.database), sql.Identifier(endpoint.user)
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, owner))
        except psycopg.Error as exc:
            raise ClaudeDbError(f"reset failed: {_first_line(exc)}") from None

    def shell_argv(self, endpoint: Endpoint) -> list[str]:
        return ["psql"]


def _connect(endpoint: Endpoint, timeout: float) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=endpoint.host, port=endpoint.port, user=endpoint.user, password=endpoint.password,
        dbname=endpoint.database, connect_timeout=max(1, int(timeout)),
    )


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _last_line(errors: Any) -> str:
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no error output"
