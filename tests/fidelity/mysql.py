"""A MySQL/MariaDB database's fingerprint (PyMySQL, as an application connects).

Catalog: the server's own ``SHOW CREATE`` of the database and of every table, view,
sequence, routine, trigger and event (their creation timestamps left out), and the
privileges granted on the database and its objects. Rows: per table its row count and the
SHA-256 of its rows in a fixed order (sorted); for system-versioned tables every row of
the history too (``FOR SYSTEM_TIME ALL`` with its period's start and end), and for
sequences their state. The database's name is replaced by ``<db>`` wherever it is printed.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import unquote, urlsplit

from fidelity.fingerprint import Fingerprint


def connect(url: str, database: str | None = None) -> Any:
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname, port=parts.port, user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=database or unquote(parts.path.lstrip("/")), autocommit=True,
        charset="utf8mb4",
    )


def fingerprint(url: str) -> Fingerprint:
    """The fingerprint of the database at ``url``."""
    with connect(url) as conn, conn.cursor() as cur:
        database = conn.db.decode()

        def rows(sql: str, *args: Any) -> list[tuple[Any, ...]]:
            cur.execute(sql, args or None)
            return [tuple(row) for row in cur.fetchall()]

        def named(text: Any) -> Any:
            return text.replace(f"`{database}`", "`<db>`") if isinstance(text, str) else text

        result: Fingerprint = {
            "database": [tuple(named(value) for value in row) for row in
                         rows(f"SHOW CREATE DATABASE {_quote(database)}")],
            "schema": rows(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME, SCHEMA_COMMENT "
                "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", database),
        }
        objects = rows("SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                       "WHERE TABLE_SCHEMA = %s", database)
        created, data = [], []
        for name, kind in sorted(objects):
            table = _quote(name)
            if kind == "VIEW":
                found = rows(f"SHOW CREATE VIEW {table}")[0]
                created.append((kind, name, named(found[1]), found[2], found[3]))
                continue
            statement = "SEQUENCE" if kind == "SEQUENCE" else "TABLE"
            created.append((kind, name, named(rows(f"SHOW CREATE {statement} {table}")[0][1])))
            if kind == "SYSTEM VERSIONED":
                content = _history(cur, table)
            else:
                content = rows(f"SELECT * FROM {table}")
            data.append((name, len(content), _digest(content)))
        result["tables"] = sorted(created)
        result["rows"] = sorted(data)

        routines = []
        for name, kind in rows("SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES "
                               "WHERE ROUTINE_SCHEMA = %s", database):
            found = rows(f"SHOW CREATE {kind} {_quote(name)}")[0]
            routines.append((kind, name, found[1], named(found[2]), *found[3:]))
        result["routines"] = sorted(routines)
        triggers = []
        for name, order in rows("SELECT TRIGGER_NAME, ACTION_ORDER "
                                "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s",
                                database):
            found = rows(f"SHOW CREATE TRIGGER {_quote(name)}")[0]
            triggers.append((name, order, found[1], named(found[2]), *found[3:6]))
        result["triggers"] = sorted(triggers)
        events = []
        for name, status in rows("SELECT EVENT_NAME, STATUS FROM information_schema.EVENTS "
                                 "WHERE EVENT_SCHEMA = %s", database):
            found = rows(f"SHOW CREATE EVENT {_quote(name)}")[0]
            events.append((name, status, found[1], found[2], named(found[3]), *found[4:]))
        result["events"] = sorted(events)
        result["privileges"] = sorted(
            rows("SELECT GRANTEE, '', '', PRIVILEGE_TYPE, IS_GRANTABLE "
                 "FROM information_schema.SCHEMA_PRIVILEGES WHERE TABLE_SCHEMA = %s", database)
            + rows("SELECT GRANTEE, TABLE_NAME, '', PRIVILEGE_TYPE, IS_GRANTABLE "
                   "FROM information_schema.TABLE_PRIVILEGES WHERE TABLE_SCHEMA = %s", database)
            + rows("SELECT GRANTEE, TABLE_NAME, COLUMN_NAME, PRIVILEGE_TYPE, IS_GRANTABLE "
                   "FROM information_schema.COLUMN_PRIVILEGES WHERE TABLE_SCHEMA = %s",
                   database)
        )
        return result


def _history(cur: Any, table: str) -> list[tuple[Any, ...]]:
    """Every row version of a system-versioned table, with its period."""
    import pymysql

    try:  # implicit period columns are invisible: name them
        cur.execute(f"SELECT *, ROW_START, ROW_END FROM {table} FOR SYSTEM_TIME ALL")
    except pymysql.MySQLError:  # explicit ones are in *
        cur.execute(f"SELECT * FROM {table} FOR SYSTEM_TIME ALL")
    return [tuple(row) for row in cur.fetchall()]


def _digest(rows: list[tuple[Any, ...]]) -> str:
    digest = hashlib.sha256()
    for line in sorted(repr(row) for row in rows):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
