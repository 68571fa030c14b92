"""MySQL snapshots kept with the server: one history for the host and a session container.

The server's database ``claude_db_snapshots`` holds each snapshot's record (core's
``snapshot.json``) and its files (the dump, the table list ``diff`` reads) in 1 MiB
chunks; a snapshot's directory in a state directory holds ``mysql.json`` naming it, and
the files once fetched (:func:`fetch`). A snapshot is written in one transaction: a save
killed at any point leaves nothing of it on the server. So the host and a session
container (whose state is its own filesystem) list, restore and undo the same snapshots,
and a re-created container finds them all (core's ``_sync``, ``Engine.snapshot_catalog``).

Table files (``.ibd``/``.cfg`` of a physical snapshot, claude_db_mysql.tablespaces) stay
where they were saved, beside the server on the local runtime: only that server's own
data directory can take them back. The record says where they are.

Each user of the server sees only its own snapshots and note (the ``owner`` column: the
user part of ``CURRENT_USER()``, the same from the host and a container), as PostgreSQL
lists only the role's own: two users of one shared server never restore or delete each
other's. Where the session's user may not create that database (``CLAUDE_DB_USER`` with privileges
on its own database only), snapshots stay in the state directory of whoever took them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from claude_db.errors import ClaudeDbError
from claude_db.kept_snapshots import FILE_NAME, KeptSnapshots, chunks, write_fetched
from claude_db.snapshots import META

SCHEMA = "claude_db_snapshots"
RECORD = "mysql.json"  # in the snapshot's directory: {"key": <its id on the server>}
KEPT = KeptSnapshots(RECORD)
#: kept where they were saved, never sent to the server
LOCAL_SUFFIXES = (".ibd", ".cfg")
#: the server refuses: no privilege to create the database or its tables (1044, 1142), or
#: to read them (1142, 1143)
NOT_ALLOWED = (1044, 1142, 1143)
#: the database or a table is missing: no snapshot was ever kept on this server
MISSING = (1049, 1146)
DDL = (
    f"CREATE DATABASE IF NOT EXISTS {SCHEMA} CHARACTER SET utf8mb4",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.snapshots (id CHAR(24) PRIMARY KEY, "
    "owner VARCHAR(255) NOT NULL, record LONGTEXT NOT NULL, KEY (owner)) ENGINE=InnoDB",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.files (id CHAR(24) NOT NULL, "
    "name VARCHAR(255) NOT NULL, seq INT NOT NULL, data LONGBLOB NOT NULL, "
    "PRIMARY KEY (id, name, seq)) ENGINE=InnoDB",
    # what core notes for undo (the last destructive command that took no snapshot)
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.notes (owner VARCHAR(255) NOT NULL, "
    "name VARCHAR(64) NOT NULL, value LONGTEXT NOT NULL, PRIMARY KEY (owner, name)) "
    "ENGINE=InnoDB",
    # the ids of deleted snapshots: only these may go from other state directories (a
    # history lost with its database is kept again from theirs, :func:`keep`)
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.deleted (id CHAR(24) PRIMARY KEY) ENGINE=InnoDB",
    # a command under way that drops or rewrites a database (:func:`mark`)
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.pending (owner VARCHAR(255) NOT NULL, "
    "name VARCHAR(64) COLLATE utf8mb4_bin NOT NULL, value LONGTEXT NOT NULL, "
    "PRIMARY KEY (owner, name)) ENGINE=InnoDB",
)
#: who keeps a snapshot: the user part of 'user@host' (after the last '@')
OWNER = ("LEFT(CURRENT_USER(), CHAR_LENGTH(CURRENT_USER()) "
         "- LOCATE('@', REVERSE(CURRENT_USER())))")
#: the one note core keeps
UNSNAPSHOTTED = "unsnapshotted"


def catalog(conn: Any) -> list[dict[str, Any]] | None:
    """The user's snapshots the server keeps (``Engine.snapshot_catalog``); None where the
    user may not keep any there (then the state directories are the history)."""
    import pymysql

    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, record FROM {SCHEMA}.snapshots WHERE owner = {OWNER}")
            rows = cur.fetchall()
    except pymysql.MySQLError as exc:
        code = exc.args[0] if exc.args else None
        if code in MISSING:  # none kept yet (made by the first save, never by a listing)
            return []
        if code in NOT_ALLOWED:
            return None
        raise
    found = []
    for key, text in rows:
        try:
            record = json.loads(text)
        except ValueError:
            record = None  # listed as unrecorded, to delete
        found.append({"record": record, "key": f"mysql-{key}", "files": KEPT.files(key)})
    return found


def keep(conn: Any, directory: Path) -> bool:
    """Keep the snapshot saved in ``directory`` with the server: its record and files, in
    one transaction, then ``mysql.json``. A directory that names its id already is kept
    again under it if the server lost it (not deleted, and its data is here). False where
    the user may not, or nothing is to keep (nothing changed)."""
    if not _create(conn):
        return False
    key = KEPT.key(directory)
    if key is not None and (_known(conn, key) or not KEPT.holds_data(directory)):
        return False
    import secrets  # late: secrets loads hashlib (OpenSSL), a cost every command would pay
    key = key or secrets.token_hex(12)
    record = json.loads((directory / META).read_text())
    if any(path.suffix in LOCAL_SUFFIXES for path in directory.iterdir()):
        record["table_files"] = str(directory.parent / record["name"])  # after core's rename
    conn.begin()
    try:
        with conn.cursor() as cur:
            for path in KEPT.data_files(directory, LOCAL_SUFFIXES):
                for seq, chunk in enumerate(chunks(path)):
                    cur.execute(f"INSERT INTO {SCHEMA}.files VALUES (%s, %s, %s, %s)",
                                (key, path.name, seq, chunk))
            cur.execute(f"INSERT INTO {SCHEMA}.snapshots (id, owner, record) "
                        f"VALUES (%s, {OWNER}, %s)", (key, json.dumps(record)))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    for name, text in KEPT.files(key).items():
        (directory / name).write_text(text)
    return True


def fetch(conn: Any, directory: Path) -> None:
    """Bring the snapshot's files from the server into ``directory`` (a state directory
    that did not save it), the table files from where they were saved."""
    key = KEPT.key(directory)
    if key is None:
        return  # kept in this directory only
    with conn.cursor() as cur:
        cur.execute(f"SELECT record FROM {SCHEMA}.snapshots WHERE id = %s AND owner = {OWNER}",
                    (key,))
        found = cur.fetchone()
        if found is None:
            raise ClaudeDbError("the snapshot is gone from the server")
        cur.execute(f"SELECT DISTINCT name FROM {SCHEMA}.files WHERE id = %s", (key,))
        names = KEPT.valid_names([name for (name,) in cur.fetchall()])
    for name in names:
        if not (directory / name).exists():
            _fetch_file(conn, key, name, directory)
    # the record is the server's (the session's SQL may write it): table files are only
    # taken from a sibling of ``directory`` in this session's own snapshot store, never
    # from a path anywhere on this machine (another session's snapshots, say)
    table_files = json.loads(found[0]).get("table_files")
    source = Path(table_files) if isinstance(table_files, str) else directory
    if (source != directory and source.parent == directory.parent
            and FILE_NAME.fullmatch(source.name)):
        for path in sorted(source.glob("*")) if source.is_dir() else []:
            if path.suffix in LOCAL_SUFFIXES and not (directory / path.name).exists():
                shutil.copyfile(path, directory / path.name)


def _fetch_file(conn: Any, key: str, name: str, directory: Path) -> None:
    from pymysql.cursors import SSCursor

    with conn.cursor(SSCursor) as cur:
        cur.execute(f"SELECT data FROM {SCHEMA}.files WHERE id = %s AND name = %s ORDER BY seq",
                    (key, name))
        # chunk by chunk, never the whole file
        write_fetched(directory / name, (chunk for (chunk,) in cur.fetchall_unbuffered()))


def delete(conn: Any, directory: Path) -> None:
    key = KEPT.key(directory)
    if key is None:
        return
    _create(conn)  # the tombstones' table, on a history an older claude-db made
    conn.begin()
    with conn.cursor() as cur:  # the files only of the user's own snapshot
        if cur.execute(f"DELETE FROM {SCHEMA}.snapshots WHERE id = %s AND owner = {OWNER}",
                       (key,)):
            cur.execute(f"DELETE FROM {SCHEMA}.files WHERE id = %s", (key,))
            cur.execute(f"INSERT IGNORE INTO {SCHEMA}.deleted VALUES (%s)", (key,))
    conn.commit()


def deleted(conn: Any, directory: Path) -> bool:
    """Whether the snapshot in ``directory`` (which the server does not list) may go from
    it: the server says it was deleted, or the directory holds none of its data."""
    key = KEPT.key(directory)
    if not KEPT.holds_data(directory):
        return True
    if key is None:
        return False
    import pymysql

    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT 1 FROM {SCHEMA}.deleted WHERE id = %s", (key,))
            return cur.fetchone() is not None
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] in MISSING:  # a history older than its tombstones
            return False
        raise


def _known(conn: Any, key: str) -> bool:
    """Whether the server keeps the snapshot ``key``, or says it was deleted."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT 1 FROM {SCHEMA}.snapshots WHERE id = %s UNION ALL "
                    f"SELECT 1 FROM {SCHEMA}.deleted WHERE id = %s", (key, key))
        return cur.fetchone() is not None


def size(conn: Any, directory: Path) -> int:
    """Bytes the snapshot takes: on the server, and its table files here."""
    local = sum(p.stat().st_size for p in directory.iterdir()
                if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    key = KEPT.key(directory)
    if key is None:
        return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    with conn.cursor() as cur:
        cur.execute(f"SELECT COALESCE(SUM(LENGTH(f.data)), 0) FROM {SCHEMA}.files f "
                    f"JOIN {SCHEMA}.snapshots s ON s.id = f.id "
                    f"WHERE f.id = %s AND s.owner = {OWNER}", (key,))
        return local + int(cur.fetchone()[0])


def note(conn: Any, value: dict[str, str]) -> None:
    """Keep core's note with the server (where the user may keep snapshots there)."""
    if _create(conn):
        with conn.cursor() as cur:
            cur.execute(f"REPLACE INTO {SCHEMA}.notes (owner, name, value) "
                        f"VALUES ({OWNER}, %s, %s)", (UNSNAPSHOTTED, json.dumps(value)))


def noted(conn: Any) -> dict[str, str] | None:
    """The note kept with the server, if any (and whole)."""
    import pymysql

    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT value FROM {SCHEMA}.notes WHERE owner = {OWNER} AND name = %s",
                        (UNSNAPSHOTTED,))
            found = cur.fetchone()
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] in (*MISSING, *NOT_ALLOWED):
            return None
        raise
    try:
        value = json.loads(found[0]) if found else None
    except ValueError:
        return None
    if isinstance(value, dict) and all(isinstance(value.get(k), str) for k in ("reason", "at")):
        return {"reason": value["reason"], "at": value["at"]}
    return None


def mark(conn: Any, database: str, value: dict[str, Any]) -> bool:
    """Note with the server that ``conn`` is about to drop or rewrite ``database``
    (``value`` says how): a command killed before :func:`unmark` leaves it for the next
    one to finish (``MySQLEngine.snapshot_recover``). The server itself tells a command
    under way from a killed one: ``conn`` ends with its process. False where the user may
    not keep it there."""
    if not _create(conn):
        return False
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        value = {**value, "connection": int(cur.fetchone()[0])}
        cur.execute(f"REPLACE INTO {SCHEMA}.pending (owner, name, value) "
                    f"VALUES ({OWNER}, %s, %s)", (database, json.dumps(value)))
    return True


def unmark(conn: Any, database: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {SCHEMA}.pending WHERE owner = {OWNER} AND name = %s",
                    (database,))


def marked(conn: Any, database: str) -> dict[str, Any] | None:
    """What a command marked on ``database`` (an empty dict: an unreadable mark), with
    ``under_way``: its connection still runs; None if nothing is marked."""
    import pymysql

    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT value FROM {SCHEMA}.pending WHERE owner = {OWNER} AND name = %s",
                        (database,))
            found = cur.fetchone()
            if found is None:
                return None
            try:
                value = json.loads(found[0])
            except ValueError:
                value = None
            if not isinstance(value, dict):
                return {}
            # never this connection: ids start again after a server restart
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s "
                        "AND ID <> CONNECTION_ID()", (value.get("connection"),))
            return {**value, "under_way": bool(cur.fetchone()[0])}
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] in (*MISSING, *NOT_ALLOWED):
            return None
        raise


def _create(conn: Any) -> bool:
    """Make the history's database and tables if missing; False if the user may not."""
    import pymysql

    try:
        with conn.cursor() as cur:
            for statement in DDL:
                cur.execute(statement)
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] in NOT_ALLOWED:
            return False
        raise
    return True
