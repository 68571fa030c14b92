"""The ``example`` engine: PostgreSQL under its own name and URL scheme.

Written against the :class:`claude_db.Engine` contract from scratch (psycopg for queries,
``pg_dump``/``psql`` through :class:`claude_db.Tools` for dumps), reusing the postgres
plugin's :class:`~claude_db_postgres.local.PostgresLocalServer` to run locally.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from claude_db import ClaudeDbError, Credentials, Endpoint, Engine, LocalServer, QueryResult, Tools
from claude_db.engine import last_line
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

    @contextlib.contextmanager
    def query(self, endpoint: Endpoint, text: str) -> Iterator[QueryResult]:
        # The connection stays open while the caller reads the rows. This example keeps the
        # result in the client (psycopg's client-side cursor) and hands it out row by row;
        # an engine meant for big results streams them from the server instead (the
        # postgres plugin's claude_db_postgres/query.py: libpq's chunked rows).
        try:
            with _connect(endpoint, timeout=10) as conn:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(text.encode())
                    columns = [col.name for col in cur.description or []]
                    yield QueryResult(columns=columns, status=cur.statusmessage or "",
                                      rows=(tuple(_plain(v) for v in row) for row in cur))
        except psycopg.Error as exc:
            raise ClaudeDbError(f"query failed: {_first_line(exc)}") from None

    def dump(self, tools: Tools) -> Iterator[bytes]:
        return tools.stream(
            ["pg_dump", "--no-owner", "--no-privileges"], env=self.native_env(tools.endpoint),
            failed=lambda stderr: ClaudeDbError(f"pg_dump failed: {last_line(stderr)}"),
        )

    def restore(self, tools: Tools, chunks: Iterable[bytes]) -> None:
        # one transaction that stops at the first error: a failed import applies nothing.
        # COMMIT is sent after the whole input, not by --single-transaction: that commits at
        # the end of psql's input, and an interrupted `docker exec` ends the input early
        # without killing psql (a partial import would commit)
        code, stderr = tools.feed(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "BEGIN", "-f", "-"],
            itertools.chain(chunks, [b"\n;\nCOMMIT;\n"]), env=self.native_env(tools.endpoint),
        )
        if code != 0:
            raise ClaudeDbError(f"import failed, nothing was applied: {last_line(stderr)}")

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
