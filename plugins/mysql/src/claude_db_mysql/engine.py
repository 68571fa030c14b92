"""MySQL and MariaDB: the official images' contract, PyMySQL for queries, the native
clients for dumps and imports (claude_db_mysql.dumps)."""

from __future__ import annotations

import contextlib
import gzip
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from claude_db import Credentials, Endpoint, Engine, LocalServer, QueryResult, Tools
from claude_db.engine import SNAPSHOT_DUMP, ImportOptions
from claude_db.errors import ClaudeDbError, NotRunningError
from claude_db.faults import checkpoint
from claude_db_mysql import history, tablespaces
from claude_db_mysql.dumps import CHUNK, Clients
from claude_db_mysql.local import MariaDBLocalServer
from claude_db_mysql.sql import quote_ident

#: client errors that mean "no server answers there" (2002 socket, 2003 TCP, 2013 lost
#: during the handshake)
CANNOT_CONNECT = (2002, 2003, 2013)
#: the server's "Unknown database": waiting does not make it (a killed reset may have left
#: it missing: attach then finishes that, ``MySQLEngine.snapshot_recover``)
UNKNOWN_DATABASE = 1049
#: the server's "error in your SQL syntax" (also what several statements get without
#: CLIENT.MULTI_STATEMENTS, before any of them ran)
PARSE_ERROR = 1064
#: a procedure's call, which may give several results: the last one with rows is wanted
CALL = re.compile(r"\s*(?:(?:--|#)[^\n]*\n\s*|/\*.*?\*/\s*)*call\b", re.IGNORECASE | re.DOTALL)
#: run MariaDB's client where it exists (its `mysql` name is deprecated there), else MySQL's
PICK_CLIENT = 'exec "$(command -v mariadb || command -v mysql || echo mysql)" "$@"'


class MySQLEngine(Engine):
    """MySQL (the default image, ``mysql:8.4``) and MariaDB (images and local servers).

    The default user is ``root``, as ``postgres`` is for PostgreSQL: the session's
    server is its own, and only an account with global privileges can create the
    extra databases the seed's examples make (and e.g. Prisma's shadow database).
    ``CLAUDE_DB_USER=app`` gives the official images' other contract instead: a user
    with every privilege on the session's database only (on the local runtime, where
    there is no image, that user is the server's superuser and root is dropped).
    """

    name = "mysql"
    url_schemes = ("mysql", "mariadb")
    default_image = "mysql:8.4"
    default_port = 3306
    default_user = "root"
    container_data_dir = "/var/lib/mysql"
    shell_name = "mysql"
    internal_databases = (history.SCHEMA,)
    imports_survive_kills = False  # DDL commits at once: see restore_with

    def native_env(self, endpoint: Endpoint) -> dict[str, str]:
        # mysql/mysqldump read MYSQL_HOST, MYSQL_TCP_PORT and MYSQL_PWD; they take the user
        # from the login name (root in most containers, the default user) and have no
        # variable for the database: MYSQL_USER/MYSQL_DATABASE are the usual names for those.
        return {
            "MYSQL_HOST": endpoint.host,
            "MYSQL_TCP_PORT": str(endpoint.port),
            "MYSQL_USER": endpoint.user,
            "MYSQL_PWD": endpoint.password,
            "MYSQL_DATABASE": endpoint.database,
        }

    def container_env(self, credentials: Credentials) -> dict[str, str]:
        # The official mysql image reads MYSQL_*, the mariadb image MARIADB_* (and MYSQL_*).
        env = {"MYSQL_DATABASE": credentials.database}
        # root always gets the session's password: with CLAUDE_DB_USER set, root still
        # exists (the images insist) and is the way to create more databases
        env["MYSQL_ROOT_PASSWORD"] = credentials.password
        if credentials.user != "root":
            env["MYSQL_USER"] = credentials.user
            env["MYSQL_PASSWORD"] = credentials.password
        env |= {"MARIADB_" + key.removeprefix("MYSQL_"): value for key, value in env.items()}
        return env

    def check_ready(self, endpoint: Endpoint, timeout: float) -> str:
        # An authenticated query over TCP: `mysqladmin ping` also passes on "access denied"
        # and against the images' temporary, socket-only init server.
        with connect(endpoint, timeout=timeout, read_timeout=timeout) as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            row = cur.fetchone()
            return str(row[0]) if row else ""

    def never_ready(self, error: Exception) -> bool:
        return bool(error.args) and error.args[0] == UNKNOWN_DATABASE

    def local_server(self) -> LocalServer:
        return MariaDBLocalServer()

    # -- operations -----------------------------------------------------------------------

    @contextlib.contextmanager
    def query(self, endpoint: Endpoint, text: str) -> Iterator[QueryResult]:
        # One statement streams (an unbuffered cursor: rows as they are read). Several
        # statements (which a connection without CLIENT.MULTI_STATEMENTS refuses as a parse
        # error, before any ran) and a CALL (whose results may be several) run as before:
        # all at once, giving the last result with rows (else the last status), in memory.
        import pymysql
        from pymysql.cursors import SSCursor

        try:
            if CALL.match(text) is None:
                with connect(endpoint, timeout=10) as conn:
                    cur = conn.cursor(SSCursor)
                    cur.execute("SET SESSION net_write_timeout = 86400")  # a paused pager
                    try:
                        cur.execute(text)  # no arguments: PyMySQL leaves '%' alone
                    except pymysql.err.ProgrammingError as exc:
                        if not exc.args or exc.args[0] != PARSE_ERROR:
                            raise
                    else:
                        try:
                            yield _result(cur, streamed=True)
                        except BaseException:
                            # the reader stopped (`query ... | head`): the cursor's close
                            # reads every row left, unless the server ends the query first
                            _interrupt(endpoint, conn.thread_id())
                            with contextlib.suppress(pymysql.MySQLError):
                                cur.close()
                            raise
                        cur.close()
                        return
            with connect(endpoint, timeout=10, multi_statements=True) as conn:
                yield _last_result(conn, text)
        except pymysql.MySQLError as exc:
            raise _error("query failed", endpoint, exc) from None

    def dump(self, tools: Tools) -> Iterator[bytes]:
        return Clients(tools).dump()

    def restore(self, tools: Tools, chunks: Iterable[bytes]) -> None:
        Clients(tools).restore(chunks)

    def restore_with(
        self, tools: Tools, chunks: Iterable[bytes], options: ImportOptions
    ) -> None:
        # ``transaction=False``: core took the automatic snapshot of the session's database
        # first and puts it back if the import fails (a killed one: undo), see README
        if replace(options, transaction=True) != ImportOptions():
            super().restore_with(tools, chunks, options)
            return
        endpoint = tools.client_endpoint or tools.endpoint
        with _under_way(endpoint, {"command": "import", "snapshot": not options.transaction}):
            Clients(tools).restore(chunks, snapshot_taken=not options.transaction)

    def reset(self, endpoint: Endpoint) -> None:
        with _under_way(endpoint, {"command": "reset"}):
            _make_again(endpoint)

    def snapshot_recover(self, endpoint: Endpoint) -> list[str]:
        """Finish what a killed reset, restore or import left (``_under_way``): the database
        made again if it is missing, and a line saying what it holds now and how to get
        back what it had."""
        name = endpoint.database
        with _maintenance(endpoint, "finishing an interrupted command failed",
                          database=None) as conn:
            pending = history.marked(conn, name)
            if pending is not None and pending.get("under_way"):
                return []  # another command's, running: not ours to finish
            missing = _options(conn, name) is None
            if missing:  # its options as the command found them
                _create_database(conn, name, (pending or {}).get("options"),
                                 (pending or {}).get("comment"))
            if pending is not None:
                history.unmark(conn, name)
        command = (pending or {}).get("command")
        snapshot = (pending or {}).get("snapshot")
        if command == "restore" and isinstance(snapshot, str):
            return [f"{name} was left part-restored by an interrupted restore of snapshot "
                    f"{snapshot}{' (made again, empty)' if missing else ''}: claude-db snapshot "
                    f"restore {snapshot} finishes it (the data it had before is in the snapshot "
                    "taken before that restore)"]
        if command == "import":
            back = ("claude-db undo goes back to before it" if snapshot is True else
                    "it took no snapshot: CLAUDE_DB_AUTO_SNAPSHOTS=0")
            return [f"an import into {name} was interrupted and may be part-applied ({back})"]
        if missing:
            return [f"{name} was missing after an interrupted {command or 'command'}: made "
                    "again, empty (claude-db undo brings back what the last reset or restore "
                    "replaced)"]
        return []

    # -- snapshots: table files where the data directory is ours (claude_db_mysql.tablespaces),
    # else core's dumps; kept with the server where the user may (claude_db_mysql.history)

    def snapshot_save(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        with _maintenance(endpoint, "snapshot failed") as conn:
            physical = tablespaces.save(conn, Clients(tools), directory)
        if not physical:
            super().snapshot_save(endpoint, tools, directory)
        with _maintenance(endpoint, "snapshot failed") as conn:  # for diff; right after the copy
            tablespaces.keep_tables(conn, endpoint.database, directory)
            history.keep(conn, directory)

    def snapshot_catalog(self, endpoint: Endpoint) -> list[dict[str, Any]] | None:
        with _maintenance(endpoint, "reading the snapshots failed", database=None) as conn:
            return history.catalog(conn)

    def snapshot_keep(self, endpoint: Endpoint, directory: Path) -> None:
        with _maintenance(endpoint, "keeping the snapshot failed", database=None) as conn:
            history.keep(conn, directory)

    def snapshot_deleted(self, endpoint: Endpoint, directory: Path) -> bool:
        with _maintenance(endpoint, "reading the snapshots failed", database=None) as conn:
            return history.deleted(conn, directory)

    def snapshot_note(self, endpoint: Endpoint, note: dict[str, str]) -> None:
        with _maintenance(endpoint, "keeping the note failed", database=None) as conn:
            history.note(conn, note)

    def snapshot_noted(self, endpoint: Endpoint) -> dict[str, str] | None:
        with _maintenance(endpoint, "reading the snapshots failed", database=None) as conn:
            return history.noted(conn)

    def snapshot_delete(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        with _maintenance(endpoint, "deleting the snapshot failed", database=None) as conn:
            history.delete(conn, directory)

    def snapshot_sizes(self, endpoint: Endpoint, directories: list[Path]) -> list[int]:
        with _maintenance(endpoint, "reading the snapshots failed", database=None) as conn:
            return [history.size(conn, directory) for directory in directories]

    def tables(self, endpoint: Endpoint, directory: Path | None = None) -> dict[str, Any]:
        if directory is not None:
            self._fetch(endpoint, directory)
            return tablespaces.kept_tables(directory)
        with _maintenance(endpoint, "reading the tables failed") as conn:
            return tablespaces.tables(conn, endpoint.database)

    def snapshot_restore(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        self._fetch(endpoint, directory)
        if not tablespaces.saved(directory):
            # opened first: a snapshot without its dump changes nothing
            with gzip.open(directory / SNAPSHOT_DUMP, "rb") as dump, \
                    _under_way(endpoint, {"command": "restore", "snapshot": directory.name}):
                _make_again(endpoint)
                # the data replaced is in core's snapshot taken before the restore
                Clients(tools).restore(iter(lambda: dump.read(CHUNK), b""), snapshot_taken=True)
            return
        tables = json.loads((directory / tablespaces.RECORD).read_text())["tables"]
        missing = [name for name in (tablespaces.SCHEMA, *(
            f"{table}{suffix}" for table in tables for suffix in (".ibd", ".cfg")))
            if not (directory / name).is_file()]
        if missing:  # checked before the database is dropped: nothing changes
            gone = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise ClaudeDbError(f"the snapshot's table files are gone ({gone}): "
                                "it cannot be restored, the database is unchanged")
        with _under_way(endpoint, {"command": "restore", "snapshot": directory.name}):
            _make_again(endpoint)
            with _maintenance(endpoint, "restoring the snapshot failed") as conn:
                tablespaces.restore(conn, Clients(tools), directory)

    def _fetch(self, endpoint: Endpoint, directory: Path) -> None:
        with _maintenance(endpoint, "reading the snapshot failed", database=None) as conn:
            history.fetch(conn, directory)

    def shell_argv(self, endpoint: Endpoint) -> list[str]:
        # MariaDB 11 images have only `mariadb`, MySQL's only `mysql`: take what is there.
        # Host, port and password come from native_env; user and database have no variable.
        return ["sh", "-c", PICK_CLIENT, "mysql",
                f"--user={endpoint.user}", f"--database={endpoint.database}"]


_SAME_DATABASE = object()


@contextlib.contextmanager
def _under_way(endpoint: Endpoint, what: dict[str, Any]) -> Iterator[None]:
    """Mark ``endpoint``'s database with ``what`` a command does to it, on the server (where
    the user may keep snapshots there), until it is done. Killed meanwhile, the mark stays
    and the next snapshot command or attach finishes (``snapshot_recover``). Failing, a
    reset or restore leaves it too (the database may be half-made); an import does not
    (what it applied is undone: its own rollback, or core's snapshot)."""
    with _maintenance(endpoint, f"{what['command']} failed", database=None) as conn:
        found = _options(conn, endpoint.database)
        if found is not None:  # what the database is made again with, if need be
            what = {**what, "options": found[0], "comment": found[1]}
        marked = history.mark(conn, endpoint.database, what)
        done = False
        try:
            yield
            done = True
        finally:
            if marked and (done or what["command"] == "import"):
                history.unmark(conn, endpoint.database)


def _make_again(endpoint: Endpoint) -> None:
    """Drop the database and create it again with the same options (reset)."""
    import pymysql

    name = endpoint.database
    with _maintenance(endpoint, "reset failed", database=None) as conn, conn.cursor() as cur:
        found = _options(conn, name)
        # like PostgreSQL's DROP DATABASE ... WITH (FORCE): end the sessions using it,
        # or DROP waits for their metadata locks
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST "
            "WHERE DB = %s AND ID <> CONNECTION_ID()", (name,)
        )
        for (thread,) in cur.fetchall():
            with contextlib.suppress(pymysql.MySQLError):  # gone, or not ours to end
                cur.execute(f"KILL CONNECTION {int(thread)}")
        cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
        checkpoint("mysql-dropped")
        _create_database(conn, name, *(found or (None, None)))


def _options(conn: Any, name: str) -> tuple[str, str | None] | None:
    """The database's character set and collation as CREATE DATABASE takes them, and its
    comment (kept by a reset, as its character set is); None if there is no such database."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
            "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)
        )
        found = cur.fetchone()
        if found is None:
            return None
        return f" CHARACTER SET {found[0]} COLLATE {found[1]}", _database_comment(cur, name)


def _create_database(conn: Any, name: str, options: Any, comment: Any) -> None:
    """CREATE DATABASE ``name`` with ``options`` (what :func:`_options` gave, else the
    server's defaults) and ``comment``."""
    charset = re.fullmatch(r" CHARACTER SET \w+ COLLATE \w+", options or "")  # (a mark's)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {quote_ident(name)}{charset.group() if charset else ''}")
        if isinstance(comment, str) and comment:
            cur.execute(f"ALTER DATABASE {quote_ident(name)} COMMENT %s", (comment,))


def connect(
    endpoint: Endpoint,
    *,
    timeout: float,
    database: str | object | None = _SAME_DATABASE,
    multi_statements: bool = False,
    read_timeout: float | None = None,
) -> Any:
    """A PyMySQL connection over TCP, autocommit on (each statement commits, like mysql)."""
    import pymysql
    from pymysql.constants import CLIENT

    seconds = max(1, int(timeout))
    return pymysql.connect(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        password=endpoint.password.encode(),  # as UTF-8: PyMySQL encodes a str as Latin-1
        database=endpoint.database if database is _SAME_DATABASE else database,
        connect_timeout=seconds,
        read_timeout=read_timeout,
        charset="utf8mb4",
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS if multi_statements else 0,
        program_name="claude-db",
    )


@contextlib.contextmanager
def _maintenance(
    endpoint: Endpoint, what: str, database: str | object | None = _SAME_DATABASE
) -> Iterator[Any]:
    """A connection to ``endpoint``'s database (or ``database``) whose driver errors
    become ours."""
    import pymysql

    try:
        with connect(endpoint, timeout=10, database=database) as conn:
            yield conn
    except pymysql.MySQLError as exc:
        raise _error(what, endpoint, exc) from None


def _last_result(conn: Any, text: str) -> QueryResult:
    """Several statements (or a CALL): the last result with rows, else the last status."""
    with conn.cursor() as cur:
        cur.execute(text)
        result = _result(cur)
        while cur.nextset():
            following = _result(cur)
            if following.columns or not result.columns:
                result = following
        return result


def _result(cursor: Any, streamed: bool = False) -> QueryResult:
    if cursor.description is None:
        count = cursor.rowcount
        return QueryResult(status=f"Query OK, {count} row{'s' if count != 1 else ''} affected")
    rows = (tuple(_plain(value) for value in row) for row in cursor.fetchall_unbuffered()
            ) if streamed else [tuple(_plain(value) for value in row) for row in cursor.fetchall()]
    return QueryResult(columns=[column[0] for column in cursor.description], rows=rows)


def _interrupt(endpoint: Endpoint, thread: int) -> None:
    """End the query connection ``thread`` runs (KILL QUERY: its connection stays)."""
    import pymysql

    with contextlib.suppress(pymysql.MySQLError), \
            connect(endpoint, timeout=10) as conn, conn.cursor() as cur:
        cur.execute("KILL QUERY %s", (thread,))


def _plain(value: Any) -> Any:
    """Values as JSON/CSV-friendly Python: basic types kept, text for the rest."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return "0x" + bytes(value).hex()
    return str(value)  # Decimal, dates and times: their SQL text ("2024-05-01 12:00:00")


def _error(what: str, endpoint: Endpoint, exc: Exception) -> ClaudeDbError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    message = str(exc.args[1] if len(exc.args) > 1 else exc).strip().splitlines()
    text = message[0] if message else type(exc).__name__
    if code in CANNOT_CONNECT:
        where = f"{endpoint.host}:{endpoint.port}"
        return NotRunningError(f"no MySQL server answers at {where}: {text}")
    return ClaudeDbError(f"{what}: ERROR {code}: {text}" if code else f"{what}: {text}")


def _database_comment(cursor: Any, name: str) -> str | None:
    """The database's comment (MariaDB 10.5+; MySQL has none, and no such column)."""
    import pymysql

    try:
        cursor.execute(
            "SELECT SCHEMA_COMMENT FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            (name,),
        )
    except pymysql.MySQLError:
        return None
    found = cursor.fetchone()
    return str(found[0]) if found and found[0] else None
