"""PostgreSQL snapshots: template databases on the server that carry their own record.

A snapshot is a database ``claude_snapshot_<hex>`` on the session's server that refuses
connections. Its COMMENT holds the snapshot's record: core's ``snapshot.json``, the
database's owner, and the database-level state a copy does not carry (``ALTER DATABASE``
and ``ALTER ROLE ... IN DATABASE`` settings, the database's comment, its grants). So the
server is the history: the host and a session container see the same snapshots, and they
outlive a re-created container; core's directories only cache them (:func:`catalog`).
Only the role's own snapshots are listed (databases it owns itself), and nothing
here needs more than the database's owner with CREATEDB.

``save`` copies with ``CREATE DATABASE <snapshot> TEMPLATE <db> STRATEGY FILE_COPY``, which
needs the database to itself: when other clients are connected it copies a ``pg_dump`` of
one consistent MVCC snapshot into the new database instead, so saving never disturbs anyone.

``move`` (before ``reset``, ``restore``, ``undo``, ``import --replace``) renames the
database to the snapshot and writes its record, marked pending, in one transaction; then
creates the database again (empty, or from the snapshot being restored), gives it the
database-level state and clears the mark. A command killed in between leaves a pending
record that :func:`recover` (run by every snapshot command) finishes: the database is
never missing for long and never left invalid, since only snapshots are dropped. Renaming
and copying need the database free: its other connections are ended, after one line that
says how many.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from claude_db import Endpoint, Tools
from claude_db.errors import ClaudeDbError
from claude_db.faults import checkpoint
from claude_db.snapshots import META, validate_snapshot_name
from claude_db_postgres.connection import connect, native_env, pg_message, tail

PREFIX = "claude_snapshot_"
RECORD = "postgres.json"  # in the snapshot's directory: {"template": <its database>}
MARK = "claude_db_snapshot"  # in a record: tells it from any other comment
COPY_ATTEMPTS = 20  # CREATE DATABASE itself waits ~5 s for ended clients to go each time
INVALID = -2  # datconnlimit of a database whose DROP was cut short (PostgreSQL >= 15.4)
TEMPLATE_NAME = f"^{PREFIX}[0-9a-f]{{12}}$"  # what save and move name a snapshot's database
TEXT_FIELDS = ("name", "database", "engine", "created_at", "reason")  # and bool "automatic"
PRIVILEGES = ("CREATE", "CONNECT", "TEMPORARY")  # what a database's grants hold
#: the connection one_admin_connection shares ({"conn", "key"}); None outside it
_SHARED: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "claude_db_postgres_admin", default=None)


def save(endpoint: Endpoint, tools: Tools, directory: Path) -> None:
    import psycopg

    template = f"{PREFIX}{os.urandom(6).hex()}"
    # named before it exists: a failed or interrupted save can always be cleaned up
    _write(directory, template)
    try:
        with _maintenance(endpoint) as conn:
            owner, state = _describe(conn, endpoint.database)
            if _others(conn, endpoint.database) == 0:
                try:
                    _create(conn, template, endpoint.database, None)
                except psycopg.errors.ObjectInUse:  # a client came meanwhile: never end it
                    _copy_by_dump(conn, endpoint, tools, template)
            else:
                _copy_by_dump(conn, endpoint, tools, template)
            checkpoint("copied")
            with conn.transaction():
                _record(conn, template, _meta(directory), owner, state)
                _refuse_connections(conn, template)
    except psycopg.Error as exc:
        raise ClaudeDbError(f"snapshot failed: {_message(exc)}") from None


def move(endpoint: Endpoint, directory: Path, source: Path | None) -> bool:
    """Keep the data as the snapshot without copying it, and make the database again:
    empty, or as the snapshot in ``source``. Returns False, with nothing changed, when the
    role may not rename the database (core then copies instead)."""
    import psycopg

    template = f"{PREFIX}{os.urandom(6).hex()}"
    _write(directory, template)
    try:
        with _maintenance(endpoint) as conn:
            origin = _template(source) if source is not None else None
            if origin is not None and not _exists(conn, origin):
                raise ClaudeDbError(f"the snapshot's database {origin} is gone from the server")
            owner, state = _describe(conn, endpoint.database)
            pending = {"database": endpoint.database, "source": origin}
            try:
                _with_clients_ended(conn, endpoint.database, lambda: _move(
                    conn, endpoint.database, template, _meta(directory), owner, state, pending))
            except psycopg.errors.InsufficientPrivilege:
                return False
            checkpoint("moved")
            _finish(conn, template)
    except psycopg.Error as exc:
        raise ClaudeDbError(f"snapshot failed: {_message(exc)}") from None
    return True


def restore(endpoint: Endpoint, directory: Path) -> None:
    """Replace the database by a copy of the snapshot (when it could not be moved aside)."""
    import psycopg

    template = _template(directory)
    try:
        with _maintenance(endpoint) as conn:
            record = _records(conn).get(template)
            if record is None:
                raise ClaudeDbError(f"the snapshot's database {template} is gone from the server")
            # marked first: a drop cut short is finished by recover(), from this snapshot
            _comment(conn, template, {**record, "pending": {"database": endpoint.database,
                                                            "source": template}})
            drop_database(conn, endpoint.database)
            checkpoint("dropped")
            _finish(conn, template)
    except psycopg.Error as exc:
        raise ClaudeDbError(f"restoring the snapshot failed: {_message(exc)}") from None


def delete(endpoint: Endpoint, directory: Path) -> None:
    import psycopg

    try:
        template = _template(directory)
    except ClaudeDbError:
        return  # never got as far as naming a database
    try:
        with _maintenance(endpoint) as conn:
            _drop(conn, template)
    except psycopg.Error as exc:
        raise ClaudeDbError(f"deleting the snapshot failed: {_message(exc)}") from None


def keep(endpoint: Endpoint, directory: Path) -> None:
    """Record on the server a snapshot known only from ``directory`` (saved by an older
    claude-db, which kept its record there)."""
    with _maintenance(endpoint) as conn:
        template = _template(directory)
        if _exists(conn, template):
            _record(conn, template, _meta(directory), None, None)


def catalog(endpoint: Endpoint) -> list[dict[str, Any]]:
    """The snapshots the server keeps: ``record`` (None: a database named like one but
    never recorded, e.g. a save cut short in a container since re-created), ``files``."""
    with _maintenance(endpoint) as conn:
        records = _records(conn)
    return [
        {"record": _public(record) if record else None, "key": template,
         "files": {RECORD: json.dumps({"template": template})}}
        for template, record in records.items()
    ]


def recover(endpoint: Endpoint) -> list[str]:
    """Finish what killed commands left: pending moves and restores, snapshots whose drop
    was cut short, the database left invalid by a drop cut short. What was done, one line each."""
    from psycopg import sql

    done = []
    with _maintenance(endpoint) as conn:
        for template, record in _records(conn, invalid=True).items():
            if record is not None and record.get("invalid"):
                _drop(conn, template)  # a delete cut short: nothing of it is usable
                done.append(f"finished deleting the snapshot database {template}")
        for template, record in _records(conn).items():
            pending = (record or {}).get("pending")
            # only this session's database: a record never names what we act on
            if record and pending and pending["database"] == endpoint.database:
                database = pending["database"]
                left = not _usable(conn, database)
                _finish(conn, template)
                if left:
                    done.append(f"{database} was missing after an interrupted command: made "
                                f"again, the data it had is in snapshot {record['name']}")
        recorded = {t for t, record in _records(conn).items() if record is not None}
        for template in recorded & _connectable(conn):
            _refuse_connections(conn, template)  # a diff's read cut short (tables)
        if _invalid(conn, endpoint.database):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(
                sql.Identifier(endpoint.database)))
            _create(conn, endpoint.database, None, endpoint.user)
            done.append(f"{endpoint.database} was left invalid by a drop cut short (a server "
                        "crash): made again, empty")
    return done


# -- the server's side ---------------------------------------------------------------------


def _move(conn: Any, database: str, template: str, meta: dict[str, Any], owner: str,
          state: dict[str, Any], pending: dict[str, Any]) -> None:
    """Rename ``database`` to ``template`` and record it, all or nothing."""
    from psycopg import sql

    with conn.transaction():
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(database), sql.Identifier(template)))
        # snapshots are the role's own databases (_records), also when a superuser moves
        # one it does not own ("postgres"); the record keeps the owner to give back
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(
            sql.Identifier(template)))
        _record(conn, template, meta, owner, state, pending=pending)
        _refuse_connections(conn, template)


def _finish(conn: Any, template: str) -> None:
    """Make the database a pending record names, if it is not there yet, with the
    database-level state it had; then clear the mark."""
    from psycopg import sql

    record = _records(conn)[template]
    assert record is not None
    pending = record["pending"]
    database, source = pending["database"], pending["source"]
    if not _usable(conn, database):
        if _invalid(conn, database):  # the server crashed while dropping it
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(database)))
        origin = source if source and _usable_template(conn, source) else None
        _create(conn, database, origin, record.get("owner"))
        checkpoint("created")
        state = (_records(conn).get(origin) if origin else record) or {}
        for problem in _apply(conn, database, state.get("state")):
            print(f"warning: {problem}", file=sys.stderr)
    _comment(conn, template, {k: v for k, v in record.items() if k != "pending"})


def _create(conn: Any, database: str, template: str | None, owner: str | None) -> None:
    from psycopg import sql

    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        if conn.info.server_version >= 150000:
            # the files copied after a checkpoint, as before 15: 15's default (WAL_LOG)
            # writes every page into the WAL too, 2-3x slower for 100 MB (bench/ checkpoint)
            statement += sql.SQL(" STRATEGY FILE_COPY")
    if owner:
        statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    conn.execute(statement)


def _drop(conn: Any, template: str) -> None:
    from psycopg import sql

    if not template.startswith(PREFIX):  # never anything but a snapshot's own database
        raise ClaudeDbError(f"{template} is not a snapshot's database")
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(template)))


def _copy_by_dump(conn: Any, endpoint: Endpoint, tools: Tools, template: str) -> None:
    """Copy ``endpoint``'s database into a new ``template`` with pg_dump | psql: one MVCC
    snapshot read, no other client disturbed. Same encoding and collation as the source."""
    from psycopg import sql

    row = conn.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
        "WHERE datname = %s", [endpoint.database]).fetchone()
    conn.execute(sql.SQL(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}"
    ).format(sql.Identifier(template), *map(sql.Literal, row)))
    env = native_env(tools.endpoint)
    with tempfile.TemporaryFile() as dump_errors, tempfile.TemporaryFile() as load_errors:
        dump = tools.popen(["pg_dump", "--quote-all-identifiers"], env=env,
                           stdout=subprocess.PIPE, stderr=dump_errors)
        load = tools.popen(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"],
            env={**env, "PGDATABASE": template}, stdin=dump.stdout,
            stdout=subprocess.DEVNULL, stderr=load_errors)
        assert dump.stdout is not None
        dump.stdout.close()  # psql has it: pg_dump gets SIGPIPE if psql stops
        loaded, dumped = load.wait(), dump.wait()
        if dumped != 0 or loaded != 0:
            failed = tail(dump_errors) if dumped != 0 else tail(load_errors)
            raise ClaudeDbError(f"copying {endpoint.database} while it is in use failed: {failed}")


def drop_database(conn: Any, database: str) -> None:
    """Drop ``database`` as its owner that is no superuser may: its other clients ended
    first (DROP ... WITH (FORCE) would end autovacuum workers too, which such an owner may
    not; a plain DROP makes them stop)."""
    from psycopg import sql

    _with_clients_ended(conn, database, lambda: conn.execute(
        sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database))))


def _with_clients_ended(conn: Any, database: str, step: Any) -> None:
    """Run ``step``, which needs ``database`` free of other connections: end them first
    (saying so), and again while clients keep reconnecting in between."""
    import psycopg

    others = _others(conn, database)
    if others:
        print(f"ending {others} other connection{'s' if others > 1 else ''} to {database}",
              file=sys.stderr)
    for _ in range(COPY_ATTEMPTS):
        # only backends of roles we may end: a database's owner that is no superuser may
        # not end autovacuum workers (no role), which the statement ends by itself
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND pg_has_role(usesysid, 'MEMBER')",
            [database],
        )
        try:
            step()
            return
        except psycopg.errors.ObjectInUse:  # a client connected again in between
            time.sleep(0.05)
    raise ClaudeDbError(f"database {database!r} stays in use by other clients; try again")


def _others(conn: Any, database: str) -> int:
    row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                       "WHERE datname = %s AND pid <> pg_backend_pid()", [database]).fetchone()
    return int(row[0])


def _describe(conn: Any, database: str) -> tuple[str, dict[str, Any]]:
    """The database's owner and its database-level state: what a template copy loses."""
    row = conn.execute(
        "SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'), "
        "datacl IS NULL FROM pg_database WHERE datname = %s", [database]).fetchone()
    if row is None:
        raise ClaudeDbError(f"database {database!r} does not exist")
    owner, comment, default_acl = row
    settings = conn.execute(
        "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE d.datname = %s ORDER BY 1 NULLS FIRST", [database]).fetchall()
    grants = None if default_acl else [list(g) for g in conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
        "a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a "
        "WHERE d.datname = %s", [database]).fetchall()]
    return owner, {"settings": [[role, list(config)] for role, config in settings],
                   "comment": comment, "grants": grants}


def _apply(conn: Any, database: str, state: dict[str, Any] | None) -> list[str]:
    """Give ``database`` the state :func:`_describe` read; what could not be, one line each."""
    import psycopg
    from psycopg import sql

    if not state:
        return []
    name = sql.Identifier(database)
    statements: list[tuple[Any, tuple[str, str] | None]] = []
    for role, config in state.get("settings") or []:
        for item in config:
            setting, _, value = item.partition("=")
            parameter = sql.SQL(".").join(map(sql.Identifier, setting.split(".")))
            # FROM CURRENT takes the value as SET parses it: lists stay lists (search_path)
            target = (sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), name)
                      if role else sql.SQL("ALTER DATABASE {}").format(name))
            statements.append((target + sql.SQL(" SET {} FROM CURRENT").format(parameter),
                               (setting, value)))
    if state.get("comment") is not None:
        statements.append((sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            name, sql.Literal(state["comment"])), None))
    if state.get("grants") is not None:
        statements.append((sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name), None))
        for grantee, privilege, grantable in state["grants"]:
            if privilege not in PRIVILEGES:  # never SQL text from a record
                continue
            statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(privilege), name, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"))
            if grantable:
                statement += sql.SQL(" WITH GRANT OPTION")
            statements.append((statement, None))
    problems = []
    for statement, local in statements:
        try:
            with conn.transaction():
                if local:
                    conn.execute("SELECT set_config(%s, %s, true)", list(local))
                conn.execute(statement)
        except psycopg.Error as exc:
            problems.append(f"could not carry {statement.as_string(conn)}: {_message(exc)}")
    return problems


def _record(conn: Any, template: str, meta: dict[str, Any], owner: str | None,
            state: dict[str, Any] | None, pending: dict[str, Any] | None = None) -> None:
    record = {MARK: 1, **meta, "owner": owner, "state": state}
    if pending:
        record["pending"] = pending
    _comment(conn, template, record)


def _comment(conn: Any, template: str, record: dict[str, Any]) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(template), sql.Literal(json.dumps(record))))


def _refuse_connections(conn: Any, template: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
        sql.Identifier(template)))


def _records(conn: Any, invalid: bool = False) -> dict[str, dict[str, Any] | None]:
    """The role's own snapshot databases and their records (None: none valid); with
    ``invalid`` only those a drop cut short, as ``{"invalid": True}``. Only databases the
    role itself owns, named as :func:`save` names them: anyone with CREATEDB can make
    others and write their comments (on a shared server, for a superuser to act on)."""
    rows = conn.execute(
        "SELECT datname, shobj_description(oid, 'pg_database'), datconnlimit = %s "
        "FROM pg_database WHERE datname ~ %s "
        "AND datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
        "ORDER BY datname", [INVALID, TEMPLATE_NAME]).fetchall()
    found: dict[str, dict[str, Any] | None] = {}
    for name, comment, broken in rows:
        if broken != invalid:
            continue
        record = None
        with contextlib.suppress(ValueError, TypeError):
            record = json.loads(comment)
        found[name] = {"invalid": True} if broken else _valid(record)
    return found


def _valid(record: Any) -> dict[str, Any] | None:
    """``record`` if it is one :func:`_record` writes, every part of the expected type
    (the comment is anyone's to write: nothing in it may become a path or SQL text)."""
    def strings(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    def optional(value: Any) -> bool:
        return value is None or isinstance(value, str)

    if not isinstance(record, dict) or record.get(MARK) != 1:
        return None
    with contextlib.suppress(ClaudeDbError):
        if not (all(isinstance(record.get(k), str) for k in TEXT_FIELDS)
                and isinstance(record.get("automatic"), bool)
                and validate_snapshot_name(record["name"]) and optional(record.get("owner"))):
            return None
        state = record.get("state")
        if state is not None and not (
            isinstance(state, dict) and optional(state.get("comment"))
            and all(isinstance(s, list) and len(s) == 2 and optional(s[0]) and strings(s[1])
                    for s in state.get("settings") or [])
            and (state.get("grants") is None or all(
                isinstance(g, list) and len(g) == 3 and optional(g[0])
                and g[1] in PRIVILEGES and isinstance(g[2], bool) for g in state["grants"]))
        ):
            return None
        pending = record.get("pending")
        if pending is not None and not (
            isinstance(pending, dict) and isinstance(pending.get("database"), str)
            and (pending.get("source") is None
                 or re.fullmatch(TEMPLATE_NAME, str(pending["source"])))
        ):
            return None
        return record
    return None


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A server record as core's snapshot.json."""
    return {k: v for k, v in record.items() if k not in (MARK, "owner", "state", "pending")}


def _connectable(conn: Any) -> set[str]:
    """Snapshot-named databases that accept connections (none should, once recorded)."""
    rows = conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND datname ~ %s",
                        [TEMPLATE_NAME]).fetchall()
    return {row[0] for row in rows}


def _usable(conn: Any, database: str) -> bool:
    row = conn.execute("SELECT datconnlimit <> %s FROM pg_database WHERE datname = %s",
                       [INVALID, database]).fetchone()
    return bool(row and row[0])


def _usable_template(conn: Any, template: str) -> bool:
    return _usable(conn, template) and _records(conn).get(template) is not None


def _invalid(conn: Any, database: str) -> bool:
    row = conn.execute("SELECT datconnlimit = %s FROM pg_database WHERE datname = %s",
                       [INVALID, database]).fetchone()
    return bool(row and row[0])


@contextlib.contextmanager
def one_admin_connection() -> Iterator[None]:
    """Within it, :func:`_maintenance` hands every call the same connection (one
    command's recover, catalog and save: each connection costs a server process and an
    authentication); closed at its end."""
    shared: dict[str, Any] = {}
    token = _SHARED.set(shared)
    try:
        yield
    finally:
        _SHARED.reset(token)
        if "conn" in shared:
            shared["conn"].close()


@contextlib.contextmanager
def _maintenance(endpoint: Endpoint) -> Iterator[Any]:
    """An autocommit connection to another database of the same server: the one
    :func:`one_admin_connection` shares, while it is idle and to the same server."""
    from psycopg.pq import TransactionStatus

    shared = _SHARED.get()
    if shared is None:
        with _admin(endpoint) as conn:
            yield conn
        return
    # the admin database is part of the key: one opened on "postgres" cannot move or drop it
    key = (endpoint.host, endpoint.port, endpoint.user, endpoint.password,
           _admin_database(endpoint))
    conn = shared.get("conn")
    if conn is None or shared["key"] != key or conn.broken or conn.closed \
            or conn.info.transaction_status != TransactionStatus.IDLE:  # cut short: anew
        if conn is not None:
            conn.close()
        shared.update(conn=_admin(endpoint), key=key)
    yield shared["conn"]


def _admin_database(endpoint: Endpoint) -> str:
    return "postgres" if endpoint.database != "postgres" else "template1"


def _admin(endpoint: Endpoint) -> Any:
    conn = connect(endpoint.with_database(_admin_database(endpoint)), timeout=10)
    conn.autocommit = True
    # local servers commit asynchronously: a snapshot reported saved must survive a crash
    conn.execute("SET synchronous_commit = on")
    return conn


def _exists(conn: Any, database: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
    return row is not None


def _write(directory: Path, template: str) -> None:
    (directory / RECORD).write_text(json.dumps({"template": template}))


def _template(directory: Path) -> str:
    try:
        template = json.loads((directory / RECORD).read_text())["template"]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ClaudeDbError(f"the snapshot in {directory} is unreadable: {exc}") from None
    if not isinstance(template, str) or not template.startswith(PREFIX):
        raise ClaudeDbError(f"the snapshot in {directory} names no snapshot database")
    return template


def _meta(directory: Path) -> dict[str, Any]:
    """The snapshot's record, written by core before the engine is called."""
    meta: dict[str, Any] = json.loads((directory / META).read_text())
    return meta


def _message(exc: Exception) -> str:
    return pg_message(exc)


def sizes(endpoint: Endpoint, directories: list[Path]) -> list[int]:
    """The bytes each snapshot's database takes on the server (0: gone, or never made)."""
    names = []
    for directory in directories:
        try:
            names.append(_template(directory))
        except ClaudeDbError:
            names.append("")
    with _maintenance(endpoint) as conn:
        found = dict(conn.execute(
            "SELECT datname, pg_database_size(oid) FROM pg_database WHERE datname = ANY(%s)",
            [[n for n in names if n]]).fetchall())
    return [int(found.get(name, 0)) for name in names]


def tables(endpoint: Endpoint, directory: Path | None) -> dict[str, Any]:
    """The tables of the database, or of the snapshot in ``directory`` (its database
    refuses connections: allowed for this read only, under core's lock)."""
    import psycopg
    from psycopg import sql

    if directory is None:
        with connect(endpoint, timeout=10) as conn:
            return _tables(conn)
    template = _template(directory)
    try:
        with _maintenance(endpoint) as admin:
            if not _exists(admin, template):
                raise ClaudeDbError(f"the snapshot's database {template} is gone from the server")
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(template)))
            try:
                checkpoint("reading")
                with connect(endpoint.with_database(template), timeout=10) as conn:
                    return _tables(conn)
            finally:  # killed before this: recover() refuses them again
                _refuse_connections(admin, template)
    except psycopg.Error as exc:
        raise ClaudeDbError(f"reading the snapshot failed: {_message(exc)}") from None


def _tables(conn: Any) -> dict[str, Any]:
    """Every ordinary and partitioned table outside the system schemas: its columns and
    exact row count (one read-only transaction: one consistent view)."""
    from psycopg import sql

    found: dict[str, Any] = {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows = conn.execute(
            "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%' "
            "ORDER BY n.nspname, c.relname, a.attnum").fetchall()
        names: dict[str, tuple[str, str]] = {}
        for schema, table, column, type_ in rows:
            key = f"{schema}.{table}"
            names[key] = (schema, table)
            found.setdefault(key, {"columns": {}, "rows": 0})["columns"][column] = type_
        if names:
            counts = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}, count(*) FROM {}").format(
                    sql.Literal(key), sql.Identifier(schema, table))
                for key, (schema, table) in names.items())
            for key, count in conn.execute(counts).fetchall():
                found[key]["rows"] = int(count)
    return found


#: in records: core's note for undo (the last destructive command that took no snapshot)
NOTE = "unsnapshotted"


def note(endpoint: Endpoint, value: dict[str, str]) -> None:
    """Keep core's note for undo with the server, so the host and a session container both
    see it: in the record of every snapshot (deleting one keeps it; with none, there is
    nothing older undo could wrongly restore)."""
    import psycopg

    try:
        with _maintenance(endpoint) as conn:
            for template, record in _records(conn).items():
                if record is not None and not record.get("pending"):
                    _comment(conn, template, {**record, NOTE: value})
    except psycopg.Error as exc:
        raise ClaudeDbError(f"keeping the note failed: {_message(exc)}") from None


def noted(endpoint: Endpoint) -> dict[str, str] | None:
    """The latest note :func:`note` kept, if any."""
    import psycopg

    try:
        with _maintenance(endpoint) as conn:
            notes = [record.get(NOTE) for record in _records(conn).values() if record]
    except psycopg.Error as exc:
        raise ClaudeDbError(f"reading the snapshots failed: {_message(exc)}") from None
    whole = [{"reason": n["reason"], "at": n["at"]} for n in notes if isinstance(n, dict)
             and isinstance(n.get("reason"), str) and isinstance(n.get("at"), str)]
    return max(whole, key=lambda n: n["at"]) if whole else None
