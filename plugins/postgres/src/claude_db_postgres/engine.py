"""PostgreSQL: the official image's contract, psycopg for queries, pg_dump/psql for dumps."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

from claude_db import Credentials, Endpoint, Engine, LocalServer, QueryResult, Tools
from claude_db.engine import DumpDirectory, ImportOptions, last_line
from claude_db.errors import ClaudeDbError, PartlyAppliedError
from claude_db_postgres import snapshots
from claude_db_postgres.connection import connect as _connect
from claude_db_postgres.connection import native_env
from claude_db_postgres.connection import pg_message as _pg_message
from claude_db_postgres.connection import tail as _tail
from claude_db_postgres.local import PostgresLocalServer
from claude_db_postgres.query import run as run_query

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
        return native_env(endpoint)

    def container_env(self, credentials: Credentials) -> dict[str, str]:
        return {
            "POSTGRES_USER": credentials.user,
            "POSTGRES_PASSWORD": credentials.password,
            "POSTGRES_DB": credentials.database,
        }

    def check_ready(self, endpoint: Endpoint, timeout: float) -> str:
        with _connect(endpoint, timeout) as conn:
            return str(conn.info.parameter_status("server_version") or "")

    def never_ready(self, error: Exception) -> bool:
        return NEVER_READY.search(str(error)) is not None

    def local_server(self) -> LocalServer:
        return PostgresLocalServer()

    # -- operations -----------------------------------------------------------------------

    def query(
        self, endpoint: Endpoint, text: str
    ) -> contextlib.AbstractContextManager[QueryResult]:
        return run_query(endpoint, text)

    def dump(self, tools: Tools) -> Iterator[bytes]:
        # Privileges are kept (a REVOKE ... FROM PUBLIC guards a SECURITY DEFINER function),
        # but only those a fresh session can restore: see Privileges.
        return self._pg_dump(tools, [], Privileges(tools.endpoint.user))

    def _pg_dump(
        self, tools: Tools, extra: list[str], privileges: Privileges | None
    ) -> Iterator[bytes]:
        argv = ["pg_dump", "--no-owner", "--quote-all-identifiers", *extra]
        output = tools.stream(
            argv, env=self.native_env(tools.endpoint),
            failed=lambda stderr: ClaudeDbError(f"pg_dump failed: {last_line(stderr)}"),
        )
        with contextlib.closing(output):  # pg_dump is killed if the reader stops early
            yield from privileges.lines(output) if privileges else output
        if privileges and privileges.left_out:
            print(
                f"note: left out {privileges.left_out} privilege statement"
                f"{'s' if privileges.left_out != 1 else ''} naming roles a new session does "
                f"not have: {', '.join(sorted(privileges.roles))}", file=sys.stderr,
            )

    export_formats = ("custom",)

    def dump_as(self, tools: Tools, export_format: str) -> Iterator[bytes]:
        if export_format == "custom":  # pg_dump -Fc: every privilege kept, as in the database
            return self._pg_dump(tools, ["-Fc"], None)
        return super().dump_as(tools, export_format)

    def restore(self, tools: Tools, chunks: Iterable[bytes]) -> None:
        self.restore_with(tools, chunks, ImportOptions())

    def restore_with(
        self, tools: Tools, chunks: Iterable[bytes], options: ImportOptions
    ) -> None:
        if not options.create_roles:
            return self._apply(tools, chunks, options, None)
        admin = tools.admin_endpoint or tools.client_endpoint or tools.endpoint
        admin = admin.with_database(tools.endpoint.database)  # where schema public is
        with MissingRoles(admin, tools.endpoint.user) as roles:
            self._apply(tools, chunks, options, roles)
        if roles.created:
            print(f"created roles (NOLOGIN): {', '.join(roles.created)}", file=sys.stderr)
        return None

    def _apply(
        self, tools: Tools, chunks: Iterable[bytes], options: ImportOptions,
        roles: MissingRoles | None,
    ) -> None:
        # One transaction, stop at the first error: nothing of a failed import stays applied.
        # BEGIN comes before the file (-c), COMMIT after it in the same input, once the whole
        # input was read: psql's --single-transaction would commit at end of input, and an
        # interrupted `docker exec` closes psql's input inside the container without killing
        # psql. The transaction's id (printed first) tells afterwards whether the file
        # committed it on its own; the end mark (printed last) that psql read the file to its
        # end: a \\q, or COPY data without its \\. line, stops psql early, silently.
        import secrets  # late: secrets loads hashlib (OpenSSL), a cost every command would pay
        mark = f"claude-db: end of input {secrets.token_hex(8)}"
        begin = ["-c", "BEGIN", "-c", "SELECT txid_current()"] if options.transaction else []
        argv = [
            "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
            *begin, "-c", "\\o /dev/null", "-f", "-",
        ]
        commit = "COMMIT;\n" if options.transaction else ""
        # The local runtime's servers run with synchronous_commit=off: without this, a server
        # crash right after the import reported success would lose it whole.
        durable = {"PGOPTIONS": f"{os.environ.get('PGOPTIONS', '')} -c synchronous_commit=on"}
        sql = _sql_input(tools, self.native_env(tools.endpoint), chunks, options, roles)
        with tempfile.TemporaryFile() as errors, tempfile.TemporaryFile() as output:
            proc = tools.popen(
                argv,
                env={**self.native_env(tools.endpoint), **durable},
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=errors,
            )
            assert proc.stdin is not None
            _widen(proc.stdin)
            control, copy = TransactionControl(), CopyData()
            lines, ends_line = 0, True  # where the input ends: a line psql may report
            last = b""  # the input's last bytes: how it ends decides the tail
            try:
                for chunk in sql:
                    control.scan(chunk)
                    copy.scan(chunk)
                    lines += chunk.count(b"\n")
                    ends_line = chunk.endswith(b"\n") if chunk else ends_line
                    last = (last + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]
                    proc.stdin.write(chunk)
                control.finish()
                copy.finish()
                proc.stdin.write(_tail_after(last, commit, mark))
                proc.stdin.close()
            except BrokenPipeError:
                pass  # psql stopped at an error: its message says which
            except BaseException:
                proc.kill()  # interrupted: psql's transaction never commits
                proc.wait()
                raise
            finally:
                sql.close()
            code = proc.wait()
            output.seek(0)
            printed = output.read().decode(errors="replace").splitlines()
            last_line = lines + (not ends_line)
            error = _psql_error(errors, last_line=last_line or None)
            if code == 0 and mark in printed and error is None:
                return
            # psql's own line number, not capped: past the file's end, psql read what we
            # sent after it as rows of a COPY the file left open; within the file, its
            # error is the file's own (an open COPY seen in a string must not hide it)
            failed_at = re.match(r"line (\d+):", _psql_error(errors) or "")
            past_end = failed_at is not None and int(failed_at.group(1)) > last_line
            if copy.left_open is not None and (error is None or past_end):
                error = (f"line {copy.left_open}: the COPY's data has no \\. end line "
                         "(the file ends inside it)")
            if error is None:
                error = _tail(errors) if code != 0 else (
                    "psql stopped before the end of the file (a \\q, or COPY data without "
                    "its \\. end line)"
                )
            if not options.transaction:  # the caller puts the snapshot back
                raise ClaudeDbError(f"import failed: {error}")
            xid = printed[0] if printed and printed[0].isdigit() else None
            committed = xid is not None and self._xact_status(tools, xid) == "committed"
            self._failed(control, error, committed)

    def _xact_status(self, tools: Tools, xid: str) -> str | None:
        """``committed``, ``aborted`` or ``in progress`` for the import's transaction."""
        proc = tools.popen(
            ["psql", "-X", "-At", "-c", f"SELECT txid_status({xid})"],
            env=self.native_env(tools.endpoint), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        out, _ = proc.communicate()
        return out.decode().strip() if proc.returncode == 0 else None

    @staticmethod
    def _failed(control: TransactionControl, error: str, committed: bool) -> None:
        failed_at = re.match(r"line (\d+):", error)
        where = " at " if failed_at else ": "
        found = control.found
        if committed:  # the file's own COMMIT (or END) ended our transaction, committing it
            told = f" ({found[0]} at line {found[1]})" if found else ""
            raise PartlyAppliedError(
                f"import failed{where}{error}; the file has its own transaction "
                f"control{told}, so what it committed before the error stays applied",
                failure=f"import failed{where}{error}",
            )
        ended = found is not None and found[0] not in ("COMMIT", "END TRANSACTION", "END WORK")
        if ended and found is not None and (
            failed_at is None or found[1] <= int(failed_at.group(1))
        ):  # a ROLLBACK or \\c ended our transaction: what ran after it committed on its own
            what, line = found
            raise PartlyAppliedError(
                f"import failed{where}{error}; the file has its own transaction "
                f"control ({what} at line {line}), so what it committed before the error "
                "stays applied",
                failure=f"import failed{where}{error}",
            )
        raise ClaudeDbError(f"import failed, nothing was applied: {error}{_way_out(error)}")

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
                snapshots.drop_database(conn, endpoint.database)
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, owner))
        except psycopg.Error as exc:
            raise ClaudeDbError(f"reset failed: {_pg_message(exc)}") from None

    def shell_argv(self, endpoint: Endpoint) -> list[str]:
        return ["psql"]

    # -- snapshots: template databases on the server (claude_db_postgres.snapshots) -------

    def snapshot_save(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        snapshots.save(endpoint, tools, directory)

    def snapshot_move(
        self, endpoint: Endpoint, tools: Tools, directory: Path, source: Path | None = None
    ) -> bool:
        return snapshots.move(endpoint, directory, source)

    def snapshot_restore(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        snapshots.restore(endpoint, directory)

    def snapshot_delete(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        snapshots.delete(endpoint, directory)

    def snapshot_batch(self) -> contextlib.AbstractContextManager[None]:
        return snapshots.one_admin_connection()

    def snapshot_catalog(self, endpoint: Endpoint) -> list[dict[str, Any]] | None:
        return snapshots.catalog(endpoint)

    def snapshot_recover(self, endpoint: Endpoint) -> list[str]:
        return snapshots.recover(endpoint)

    def snapshot_keep(self, endpoint: Endpoint, directory: Path) -> None:
        snapshots.keep(endpoint, directory)

    def snapshot_note(self, endpoint: Endpoint, note: dict[str, str]) -> None:
        snapshots.note(endpoint, note)

    def snapshot_noted(self, endpoint: Endpoint) -> dict[str, str] | None:
        return snapshots.noted(endpoint)

    def snapshot_sizes(self, endpoint: Endpoint, directories: list[Path]) -> list[int]:
        return snapshots.sizes(endpoint, directories)

    def tables(self, endpoint: Endpoint, directory: Path | None = None) -> dict[str, Any]:
        return snapshots.tables(endpoint, directory)


#: connection refusals that waiting never clears; libpq gives no SQLSTATE for a failed
#: connection, so the server's (English) message tells: wrong password, no such database
#: or role, not allowed by pg_hba.conf or to log in, a database a drop cut short (core's
#: ensure_running then has the snapshot code finish what was left)
NEVER_READY = re.compile(
    r'FATAL: +(password authentication failed|(database|role) "[^"]*" does not exist'
    r"|no pg_hba\.conf entry|role \S+ is not permitted to log in"
    r'|cannot connect to invalid database "[^"]*")'
)

#: a statement that ends our import's transaction or leaves its connection: COMMIT,
#: END TRANSACTION/WORK (a bare ``END;`` is left out: every PL/pgSQL body pg_dump writes
#: ends with one), ROLLBACK (not ROLLBACK TO a savepoint), ABORT, PREPARE TRANSACTION,
#: psql's \\c / \\connect (lower case: \\C sets a title). BEGIN and START TRANSACTION change
#: nothing inside our transaction. Looked for only at a line start and after a ``;``: two
#: regexes that each begin with one literal byte, which the regex engine skips to fast.
CONTROL = (
    rb"[ \t]*(?=[CcEeRrAaPp\\])(?:(?i:(COMMIT|END(?=[ \t]+(?:TRANSACTION|WORK)\b)"
    rb"|ROLLBACK(?![ \t]+TO\b)|ABORT|PREPARE[ \t]+TRANSACTION)\b)|(\\c(?:onnect)?)(?![A-Za-z]))"
)
CONTROL_AT = (rb"\n" + CONTROL, rb";" + CONTROL)
#: the end of the stream so far, scanned again with the next chunk (a line cut in two)
CARRY = 128
#: a match is decided only this far from the end of what was read: what follows tells
#: ``\\c`` from ``\\copy`` and ``ROLLBACK`` from ``ROLLBACK TO``
MARGIN = 32


TAIL_BYTES = 4096


def _tail_after(last: bytes, commit: str, mark: str) -> bytes:
    """What follows the input: ";" ends a last statement it left without one (psql runs it
    at the end of a file; the file's own line numbers hold, as BEGIN is not in its input),
    then the COMMIT and the end mark. Not after COPY data (a last significant line ``\\.``):
    psql 15.20 silently stops reading at an empty statement right after COPY, so the end
    mark would never come (found by a first-time user: every dump ending in COPY data
    failed to import on the docker runtime's newer psql)."""
    significant = [line for line in (raw.strip() for raw in last.splitlines())
                   if line and not line.startswith(b"--")  # comments, meta-commands: skipped
                   and (not line.startswith(b"\\") or line == b"\\.")]
    after_copy = bool(significant) and significant[-1] == b"\\."
    return f"\n{'' if after_copy else ';'}\n{commit}\\echo {mark}\n".encode()


class TransactionControl:
    """Finds the first statement of a script that commits or reconnects on its own, which
    ends the one transaction an import runs in. Scans only line starts and what follows a
    ``;``, chunk by chunk, with the end of the previous chunk scanned again where a line is
    cut in two.

    A false positive (such a word inside COPY data, a string or a PL/pgSQL body) only
    changes the wording of a failed import's error, never what is applied.
    """

    def __init__(self) -> None:
        self.found: tuple[str, int] | None = None
        self._carry = b"\n"  # before the first line: a newline, as if one ended there
        self._lines = 1  # newlines so far, that one included: the current line's number
        # compiled here, not at import: only an import needs them
        self._patterns = [re.compile(pattern) for pattern in CONTROL_AT]

    def scan(self, chunk: bytes) -> None:
        if self.found is not None or not chunk:
            return
        carry = self._carry
        joined = carry + chunk[:CARRY]
        match = self._first(joined)
        if match and match.start() < len(carry) and match.end() <= len(joined) - MARGIN:
            self._found(match, self._lines - carry.count(b"\n", match.start() + 1))
            return
        match = self._first(chunk)
        if match and match.end() <= len(chunk) - MARGIN:
            self._found(match, self._lines + chunk.count(b"\n", 0, match.start() + 1))
            return
        self._lines += chunk.count(b"\n")
        self._carry = (carry + chunk[-CARRY:])[-CARRY:]

    def finish(self) -> None:
        """The stream ended: decide what was waiting for more input."""
        if self.found is None and (match := self._first(self._carry + b"\n")):
            self._found(match, self._lines - self._carry.count(b"\n", match.start() + 1))

    def _found(self, match: re.Match[bytes], line: int) -> None:
        word = (match.group(1) or match.group(2)).decode()
        self.found = (" ".join(word.upper().split()) if match.group(1) else word, line)

    def _first(self, data: bytes) -> re.Match[bytes] | None:
        matches = [m for m in (pattern.search(data) for pattern in self._patterns) if m]
        return min(matches, key=lambda m: m.start(), default=None)

#: a line that starts COPY data (pg_dump writes each COPY on one line), and one that ends
#: it; each with the newline before it (a literal first byte the regex engine skips to)
COPY_FROM_STDIN = re.compile(rb"\nCOPY\b[^\n]*\bFROM\s+STDIN\b[^\n]*;[ \t]*\r?(?=\n)", re.I)
COPY_END = re.compile(rb"\n\\\.\r?(?=\n)")
#: an unfinished line longer than this is neither (a long row or INSERT): not kept whole
LINE_BYTES = 1 << 16


class CopyData:
    """Finds COPY data the input leaves open (a file cut before its ``\\.`` line), line by
    line, chunk by chunk: psql then reads what follows as rows and complains about those.

    A false positive (such a line inside a string) only changes the wording of a failed
    import's error, never what is applied.
    """

    def __init__(self) -> None:
        self.left_open: int | None = None  # once finished: the line of the unended COPY
        self._open: int | None = None
        self._line = 1  # the number of the line after ``_rest``'s first newline
        self._rest = b"\n"  # the newline before the last, unfinished line, and its start

    def scan(self, chunk: bytes) -> None:
        data = self._rest + chunk
        whole = data.rfind(b"\n")  # the newline that ends the last complete line
        line, counted, pos = self._line, 0, 0
        while match := (COPY_FROM_STDIN if self._open is None else COPY_END).search(
            data, pos, whole + 1
        ):
            if self._open is None:
                line += data.count(b"\n", counted, match.start())
                counted = match.start()
                self._open = line
            else:
                self._open = None
            pos = match.end()
        self._line += data.count(b"\n", 0, whole)
        rest = data[whole:]
        self._rest = rest if len(rest) <= LINE_BYTES else b"\n-"  # "-": starts neither line

    def finish(self) -> None:
        """The input ended: the newline the tail starts with ends its last line."""
        self.scan(b"\n")
        self.left_open = self._open



#: what pg_dump -Fc files start with; a -Ft file is a tar archive whose first member is
#: toc.dat (a tar header: the name at 0, "ustar" at 257)
ARCHIVE_MAGIC = b"PGDMP"
#: pg_dump 17.6, 16.10, 15.14, 14.19, 13.22 and later write these around a plain dump;
#: an older psql refuses them ("invalid command \\restrict")
RESTRICT_LINE = re.compile(rb"^\\(?:un)?restrict [A-Za-z0-9]*(?:\r?\n|\Z)", re.MULTILINE)
RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}


def _sql_input(
    tools: Tools, env: dict[str, str], source: Iterable[bytes], options: ImportOptions,
    roles: MissingRoles | None = None,
) -> Generator[bytes, None, None]:
    """The SQL to feed psql: a pg_dump archive (-Fc, -Ft, a -Fd directory) goes through the
    session's own pg_restore; ``\\restrict`` lines go when this psql does not know them."""
    stream: Iterator[bytes]
    if isinstance(source, DumpDirectory):
        # pg_restore opens the directory itself, so per-file compression (.gz, .lz4, .zst)
        # is its business. Not streamed to it as a tar: its tar reader takes an uncompressed
        # -Fd dump's files but refuses compressed ones ("compression is not supported by
        # tar archive format"), and pg_dump -Fd compresses by default. On docker, naming
        # the directory in pg_restore's argv makes the tools container mount it.
        stream = _restored(tools, env, None, options, str(source.path))
    else:
        chunks = iter(source)
        first = next(chunks, b"")
        stream = itertools.chain([first], chunks)
        if first.startswith(ARCHIVE_MAGIC) or (
            first[:8] == b"toc.dat\0" and first[257:262] == b"ustar"
        ):
            stream = _restored(tools, env, stream, options)
        elif b"\0" in first:
            raise ClaudeDbError(
                "the input is binary data, not SQL text nor a pg_dump archive (-Fc, -Ft)"
            )
    if options.skip_ownership:
        stream = Ownership().lines(stream)
    if roles is not None:
        stream = roles.lines(stream)
    return _restrict_lines(tools, env, stream)


def _restored(
    tools: Tools, env: dict[str, str], archive: Iterator[bytes] | None,
    options: ImportOptions, directory: str | None = None,
) -> Iterator[bytes]:
    """A pg_dump archive (or ``directory`` dump) as plain SQL, by ``pg_restore -f -`` where
    psql runs (so of the session server's version): fed from a thread while its output is
    read here."""
    with tempfile.TemporaryFile() as errors:
        proc = tools.popen(
            ["pg_restore", "-f", "-",
             *(["--no-owner", "--no-privileges"] if options.skip_ownership else []),
             *([directory] if directory else [])], env=env,
            stdin=subprocess.PIPE if archive is not None else None,
            stdout=subprocess.PIPE, stderr=errors,
        )
        assert proc.stdout is not None
        feed_error: list[BaseException] = []

        def feed() -> None:
            assert proc.stdin is not None and archive is not None
            try:
                for chunk in archive:
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                pass  # pg_restore stopped: its own error says why
            except BaseException as exc:  # unreadable input: reported by the reader
                feed_error.append(exc)
                proc.kill()
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

        feeder = threading.Thread(target=feed, daemon=True)
        if archive is not None:
            feeder.start()
        finished = False
        try:
            while chunk := proc.stdout.read(CHUNK):
                yield chunk
            finished = True
        finally:
            proc.stdout.close()
            if not finished:  # psql stopped first: stop pg_restore too
                proc.kill()
            code = proc.wait()
        if archive is not None:
            feeder.join()
        if feed_error:
            raise feed_error[0]
        if code != 0:
            raise ClaudeDbError(f"pg_restore failed: {_tail(errors)}")


def _restrict_lines(
    tools: Tools, env: dict[str, str], chunks: Iterator[bytes]
) -> Generator[bytes, None, None]:
    """``chunks`` without ``\\restrict KEY`` / ``\\unrestrict KEY`` lines if psql predates
    them. A short meta-command line cut between two chunks is held back until its end."""
    keep: bool | None = None  # asked at the first such line: most inputs have none
    held = b""
    try:
        for chunk in itertools.chain(chunks, [b""]):
            data, held = held + chunk, b""
            cut = data.rfind(b"\n") + 1
            if chunk and data.startswith(b"\\", cut) and len(data) - cut < 256:
                data, held = data[:cut], data[cut:]
            if b"restrict " in data:
                if keep is None:
                    keep = _psql_knows_restrict(tools, env)
                if not keep:
                    data = RESTRICT_LINE.sub(b"", data)
            if data:
                yield data
    finally:
        getattr(chunks, "close", lambda: None)()  # e.g. stop pg_restore


def _psql_knows_restrict(tools: Tools, env: dict[str, str]) -> bool:
    proc = tools.popen(
        ["psql", "--version"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out, _ = proc.communicate()
    found = re.search(rb"(\d+)(?:\.(\d+))?", out)
    if found is None:
        return True  # unknown: leave the file as it is
    major, minor = int(found.group(1)), int(found.group(2) or 0)
    return major >= 18 or minor >= RESTRICT_SINCE.get(major, 1 << 30)


#: one privilege statement of pg_dump's (always one line, identifiers quoted): the roles it
#: grants to or revokes from, and the role of ALTER DEFAULT PRIVILEGES FOR ROLE
ROLE = rb'(?:PUBLIC|"(?:[^"]|"")+")'
ACL_LINE = (
    rb"(?:GRANT|REVOKE|ALTER DEFAULT PRIVILEGES)\b.* (?:TO|FROM) (" + ROLE
    + rb"(?:, " + ROLE + rb")*)(?: WITH GRANT OPTION)?;\n"
)
FOR_ROLE = rb"ALTER DEFAULT PRIVILEGES FOR ROLE (" + ROLE + rb")"


class SqlLines:
    """Leaves out whole lines of a SQL stream that :meth:`_left_out` names, as pg_dump
    writes the statements filtered (one line each). Lines of COPY data are data, whatever
    they say: passed as they are. A line cut between two chunks is held back."""

    #: the first letters of the lines :meth:`_left_out` looks at
    first_letters = b"GRASgras"

    def __init__(self) -> None:
        self.left_out = 0
        self._held = b""
        self._in_copy = False

    def _left_out(self, line: bytes) -> bool:
        raise NotImplementedError

    def lines(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if kept := self.filter(chunk):
                yield kept
        if kept := self.filter(b"", end=True):
            yield kept

    def filter(self, chunk: bytes, end: bool = False) -> bytes:
        data = self._held + chunk
        cut = len(data) if end else data.rfind(b"\n") + 1
        data, self._held = data[:cut], data[cut:]
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            if self._in_copy:  # up to the line "\\." (pos is at a line start)
                if data.startswith(b"\\.\n", pos):
                    stop = pos + 3
                elif (found := data.find(b"\n\\.\n", pos)) >= 0:
                    stop = found + 4
                else:
                    out.append(data[pos:])
                    break
                out.append(data[pos:stop])
                pos, self._in_copy = stop, False
                continue
            line_end = data.find(b"\n", pos) + 1 or len(data)
            line = data[pos:line_end]
            if line.startswith(b"COPY ") and line.rstrip().endswith(b" FROM stdin;"):
                self._in_copy = True
            if not (line[:1] and line[:1] in self.first_letters and self._left_out(line)):
                out.append(line)
            pos = line_end
        return b"".join(out)



class Privileges(SqlLines):
    """Drops from a plain pg_dump stream the privilege statements that name a role a fresh
    session does not have (another role of this server); keeps those for PUBLIC, the
    built-in ``pg_*`` roles and the session's own user."""

    def __init__(self, user: str):
        super().__init__()
        self.user = user
        self.roles: set[str] = set()
        # compiled here, not at import: only a dump needs them
        self._acl_line, self._for_role = re.compile(ACL_LINE), re.compile(FOR_ROLE)
        self._role = re.compile(ROLE)

    def _left_out(self, line: bytes) -> bool:
        found = self._acl_line.fullmatch(line)
        if found is None:
            return False
        roles = self._role.findall(found.group(1))
        if owner := self._for_role.match(line):
            roles.append(owner.group(1))
        missing = {
            name for name in map(_role_name, roles) if name and not self._restorable(name)
        }
        if not missing:
            return False
        self.left_out += 1
        self.roles |= missing
        return True

    def _restorable(self, role: str) -> bool:
        return role.startswith("pg_") or role == self.user


#: what ``import --skip-ownership`` leaves out: ALTER ... OWNER TO, GRANT, REVOKE, ALTER
#: DEFAULT PRIVILEGES, SET SESSION AUTHORIZATION (one line each, as pg_dump writes them)
OWNERSHIP_LINE = (
    rb"(?:ALTER\b[^\n]* OWNER TO [^\n]*|(?:GRANT|REVOKE|ALTER DEFAULT PRIVILEGES)\b[^\n]*"
    rb"|SET SESSION AUTHORIZATION\b[^\n]*|RESET SESSION AUTHORIZATION);[ \t]*\r?\n?"
)


class Ownership(SqlLines):
    def __init__(self) -> None:
        super().__init__()
        # compiled here, not at import: only import --skip-ownership needs it
        self._line = re.compile(OWNERSHIP_LINE, re.IGNORECASE)

    def _left_out(self, line: bytes) -> bool:
        if self._line.fullmatch(line) is None:
            return False
        self.left_out += 1
        return True


#: an identifier naming a role: quoted ("App ""x""") or not (folded to lower case)
IDENT = rb'"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*'
IDENTS = rb"(?:" + IDENT + rb")(?:\s*,\s*(?:" + IDENT + rb"))*"
#: where a statement names roles that must exist (a whole line of it, as pg_dump writes
#: them): OWNER TO, GRANT ... TO, GRANTED BY, REVOKE ... FROM, CREATE/ALTER POLICY ... TO,
#: ALTER DEFAULT PRIVILEGES FOR ROLE, ALTER ROLE, SET ROLE, SET SESSION AUTHORIZATION,
#: GRANT role TO role
ROLE_USES = (
    rb"^ALTER\b.*?\bOWNER\s+TO\s+(" + IDENT + rb")",
    rb"^(?:ALTER\s+DEFAULT\b.*?\b)?GRANT\b.*?\bTO\s+(" + IDENTS + rb")",
    rb"^GRANT\s+(" + IDENTS + rb")\s+TO\b",  # a membership
    rb"^(?:GRANT|REVOKE)\b.*?\bGRANTED\s+BY\s+(" + IDENT + rb")",
    rb"^(?:ALTER\s+DEFAULT\b.*?\b)?REVOKE\b.*?\bFROM\s+(" + IDENTS + rb")",
    rb"^(?:CREATE|ALTER)\s+POLICY\b.*?\bTO\s+(" + IDENTS + rb")",
    rb"^ALTER\s+DEFAULT\s+PRIVILEGES\s+FOR\s+(?:ROLE|USER)\s+(" + IDENTS + rb")",
    rb"^ALTER\s+(?:ROLE|USER)\s+(" + IDENT + rb")",
    rb"^SET\s+(?:SESSION\s+AUTHORIZATION|ROLE)\s+(" + IDENT + rb")",
)
#: a role the dump creates itself: not ours to create
ROLE_CREATED = rb"^CREATE\s+(?:ROLE|USER|GROUP)\s+(" + IDENT + rb")"
#: words where a role name may stand that name none
NOT_ROLES = frozenset({"public", "current_user", "current_role", "session_user", "none",
                       "default", "group"})


class MissingRoles(SqlLines):
    """``import --create-roles``: creates, as NOLOGIN roles with nothing else, the roles the
    dump names that the server lacks, each before psql reads the line naming it (the import's
    transaction sees a role another session committed from its next statement on).

    The stream is scanned rather than the import retried on each ``role "x" does not
    exist``: a scan reads the input once (stdin and FIFOs cannot be read again) and needs
    no round per role; pg_dump writes each statement naming roles on one line. A role the
    scan misses fails the import as before, naming the options. The roles are created
    through ``admin`` (a superuser), committed, and granted to the session's ``user`` when
    that is another (no superuser: ``OWNER TO x`` needs membership in x); if the import
    fails they are dropped again (as the import rolled back, nothing depends on them)."""

    first_letters = b"ACGRSacgrs"

    def __init__(self, admin: Endpoint, user: str) -> None:
        super().__init__()
        self.admin, self.user = admin, user
        self.created: list[str] = []
        self.granted: list[str] = []  # roles it had, given CREATE on schema public
        self._seen: set[str] = set()
        self._wanted: list[str] = []
        self._conn: Any = None
        # compiled here, not at import: only --create-roles needs them (~1.5 ms a command)
        self._uses = [re.compile(use, re.IGNORECASE) for use in ROLE_USES]
        self._created = re.compile(ROLE_CREATED, re.IGNORECASE)

    def __enter__(self) -> MissingRoles:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is not None and not issubclass(kind, PartlyAppliedError):
                self._drop()
            elif kind is not None and self.created:  # what the file committed may use them
                print(f"note: the created roles stay (NOLOGIN): {', '.join(self.created)}",
                      file=sys.stderr)
        finally:
            if self._conn is not None:
                self._conn.close()

    def _left_out(self, line: bytes) -> bool:
        if created := self._created.match(line):
            self._seen.add(_identifier(created.group(1)))
            return False
        for use in self._uses:
            if found := use.match(line):
                for quoted in re.findall(IDENT, found.group(1)):
                    name = _identifier(quoted)
                    if name not in self._seen and not (
                        quoted[:1] != b'"' and name in NOT_ROLES
                    ):
                        self._seen.add(name)
                        self._wanted.append(name)
        return False

    def filter(self, chunk: bytes, end: bool = False) -> bytes:
        kept = super().filter(chunk, end)
        if self._wanted:
            self._create(self._wanted)
            self._wanted = []
        return kept

    def _create(self, names: list[str]) -> None:
        import psycopg
        from psycopg import sql

        try:
            if self._conn is None:
                self._conn = _connect(self.admin, timeout=10)
                self._conn.autocommit = True
            for name in names:
                role = sql.Identifier(name)
                if self._conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)
                ).fetchone():
                    self._may_create_in_public(name)
                    continue
                self._conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
                if self.user != self.admin.user:
                    # a user who is no superuser gives an object only to its own roles, and
                    # only to one that may create in the object's schema (PG15+: schema
                    # public's CREATE is its owner's only)
                    self._conn.execute(
                        sql.SQL("GRANT {} TO {}").format(role, sql.Identifier(self.user))
                    )
                    if self._public_schema():
                        self._conn.execute(
                            sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role)
                        )
                self.created.append(name)
        except psycopg.Error as exc:
            raise ClaudeDbError(
                f"import failed, nothing was applied: cannot create the roles the dump "
                f"names: {_pg_message(exc)}"
            ) from None

    def _may_create_in_public(self, name: str) -> None:
        """A role the server has, one of the user's own (an earlier ``--create-roles`` made
        it): a database made since (``reset``) grants it nothing on schema public yet."""
        from psycopg import sql

        if self.user == self.admin.user or not self._public_schema():
            return
        lacks = self._conn.execute(
            "SELECT pg_has_role(%s, %s, 'MEMBER') "
            "AND NOT has_schema_privilege(%s, 'public', 'CREATE')", (self.user, name, name),
        ).fetchone()[0]
        if lacks:
            self._conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(
                sql.Identifier(name)))
            self.granted.append(name)

    def _drop(self) -> None:
        import psycopg
        from psycopg import sql

        for name in self.granted:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(
                    sql.Identifier(name)))
        for name in reversed(self.created):
            role = sql.Identifier(name)
            try:
                if self.user != self.admin.user and self._public_schema():
                    self._conn.execute(
                        sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(role)
                    )
                self._conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
            except psycopg.Error as exc:
                print(f"note: role {name} stays: {_pg_message(exc)}", file=sys.stderr)


    def _public_schema(self) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone() is not None


def _identifier(name: bytes) -> str:
    """A SQL identifier's name: ``"App"`` as ``App``, ``App`` as ``app``."""
    if name[:1] == b'"':
        return name[1:-1].replace(b'""', b'"').decode(errors="replace")
    return name.decode(errors="replace").lower()


def _way_out(error: str) -> str:
    """The import option that gets past ``error``, if one does."""
    if re.search(r'role ".*" does not exist', error):
        return (
            "; import --create-roles creates the roles it names that this server lacks "
            "(NOLOGIN), or --skip-ownership leaves out ownership and privileges (OWNER TO, "
            "GRANT, REVOKE; a policy naming the role still needs it)"
        )
    if "cannot run inside a transaction block" in error or "unsafe use of new value" in error:
        return (
            "; import --no-transaction runs it (a snapshot is taken first and put back if "
            "the import fails)"
        )
    return ""


def _role_name(quoted: bytes) -> str | None:
    """``"app"`` as ``app``; None for PUBLIC."""
    if quoted == b"PUBLIC":
        return None
    return quoted[1:-1].replace(b'""', b'"').decode(errors="replace")


def _widen(pipe: Any) -> None:
    """Grow a pipe from 64 KiB to :data:`PIPE_BYTES` where the OS allows it (Linux)."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with contextlib.suppress(OSError, ValueError):
            fcntl.fcntl(pipe.fileno(), setpipe, PIPE_BYTES)


#: psql's own messages: ``psql:<stdin>:3: ERROR:  ...`` from the server,
#: ``psql:<stdin>:2: error: invalid command \\foo`` from psql itself
PSQL_ERROR = re.compile(r"^(?:psql:(.*?):(\d+): )?(?:ERROR|FATAL|error):\s*(.*)$")


def _psql_error(errors: Any, last_line: int | None = None) -> str | None:
    """psql's first error (``line 3: division by zero``; ``line 4 of inc/x.sql: ...`` in a
    file the script includes), or None when it printed none. ``last_line``: the input's
    last line, which a last statement without ``;`` ends on (not on the ``;`` we add)."""
    errors.seek(0)
    for line in errors.read().decode(errors="replace").splitlines():
        if found := PSQL_ERROR.match(line.strip()):
            source, line_no, message = found.groups()
            if not line_no:
                return str(message).strip()
            if source not in ("<stdin>", "-"):
                return f"line {line_no} of {source}: {message.strip()}"
            number = min(int(line_no), last_line) if last_line else int(line_no)
            return f"line {number}: {message.strip()}"
    return None
