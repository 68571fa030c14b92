"""Physical snapshots: a database's InnoDB tables as files (transportable tablespaces).

A dump of a 300 MB database takes seconds to make and half a minute to replay. Here
``FLUSH TABLES ... FOR EXPORT`` makes each table's ``.ibd`` file consistent and writes its
``.cfg`` beside it; both are copied into the snapshot while the tables stay locked, with
a dump of the schema (tables, views, routines, triggers, events, no rows). Restoring
recreates the schema, discards each new table's empty tablespace, puts the copies in
its place and imports them: the rows, history of system-versioned tables included, come
back as the server wrote them, at the speed of a file copy.

Used where the server's data directory is on this machine and ours to read and write
(the local runtime), for databases of at least :data:`MIN_BYTES` whose tables are all
InnoDB with plain names, no partitions, no full-text indexes and no sequences. Else
:func:`save` returns False and the engine keeps a dump (core's snapshot).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from claude_db.errors import ClaudeDbError
from claude_db_mysql.dumps import CHUNK, Clients
from claude_db_mysql.sql import quote_ident

RECORD = "tablespaces.json"
SCHEMA = "schema.sql.gz"
#: below this a dump is as fast (a physical restore costs two statements per table)
MIN_BYTES = 32 << 20
#: how long a snapshot waits for clients' open transactions before it dumps instead
LOCK_WAIT_SECONDS = 5
LOCK_WAIT_TIMEOUT = 1205  # ER_LOCK_WAIT_TIMEOUT
#: names whose file names are the names themselves (others are encoded: ``@002d``...)
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def save(conn: Any, clients: Clients, directory: Path) -> bool:
    """Save the database of ``clients`` (``conn`` is connected to its server) as table
    files; return False, with nothing saved, where it cannot."""
    import pymysql

    database = clients.database
    if not PLAIN_NAME.match(database):
        return False
    with conn.cursor() as cur:
        tables = _copyable_tables(cur, database)
        files = _files_directory(cur, database) if tables else None
        if files is None or _size(files, tables) < MIN_BYTES:
            return False
        cur.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")
        try:
            cur.execute("FLUSH TABLES " + ", ".join(map(quote_ident, tables)) + " FOR EXPORT")
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == LOCK_WAIT_TIMEOUT:
                return False  # a client's open transaction holds the tables: dump instead
            raise
        try:
            # the .cfg files the flush wrote prove that these files are that server's; a
            # table made meanwhile would come back empty
            if (not all((files / f"{table}.cfg").is_file() for table in tables)
                    or _copyable_tables(cur, database) != tables):
                return False
            with gzip.open(directory / SCHEMA, "wb", compresslevel=1) as out:
                for chunk in clients.dump(schema_only=True):
                    out.write(chunk)
            for table in tables:
                for suffix in (".ibd", ".cfg"):
                    shutil.copyfile(files / f"{table}{suffix}", directory / f"{table}{suffix}")
        finally:
            cur.execute("UNLOCK TABLES")
    (directory / RECORD).write_text(json.dumps({"database": database, "tables": tables}))
    return True


def saved(directory: Path) -> bool:
    """Whether the snapshot in ``directory`` was saved by :func:`save`."""
    return (directory / RECORD).is_file()


def restore(conn: Any, clients: Clients, directory: Path) -> None:
    """Fill the database of ``clients``, just made empty, from the snapshot in ``directory``
    (``conn`` is connected to its server)."""
    database = clients.database
    tables: list[str] = json.loads((directory / RECORD).read_text())["tables"]
    with gzip.open(directory / SCHEMA, "rb") as schema:
        failure = clients.apply(iter(lambda: schema.read(CHUNK), b""), database=database)
    if failure is not None:
        raise ClaudeDbError(f"restoring the snapshot's schema failed: {failure}")
    with conn.cursor() as cur:
        files = _files_directory(cur, database)
        if files is None:
            raise ClaudeDbError(
                f"the data directory of {database!r} is not readable here: "
                "this snapshot holds table files, which only its own server can take back"
            )
        cur.execute("SET SESSION foreign_key_checks = 0")
        for table in tables:
            cur.execute(f"ALTER TABLE {quote_ident(table)} DISCARD TABLESPACE")
        if any((files / f"{table}.ibd").exists() for table in tables):
            # the files did not go: that directory is not this server's, leave it alone
            raise ClaudeDbError(f"{files} is not the data of the server restored into")
        owner = files.stat()
        for table in tables:
            for suffix in (".ibd", ".cfg"):
                target = files / f"{table}{suffix}"
                shutil.copyfile(directory / f"{table}{suffix}", target)
                if os.geteuid() == 0:
                    os.chown(target, owner.st_uid, owner.st_gid)
        try:
            for table in tables:
                cur.execute(f"ALTER TABLE {quote_ident(table)} IMPORT TABLESPACE")
        finally:
            for table in tables:  # the server reads .cfg at import only
                (files / f"{table}.cfg").unlink(missing_ok=True)


def _copyable_tables(cur: Any, database: str) -> list[str]:
    """The database's tables if every one can be copied as files, else an empty list."""
    cur.execute(
        "SELECT TABLE_NAME, TABLE_TYPE, ENGINE, CREATE_OPTIONS "
        "FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE <> 'VIEW'",
        (database,),
    )
    rows = cur.fetchall()
    plain = all(
        PLAIN_NAME.match(name) and kind in ("BASE TABLE", "SYSTEM VERSIONED")
        and engine == "InnoDB" and "partitioned" not in (options or "")
        for name, kind, engine, options in rows
    )
    if not rows or not plain:
        return []
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND INDEX_TYPE = 'FULLTEXT'", (database,)
    )
    if cur.fetchone()[0]:
        return []
    return sorted(row[0] for row in rows)


def _size(files: Path, tables: list[str]) -> int:
    """Bytes of the tables' files (the server's statistics lag behind a fresh load)."""
    try:
        return sum((files / f"{table}.ibd").stat().st_size for table in tables)
    except OSError:  # e.g. a table in another directory (DATA DIRECTORY)
        return 0


def _files_directory(cur: Any, database: str) -> Path | None:
    """The database's directory in the server's data directory, if we may use it here."""
    cur.execute("SELECT @@datadir, @@innodb_file_per_table")
    datadir, per_table = cur.fetchone()
    files = Path(datadir) / database
    if not int(per_table) or not files.is_dir():
        return None
    return files if os.access(files, os.R_OK | os.W_OK | os.X_OK) else None


#: in every snapshot's directory: its tables as ``claude-db diff`` compares them
TABLES = "tables.json"


def tables(conn: Any, database: str) -> dict[str, Any]:
    """The database's base tables: columns and exact row counts, read in one consistent
    snapshot (a snapshot cannot be queried: :func:`keep_tables` writes this beside it)."""
    found: dict[str, Any] = {}
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        try:
            cur.execute(
                "SELECT c.TABLE_NAME, c.COLUMN_NAME, c.COLUMN_TYPE "
                "FROM information_schema.COLUMNS c JOIN information_schema.TABLES t "
                "ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME "
                "AND t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') WHERE c.TABLE_SCHEMA = %s "
                "ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION", (database,))
            for table, column, type_ in cur.fetchall():
                found.setdefault(table, {"columns": {}, "rows": 0})["columns"][column] = type_
            if found:
                cur.execute(" UNION ALL ".join(
                    # the driver formats the statement: a name's % is doubled
                    "SELECT %s, COUNT(*) FROM "
                    + f"{quote_ident(database)}.{quote_ident(t)}".replace("%", "%%")
                    for t in found), tuple(found))
                for table, count in cur.fetchall():
                    found[table]["rows"] = int(count)
        finally:
            cur.execute("COMMIT")
    return found


def keep_tables(conn: Any, database: str, directory: Path) -> None:
    (directory / TABLES).write_text(json.dumps(tables(conn, database)))


def kept_tables(directory: Path) -> dict[str, Any]:
    try:
        found: dict[str, Any] = json.loads((directory / TABLES).read_text())
    except (OSError, ValueError) as exc:
        raise ClaudeDbError(f"this snapshot holds no table list (taken by an older claude-db): "
                            f"{exc}") from None
    return found
