"""PostgreSQL snapshots as template databases: a copy on the server itself, near-instant.

``save`` copies the database with ``CREATE DATABASE <snapshot> TEMPLATE <db>``, ``restore``
drops the database and copies it back from the snapshot. Before ``reset``, ``move`` copies
nothing: the database itself becomes the snapshot and an empty one takes its name. All
need the source free of other connections, so they are ended first (clients reconnect,
as after a restart).
Snapshot databases refuse connections, so nothing can block a restore or change them.
The snapshot's directory (kept by claude-db core) records the database's name.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

from claude_db import Endpoint
from claude_db.errors import ClaudeDbError

RECORD = "postgres.json"
COPY_ATTEMPTS = 20  # CREATE DATABASE itself waits ~5 s for ended clients to go each time


def save(endpoint: Endpoint, directory: Path) -> None:
    import psycopg
    from psycopg import sql

    template = f"claude_snapshot_{secrets.token_hex(6)}"
    # recorded before it exists: a failed or interrupted save can always be cleaned up
    _write(directory, {"template": template, "owner": None})
    try:
        with _maintenance(endpoint) as conn:
            row = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                [endpoint.database],
            ).fetchone()
            if row is None:
                raise ClaudeDbError(f"database {endpoint.database!r} does not exist")
            _write(directory, {"template": template, "owner": row[0]})
            _copy(conn, endpoint.database, template, owner=None)
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                    sql.Identifier(template)
                )
            )
    except psycopg.Error as exc:
        raise ClaudeDbError(f"snapshot failed: {_message(exc)}") from None


def move(endpoint: Endpoint, directory: Path) -> bool:
    """Keep the data as the snapshot and leave the database empty, without copying it.

    The database is renamed to the snapshot's template database and an empty one is
    created under its name, as ``reset`` makes it. Returns False, with nothing changed,
    when the role may not rename the database (core then copies and resets).
    """
    import psycopg
    from psycopg import sql

    template = f"claude_snapshot_{secrets.token_hex(6)}"
    _write(directory, {"template": template, "owner": None})
    name, kept = sql.Identifier(endpoint.database), sql.Identifier(template)
    try:
        with _maintenance(endpoint) as conn:
            row = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                [endpoint.database],
            ).fetchone()
            if row is None:
                raise ClaudeDbError(f"database {endpoint.database!r} does not exist")
            _write(directory, {"template": template, "owner": row[0]})
            try:
                _rename(conn, endpoint.database, template)
            except psycopg.errors.InsufficientPrivilege:
                return False
            try:
                conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(kept))
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        name, sql.Identifier(endpoint.user)
                    )
                )
            except BaseException:
                with contextlib.suppress(psycopg.Error):  # the data goes back where it was
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(kept)
                    )
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(kept, name))
                raise
    except psycopg.Error as exc:
        raise ClaudeDbError(f"snapshot failed: {_message(exc)}") from None
    return True


def restore(endpoint: Endpoint, directory: Path) -> None:
    import psycopg
    from psycopg import sql

    record = _read(directory)
    try:
        with _maintenance(endpoint) as conn:
            if not _exists(conn, record["template"]):
                raise ClaudeDbError(
                    f"the snapshot's database {record['template']} is gone from the server"
                )
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(endpoint.database)
                )
            )
            owner = record["owner"] or endpoint.user
            _copy(conn, record["template"], endpoint.database, owner=owner)
    except psycopg.Error as exc:
        raise ClaudeDbError(f"restoring the snapshot failed: {_message(exc)}") from None


def delete(endpoint: Endpoint, directory: Path) -> None:
    import psycopg
    from psycopg import sql

    try:
        record = _read(directory)
    except ClaudeDbError:
        return  # never got as far as making a database
    try:
        with _maintenance(endpoint) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(record["template"]))
            )
    except psycopg.Error as exc:
        raise ClaudeDbError(f"deleting the snapshot failed: {_message(exc)}") from None


def _copy(conn: Any, source: str, target: str, owner: str | None) -> None:
    """``CREATE DATABASE target TEMPLATE source``, ending the source's other connections."""
    from psycopg import sql

    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(target), sql.Identifier(source)
    )
    if owner:
        statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    _with_clients_ended(conn, source, statement)


def _rename(conn: Any, source: str, target: str) -> None:
    """``ALTER DATABASE source RENAME TO target``, ending the source's connections first."""
    from psycopg import sql

    statement = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(source), sql.Identifier(target)
    )
    _with_clients_ended(conn, source, statement)


def _with_clients_ended(conn: Any, database: str, statement: Any) -> None:
    """Run ``statement``, which needs ``database`` free of other connections: end them
    first, and again while clients keep reconnecting in between."""
    import psycopg

    for _ in range(COPY_ATTEMPTS):
        # only backends of roles we may end: a database's owner that is no superuser may
        # not end autovacuum workers (no role), which the statement ends by itself
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND pg_has_role(usesysid, 'MEMBER')",
            [database],
        )
        try:
            conn.execute(statement)
            return
        except psycopg.errors.ObjectInUse:  # a client connected again in between
            time.sleep(0.05)
    raise ClaudeDbError(f"database {database!r} stays in use by other clients; try again")


def _maintenance(endpoint: Endpoint) -> Any:
    """An autocommit connection to another database of the same server."""
    from claude_db_postgres.engine import _connect

    other = "postgres" if endpoint.database != "postgres" else "template1"
    conn = _connect(endpoint.with_database(other), timeout=10)
    conn.autocommit = True
    # local servers commit asynchronously: a snapshot reported saved must survive a crash
    conn.execute("SET synchronous_commit = on")
    return conn


def _exists(conn: Any, database: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
    return row is not None


def _write(directory: Path, record: dict[str, Any]) -> None:
    (directory / RECORD).write_text(json.dumps(record))


def _read(directory: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise ClaudeDbError(f"the snapshot in {directory} is unreadable: {exc}") from None
    return record


def _message(exc: Exception) -> str:
    from claude_db_postgres.engine import _pg_message

    return _pg_message(exc)
