"""``claude-db query`` on PostgreSQL: rows stream from the server in chunks.

One statement is sent with the extended protocol in libpq's chunked-rows mode (single-row
mode before libpq 17): rows arrive :data:`CHUNK_ROWS` at a time as they are read, so a
million-row result never sits in memory. The extended protocol takes one statement only:
text the server refuses as a syntax error before running anything (several statements are
one) runs again the way ``psql -c`` did before v15, all at once with the simple protocol in
one implicit transaction, and gives the last statement's result, held in memory. A real
syntax error then fails there, again before anything ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from claude_db import Endpoint, QueryResult
from claude_db.errors import ClaudeDbError
from claude_db_postgres.connection import connect, pg_message

#: rows per chunk libpq hands over (and the most held at once)
CHUNK_ROWS = 1000
#: the server's refusal of text holding several commands (it runs none of them)
SEVERAL_COMMANDS = "cannot insert multiple commands into a prepared statement"


@contextlib.contextmanager
def run(endpoint: Endpoint, text: str) -> Iterator[QueryResult]:
    """The engine's ``query`` (see ``Engine.query``)."""
    import psycopg

    try:
        with connect(endpoint, timeout=10) as conn:
            conn.autocommit = True  # like psql -c: the statement commits on its own
            load_as_server_text(conn.adapters)
            try:
                try:
                    result = _streamed(conn, text.encode())
                except psycopg.errors.SyntaxError as exc:
                    # only text refused as several commands before any ran goes again:
                    # a statement that failed while running may have done what a
                    # rollback does not undo (nextval)
                    if exc.diag.message_primary != SEVERAL_COMMANDS:
                        raise
                    result = _all_at_once(conn, text.encode())
                yield result
            finally:
                if conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                    conn.close()  # rows left unread (or a COPY): the server ends the query
    except psycopg.Error as exc:
        raise ClaudeDbError(f"query failed: {pg_message(exc)}") from None


def _streamed(conn: Any, query: bytes) -> QueryResult:
    """Send ``query`` as one statement; its columns and status now, its rows as read."""
    import psycopg
    from psycopg import capabilities, pq
    from psycopg.adapt import Transformer
    from psycopg.generators import fetch, send

    pgconn = conn.pgconn
    pgconn.send_query_params(query, None, result_format=pq.Format.TEXT)
    if capabilities.has_stream_chunked():
        pgconn.set_chunked_rows_mode(CHUNK_ROWS)
    else:
        pgconn.set_single_row_mode()
    conn.wait(send(pgconn))

    def next_result() -> Any:
        result = conn.wait(fetch(pgconn))
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            while conn.wait(fetch(pgconn)) is not None:  # the connection ready again
                pass
            raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
        if result is not None and result.status in (pq.ExecStatus.COPY_IN,
                                                    pq.ExecStatus.COPY_OUT):
            raise ClaudeDbError("query cannot run COPY with STDIN or STDOUT: use "
                                "claude-db import or claude-db psql")
        return result

    first = next_result()
    rows_come = (pq.ExecStatus.SINGLE_TUPLE, pq.ExecStatus.TUPLES_CHUNK)
    columns = [first.fname(i).decode(conn.info.encoding) for i in range(first.nfields)]
    if first.status not in rows_come:  # a command, or a query without rows: done
        while next_result() is not None:
            pass
        status = (first.command_status or b"").decode(conn.info.encoding)
        return QueryResult(columns=columns, status=status)

    transformer = Transformer(conn)

    def rows() -> Iterator[tuple[Any, ...]]:
        result = first
        loaders_set = False
        while result is not None and result.status in rows_come:
            transformer.set_pgresult(result, set_loaders=not loaders_set)
            loaders_set = True
            for row in transformer.load_rows(0, result.ntuples, tuple):
                yield tuple(plain(value) for value in row)
            result = next_result()
        while result is not None:  # the end of the rows (TUPLES_OK), then nothing
            result = next_result()

    return QueryResult(columns=columns, rows=rows())


def _all_at_once(conn: Any, query: bytes) -> QueryResult:
    """Several statements with the simple protocol: the last one's result."""
    with conn.cursor() as cur:
        cur.execute(query)  # bytes: no client-side parameter parsing of '%'
        while cur.nextset():  # several statements: the last one's result, as
            pass  # psql -c showed before v15
        result = QueryResult(status=cur.statusmessage or "")
        if cur.description is not None:
            result.columns = [col.name for col in cur.description]
            result.rows = [tuple(plain(v) for v in row) for row in cur.fetchall()]
        return result


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


def load_as_server_text(adapters: Any) -> None:
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


def plain(value: Any) -> Any:
    """Text of a SQL_ASCII database arrives as bytes (in arrays too): as str, to print and
    JSON-encode it."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
