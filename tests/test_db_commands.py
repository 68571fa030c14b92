"""Every ``claude-db`` command against one real local PostgreSQL session."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.readiness import wait_until
from claude_db.testing import BIN, Cli, assert_one_line_error
from claude_db_postgres.engine import LINE_BYTES, CopyData

CHECKSUM = "select count(*), md5(coalesce(string_agg(t::text, ',' order by id), '')) from t"


@pytest.fixture
def session(cli: Cli, workdir: Path) -> Iterator[dict[str, str]]:
    result = cli("claude-session", "start", "cmds")
    assert result.code == 0, result
    yield read_env(workdir)
    cli("claude-session", "delete", "cmds", "--yes")


def _stable(dump: bytes) -> list[bytes]:
    """A dump without pg_dump's random per-run \\restrict key lines."""
    return [
        line for line in dump.splitlines() if not line.startswith((b"\\restrict", b"\\unrestrict"))
    ]


def _checksum(url: str) -> tuple[object, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(CHECKSUM).fetchone()
    assert row is not None
    return tuple(row)


def test_status_and_info(cli: Cli, session: dict[str, str]) -> None:
    status = cli("claude-db", "status")
    assert status.code == 0 and status.stdout.startswith("ready: postgres"), status
    assert json.loads(cli("claude-db", "status", "--json").stdout)["ready"] is True
    info = cli("claude-db", "info")
    assert session["DB_PASSWORD"] not in info.stdout and "****" in info.stdout
    shown = json.loads(cli("claude-db", "info", "--json", "--show-password").stdout)
    assert shown["DATABASE_URL"] == session["DATABASE_URL"]
    assert shown["status"] == "running"


def test_query_formats(cli: Cli, session: dict[str, str]) -> None:
    sql = "select 1 as n, 'a,b' as s, null as z union all select 2, 'x', 'y' order by n"
    table = cli("claude-db", "query", sql)
    assert table.stdout.splitlines()[0].split("|")[0].strip() == "n"
    assert "(2 rows)" in table.stderr
    assert json.loads(cli("claude-db", "query", sql, "--json").stdout) == [
        {"n": 1, "s": "a,b", "z": None},
        {"n": 2, "s": "x", "z": "y"},
    ]
    assert cli("claude-db", "query", sql, "--csv").stdout == 'n,s,z\n1,"a,b",\n2,x,y\n'
    assert cli("claude-db", "query", "create table q(x int)").stdout.strip() == "CREATE TABLE"
    assert cli("claude-db", "query", "select '100%'", "--csv").stdout.splitlines()[1] == "100%"
    bad = cli("claude-db", "query", "select nosuch")
    assert_one_line_error(bad, ExitCode.FAILED)
    assert 'column "nosuch" does not exist' in bad.stderr
    assert_one_line_error(cli("claude-db", "query", "select 1", "--json", "--csv"), ExitCode.USAGE)


def test_psql_and_shell_pass_arguments(cli: Cli, session: dict[str, str]) -> None:
    psql = cli("claude-db", "psql", "-tAc", "select current_database()")
    assert psql.code == 0 and psql.stdout.strip() == "appdb", psql
    shell = cli("claude-db", "shell", "-tAc", "select 6 * 7")
    assert shell.stdout.strip() == "42"
    piped = cli("claude-db", "psql", "-tA", input="select 'from stdin';\n")
    assert piped.stdout.strip() == "from stdin"


def test_export_reset_import_round_trips_100k_rows(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    url = session["DATABASE_URL"]
    with psycopg.connect(url) as conn:
        conn.execute(
            "create table t as select g as id, md5(g::text) as h, now() as at,"
            " jsonb_build_object('k', g) as doc from generate_series(1, 100000) g"
        )
        conn.execute("create type mood as enum ('ok', 'meh')")
        conn.execute("create extension if not exists pgcrypto")
    before = _checksum(url)
    for name in ("dump.sql", "dump.sql.gz"):
        result = cli("claude-db", "export", name)
        assert result.code == 0, result
        assert not [p for p in workdir.iterdir() if p.name.endswith(".partial")]
    with gzip.open(workdir / "dump.sql.gz") as zipped:
        assert _stable(zipped.read()) == _stable((workdir / "dump.sql").read_bytes())

    assert_one_line_error(cli("claude-db", "reset"), ExitCode.CONFIRMATION_NEEDED)
    assert _checksum(url) == before  # refused: nothing changed
    assert cli("claude-db", "reset", "--yes").code == 0
    with psycopg.connect(url) as conn:  # everything is gone: tables, types, extensions
        assert conn.execute("select count(*) from pg_class where relname = 't'").fetchone() == (0,)
        assert conn.execute("select count(*) from pg_type where typname = 'mood'").fetchone() == (
            0,
        )
        assert conn.execute(
            "select count(*) from pg_extension where extname = 'pgcrypto'"
        ).fetchone() == (0,)

    result = cli("claude-db", "import", "dump.sql.gz")
    assert result.code == 0, result
    assert _checksum(url) == before
    # and again from stdin, uncompressed, into another database of the same server
    cli("claude-db", "query", "create database copy")
    piped = cli(
        "claude-db", "import", "-", "--database", "copy", input=(workdir / "dump.sql").read_bytes()
    )
    assert piped.code == 0, piped
    assert _checksum(url.rsplit("/", 1)[0] + "/copy") == before
    streamed = cli("claude-db", "export", "-")
    assert _stable(streamed.stdout.encode()) == _stable((workdir / "dump.sql").read_bytes())


def test_import_is_all_or_nothing(cli: Cli, session: dict[str, str], workdir: Path) -> None:
    script = workdir / "bad.sql"
    script.write_text(
        "create table first(x int);\ninsert into first values (1);\nselect nosuch;\n"
        "create table never(x int);\n"
    )
    result = cli("claude-db", "import", "bad.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "line 3" in result.stderr and "nosuch" in result.stderr
    assert "nothing was applied: line 3:" in result.stderr, result
    tables = cli(
        "claude-db", "query", "select count(*) from pg_tables where schemaname='public'", "--csv"
    )
    assert tables.stdout.splitlines()[1] == "0"


def test_import_of_copy_data_without_its_end_line_says_so(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    """A file cut inside COPY data (its ``\\.`` line missing): the error names the COPY,
    not psql's complaint about whatever line it read next as a row; nothing is applied."""
    (workdir / "cut.sql").write_text(
        "create table copied(id int, label text);\n\n"
        "COPY public.copied (id, label) FROM stdin;\n1\tone\n2\ttwo\n"
    )
    result = cli("claude-db", "import", "cut.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "nothing was applied: line 3: the COPY's data has no \\. end line" in result.stderr, (
        result)
    tables = cli(
        "claude-db", "query", "select count(*) from pg_tables where tablename='copied'", "--csv"
    )
    assert tables.stdout.splitlines()[1] == "0"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("COPY missing (a) FROM stdin;\n1\n2\n", 'line 1: relation "missing" does not exist'),
        ("create table t3(a int);\nselect 'x\nCOPY t FROM stdin;\n';\n"
         "create table t3(a int);\n", 'line 5: relation "t3" already exists'),
    ],
    ids=["copy-into-nothing", "copy-in-a-string"],
)
def test_an_error_inside_the_file_is_never_taken_for_an_open_copy(
    cli: Cli, session: dict[str, str], workdir: Path, script: str, expected: str
) -> None:
    """psql's own error within the file stays the error, even where the file seems to leave
    a COPY open (review: the COPY message hid both)."""
    (workdir / "bad.sql").write_text(script)
    result = cli("claude-db", "import", "bad.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert f"nothing was applied: {expected}" in result.stderr, result


@pytest.mark.parametrize(
    ("script", "left_open"),
    [
        (b"COPY t (a) FROM stdin;\n1\n\\.\n", None),
        (b"COPY t (a) FROM stdin;\n1\n\\.", None),  # the tail's newline ends the \\. line
        (b"select 1;\n\ncopy t from STDIN with (format csv);\r\n1\r\n", 3),
        (b"COPY a FROM stdin;\n\\.\n" * 3 + b"x\n" * 500 + b"COPY b FROM stdin;\n1\n", 507),
        (b"COPY t FROM stdin;\nCOPY u FROM stdin;\n\\.\n", None),  # a row, then the end
        (b"x" * (LINE_BYTES + 10) + b"\nCOPY t FROM stdin;\n1\n", 2),  # after a long line
        (b"select 'COPY t FROM stdin;';\n", None),
    ],
    ids=["ended", "ended-at-eof", "csv-crlf", "after-others", "row-like-copy", "long-line",
         "in-a-string"],
)
def test_copy_data_left_open_is_found_however_the_input_is_cut(
    script: bytes, left_open: int | None
) -> None:
    for size in (1, 2, 3, 7, 64, len(script)):
        copy = CopyData()
        for at in range(0, len(script), size):
            copy.scan(script[at : at + size])
        copy.finish()
        assert copy.left_open == left_open, size


def test_import_rejects_missing_and_corrupt_files(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    assert_one_line_error(cli("claude-db", "import", "missing.sql"), ExitCode.USAGE)
    good = gzip.compress(b"create table half(x int);\n" * 1 + b"insert into half values (1);\n")
    (workdir / "broken.sql.gz").write_bytes(good[: len(good) // 2])
    assert_one_line_error(cli("claude-db", "import", "broken.sql.gz"), ExitCode.FAILED)
    result = cli(
        "claude-db", "query", "select count(*) from pg_tables where tablename='half'", "--csv"
    )
    assert result.stdout.splitlines()[1] == "0"


def test_export_to_a_missing_directory_writes_nothing(cli: Cli, session: dict[str, str]) -> None:
    assert_one_line_error(cli("claude-db", "export", "nodir/x.sql"), ExitCode.USAGE)


def test_session_resolution(cli: Cli, session: dict[str, str], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # no .env there: nothing resolves
    assert_one_line_error(cli("claude-db", "status", cwd=elsewhere), ExitCode.NO_SESSION)
    assert cli("claude-db", "status", "--session", "cmds", cwd=elsewhere).code == 0
    assert cli("claude-db", "status", cwd=elsewhere, env={"CLAUDE_SESSION": "cmds"}).code == 0
    # a bare DATABASE_URL (as inside a session container)
    bare = cli(
        "claude-db",
        "query",
        "select current_user",
        "--csv",
        cwd=elsewhere,
        env={"DATABASE_URL": session["DATABASE_URL"]},
    )
    assert bare.stdout.splitlines() == ["current_user", "postgres"], bare
    down = cli(
        "claude-db",
        "status",
        cwd=elsewhere,
        env={"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"},
    )
    assert_one_line_error(down, ExitCode.NOT_RUNNING)


def test_multiple_databases(cli: Cli, session: dict[str, str]) -> None:
    assert cli("claude-db", "query", "CREATE DATABASE myapp_test").code == 0
    cli("claude-db", "query", "create table only_test(x int)", "--database", "myapp_test")
    listed = cli(
        "claude-db",
        "query",
        "select tablename from pg_tables where schemaname='public'",
        "--csv",
        "--database",
        "myapp_test",
    )
    assert listed.stdout.splitlines() == ["tablename", "only_test"]
    assert cli("claude-db", "reset", "--yes", "--database", "myapp_test").code == 0
    after = cli(
        "claude-db",
        "query",
        "select count(*) from pg_tables where schemaname='public'",
        "--csv",
        "--database",
        "myapp_test",
    )
    assert after.stdout.splitlines()[1] == "0"


def test_plugins_lists_the_builtin_engine(cli: Cli) -> None:
    data = json.loads(cli("claude-db", "plugins", "--json").stdout)
    assert data["engines"]["postgres"] == "postgres"
    assert "local" in data["runtimes"]
    assert os.environ["CLAUDE_DB_STATE_DIR"]  # the isolated state is in use


def test_a_password_full_of_shell_characters_survives_dotenv_and_sh(
    cli: Cli, workdir: Path
) -> None:
    password = 'p@ss w$rd"#;&|`x` %2F!'
    started = cli("claude-session", "start", "quoted", env={"CLAUDE_DB_PASSWORD": password})
    assert started.code == 0, started
    try:
        by_dotenv = read_env(workdir)
        by_sh = subprocess.run(
            ["sh", "-c", 'set -a; . ./.env; printf "%s\\n%s" "$DB_PASSWORD" "$DATABASE_URL"'],
            cwd=workdir, capture_output=True, text=True, check=True,
        ).stdout.split("\n")
        assert by_dotenv["DB_PASSWORD"] == password
        assert by_sh == [password, by_dotenv["DATABASE_URL"]]
        with psycopg.connect(by_sh[1]) as conn:  # the URL encodes it right, too
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        cli("claude-session", "delete", "quoted", "--yes")


def test_verbose_is_ours_before_double_dash_and_the_tools_after(
    cli: Cli, session: dict[str, str]
) -> None:
    ours = cli("claude-db", "--verbose", "query", "select 2", "--csv")
    assert ours.code == 0 and ours.stdout.splitlines() == ["?column?", "2"], ours
    # after --, it reaches psql, which has no such option and says so
    theirs = cli("claude-db", "psql", "--", "--verbose")
    assert theirs.code != 0 and "verbose" in theirs.stderr, theirs


TYPED = (
    "select '{\"a\":1,\"é\":[true,null]}'::jsonb j, array[1,2] a, 'x'::bytea b, true t, false f,"
    " interval '1 day' i, 1.50::numeric n, timestamptz '2024-05-01 12:00:00+00' ts,"
    " array[1.5, 2.50]::numeric[] na, 1::float8 one, 'NaN'::float8 nan, 2.5::real r,"
    " null::int z, 'ü'::text u, '00000000-0000-0000-0000-000000000001'::uuid id,"
    " '10.0.0.1/8'::inet ip, int4range(1, 3) rg"
)


def test_query_prints_the_servers_text_and_json_values(cli: Cli, session: dict[str, str]) -> None:
    as_json = cli("claude-db", "query", "set timezone to 'UTC'; " + TYPED, "--json")
    assert as_json.code == 0, as_json
    assert json.loads(as_json.stdout) == [{
        "j": {"a": 1, "é": [True, None]}, "a": [1, 2], "b": "\\x78", "t": True, "f": False,
        "i": "1 day", "n": "1.50", "ts": "2024-05-01 12:00:00+00", "na": ["1.5", "2.50"],
        "one": 1, "nan": "NaN", "r": 2.5, "z": None, "u": "ü",
        "id": "00000000-0000-0000-0000-000000000001", "ip": "10.0.0.1/8", "rg": "[1,3)",
    }]
    text = ['{"a": 1, "é": [true, null]}', "[1, 2]", "\\x78", "t", "f", "1 day", "1.50",
            "2024-05-01 12:00:00+00", '["1.5", "2.50"]', "1", "NaN", "2.5", "", "ü",
            "00000000-0000-0000-0000-000000000001", "10.0.0.1/8", "[1,3)"]
    as_csv = cli("claude-db", "query", "set timezone to 'UTC'; " + TYPED, "--csv")
    assert as_csv.code == 0, as_csv
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0] == ["j", "a", "b", "t", "f", "i", "n", "ts", "na", "one", "nan", "r", "z",
                       "u", "id", "ip", "rg"]
    assert rows[1:] == [text]
    table = cli("claude-db", "query", "set timezone to 'UTC'; " + TYPED)
    assert table.code == 0, table
    cells = [cell.strip() for cell in table.stdout.splitlines()[2].split(" | ")]
    assert cells == text


def test_query_keeps_repeated_columns_and_shows_the_last_statement(
    cli: Cli, session: dict[str, str]
) -> None:
    both = cli("claude-db", "query", "select 1 as a, 2 as a, 3 as a_2, 4 as id, 5 as id", "--json")
    assert both.code == 0, both
    assert json.loads(both.stdout) == [{"a": 1, "a_3": 2, "a_2": 3, "id": 4, "id_2": 5}]
    assert both.stderr.count("\n") == 1 and "a -> a_3, id -> id_2" in both.stderr, both
    plain = cli("claude-db", "query", "select 1 as a, 2 as a", "--csv")
    assert plain.stdout == "a,a\n1,2\n" and plain.stderr == "", plain
    several = cli(
        "claude-db", "query",
        "create table t2(x int); insert into t2 values (1), (2); select * from t2 order by x",
        "--json",
    )
    assert several.code == 0, several
    assert json.loads(several.stdout) == [{"x": 1}, {"x": 2}]
    status = cli("claude-db", "query", "create table t3(x int); insert into t3 values (7)")
    assert status.stdout.strip() == "INSERT 0 1", status
    failed = cli("claude-db", "query", "create table t4(x int); select 1/0")
    assert_one_line_error(failed, ExitCode.FAILED)
    assert "division by zero" in failed.stderr
    # the statements of one query string run as one transaction: t4 was not kept
    assert cli("claude-db", "query", "select to_regclass('t4') is null", "--csv").stdout == (
        "?column?\nt\n"
    )


def _public_tables(cli: Cli) -> list[str]:
    listed = cli(
        "claude-db", "query",
        "select tablename from pg_tables where schemaname='public' order by 1", "--csv",
    )
    assert listed.code == 0, listed
    names: list[str] = listed.stdout.splitlines()[1:]
    return names


def test_import_tells_whether_a_failure_left_something_applied(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    # (a plain failing file: test_import_is_all_or_nothing) the file commits on its own:
    # what it committed stays, and the error says so
    own = workdir / "tx.sql"
    own.write_text(
        "BEGIN;\nCREATE TABLE tx1(x int);\n  commit;\nCREATE TABLE tx2(x int);\nSELECT 1/0;\n"
        "CREATE TABLE tx3(x int);\n"
    )
    result = cli("claude-db", "import", "tx.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "nothing was applied" not in result.stderr, result
    assert (
        "import failed at line 5: division by zero; the file has its own transaction control "
        "(COMMIT at line 3), so what it committed before the error stays applied"
    ) in result.stderr, result
    assert _public_tables(cli) == ["tx1", "tx2"]  # tx2: autocommitted after the COMMIT
    # the same script as a gzip stream on stdin, reconnecting with \c: also told
    cli("claude-db", "query", "drop table tx1, tx2")
    moved = gzip.compress(
        f"create table c1(x int);\n\\c {session['DB_NAME']}\ncreate table c2(x int);\n"
        "select nosuch;\n".encode()
    )
    result = cli("claude-db", "import", "-", input=moved)
    assert_one_line_error(result, ExitCode.FAILED)
    assert "line 4" in result.stderr and "(\\c at line 2)" in result.stderr, result
    assert _public_tables(cli) == ["c2"]  # c1's transaction ended with the connection
    cli("claude-db", "query", "drop table c2")
    # a COMMIT after the error, or a PL/pgSQL body's END; before it: nothing was applied
    late = workdir / "late.sql"
    late.write_text(
        "create function f() returns int language plpgsql as $$\nbegin\n  return 1;\nend;\n$$;"
        "\ncreate table late1(x int);\nselect 1/0;\ncommit;\n"
    )
    result = cli("claude-db", "import", "late.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "nothing was applied: line 7: division by zero" in result.stderr, result
    assert _public_tables(cli) == []
    # with --replace the previous data comes back, whatever the file committed
    cli("claude-db", "query", "create table kept(x int)")
    result = cli("claude-db", "import", "--replace", "--yes", "tx.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert result.stderr.endswith("division by zero; the previous data is back\n"), result
    assert "stays applied" not in result.stderr
    assert _public_tables(cli) == ["kept"]


def test_a_value_with_line_breaks_keeps_the_table_aligned(
    cli: Cli, session: dict[str, str]
) -> None:
    shown = cli("claude-db", "query", "select E'a\\nbcd' as y, 1 as z union all select 'q', 2")
    assert shown.code == 0, shown
    assert shown.stdout.splitlines() == [
        "y   | z", "----+--", "a  +| 1", "bcd |", "q   | 2",
    ]


def test_a_terminal_table_prints_brackets_as_text(
    session: dict[str, str], workdir: Path
) -> None:
    """On a terminal rich draws the table: JSON text such as [null] is no markup to it."""
    import pty

    reader, writer = pty.openpty()
    try:
        done = subprocess.run(
            [str(BIN / "claude-db"), "query", "select '{\"k\": [null]}'::jsonb j, '[/x]' t"],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=writer, stderr=subprocess.PIPE,
            env={**os.environ, "COLUMNS": "80"}, timeout=300,
        )
        os.close(writer)
        shown = b""
        with contextlib.suppress(OSError):  # EIO: the terminal's writer is gone
            while chunk := os.read(reader, 4096):
                shown += chunk
    finally:
        os.close(reader)
    assert done.returncode == 0, done.stderr
    assert '{"k": [null]}' in shown.decode() and "[/x]" in shown.decode(), shown


def test_export_keeps_the_privileges_a_new_session_can_restore(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    """A SECURITY DEFINER function whose EXECUTE was revoked from PUBLIC stays uncallable by
    others after a round trip; grants to built-in roles stay too."""
    setup = (
        "create function sd() returns int language sql security definer as 'select 1';"
        "revoke all on function sd() from public;"
        "create table shared(x int); grant select on shared to pg_read_all_data"
    )
    assert cli("claude-db", "query", setup).code == 0
    exported = cli("claude-db", "export", "acl.sql")
    assert exported.code == 0, exported
    assert "left out" not in exported.stderr, exported
    assert cli("claude-db", "reset", "--yes").code == 0
    assert cli("claude-db", "import", "acl.sql").code == 0
    shown = cli(
        "claude-db", "query",
        "select has_function_privilege('public', 'sd()', 'execute'), "
        "has_table_privilege('pg_read_all_data', 'shared', 'select')", "--csv",
    )
    assert shown.stdout.splitlines()[1] == "f,t", shown


def test_export_leaves_out_grants_to_roles_a_new_session_lacks() -> None:
    """The filter on pg_dump's real output shapes, cut at every byte: COPY data lines that
    look like privilege statements are data and stay."""
    from claude_db_postgres.engine import Privileges

    dump = (
        b'CREATE TABLE "public"."t" ("x" "text");\n'
        b'COPY "public"."t" ("x") FROM stdin;\n'
        b'GRANT ALL ON TABLE "public"."t" TO "reader";\n'
        b"\\.\n"
        b'REVOKE ALL ON FUNCTION "public"."sd"() FROM PUBLIC;\n'
        b'GRANT ALL ON FUNCTION "public"."sd"() TO "reader";\n'
        b'GRANT SELECT ON TABLE "public"."t" TO "me";\n'
        b'GRANT SELECT ON TABLE "public"."t" TO "pg_monitor";\n'
        b'ALTER DEFAULT PRIVILEGES FOR ROLE "other" GRANT SELECT ON TABLES  TO PUBLIC;\n'
        b'GRANT USAGE ON SCHEMA "public" TO "odd ""name""";\n'
        b"-- the end"
    )
    expected = (
        b'CREATE TABLE "public"."t" ("x" "text");\n'
        b'COPY "public"."t" ("x") FROM stdin;\n'
        b'GRANT ALL ON TABLE "public"."t" TO "reader";\n'
        b"\\.\n"
        b'REVOKE ALL ON FUNCTION "public"."sd"() FROM PUBLIC;\n'
        b'GRANT SELECT ON TABLE "public"."t" TO "me";\n'
        b'GRANT SELECT ON TABLE "public"."t" TO "pg_monitor";\n'
        b"-- the end"
    )
    for cut in range(len(dump) + 1):
        privileges = Privileges("me")
        out = privileges.filter(dump[:cut]) + privileges.filter(dump[cut:])
        out += privileges.filter(b"", end=True)
        assert out == expected, cut
        assert privileges.left_out == 3 and privileges.roles == {"reader", "other", 'odd "name"'}


def test_export_keeps_a_files_mode_and_sweeps_what_a_killed_export_left(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    target = workdir / "private.sql"
    target.write_text("old")
    os.chmod(target, 0o600)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names a process that is gone, as after a kill -9
    left = workdir / f".private.sql.{dead.pid}.abc123.partial"
    left.write_text("half a dump")
    live = workdir / f".private.sql.{os.getpid()}.def456.partial"  # a running export's
    live.write_text("being written")
    result = cli("claude-db", "export", "private.sql")
    assert result.code == 0, result
    assert target.stat().st_mode & 0o777 == 0o600
    assert not left.exists() and live.exists()


def test_a_query_may_start_with_a_dash_and_a_socket_url_is_taken(
    cli: Cli, session: dict[str, str], tmp_path: Path
) -> None:
    shown = cli("claude-db", "query", "-- a note first\nselect 7 as n", "--csv")
    assert shown.code == 0 and shown.stdout == "n\n7\n", shown
    # the session's role is no superuser (it may not read the setting): its record says it
    record = Path(os.environ["CLAUDE_DB_STATE_DIR"], "sessions", session["CLAUDE_SESSION"],
                  "session.json")
    socket_dir = json.loads(record.read_text())["runtime_state"]["socket_dir"]
    assert socket_dir.startswith("/"), record
    user, port, name = session["DB_USER"], session["DB_PORT"], session["DB_NAME"]
    password = session["DB_PASSWORD"]
    encoded = socket_dir.replace("/", "%2F")
    for url in (f"postgresql://{user}:{password}@/{name}?host={socket_dir}&port={port}",
                f"postgresql://{user}:{password}@{encoded}:{port}/{name}"):
        elsewhere = tmp_path / "elsewhere"  # no .env here: the URL is the target
        elsewhere.mkdir(exist_ok=True)
        result = cli("claude-db", "query", "select current_database()", "--csv",
                     cwd=elsewhere, env={"DATABASE_URL": url})
        assert result.code == 0 and result.stdout.splitlines()[1] == name, (url, result)


def test_a_query_read_from_stdin(cli: Cli, session: dict[str, str]) -> None:
    piped = cli("claude-db", "query", "-", "--csv", input="select 41 + 1 as n;\n")
    assert piped.code == 0 and piped.stdout == "n\n42\n", piped
    empty = cli("claude-db", "query", "-", input="")
    assert_one_line_error(empty, ExitCode.USAGE)
    plain = cli("claude-db", "export", "plain.sql")
    assert plain.code == 0 and "compression" not in plain.stderr, plain



def _reading_stdin(pid: int) -> bool:
    """Whether process ``pid`` waits in a read of its stdin (a pipe)."""
    with contextlib.suppress(OSError):
        waits = Path(f"/proc/{pid}/wchan").read_text()
        call = Path(f"/proc/{pid}/syscall").read_text().split()
        return "pipe_read" in waits and len(call) > 1 and call[1] == "0x0"  # fd 0
    return False


def test_replace_reads_its_input_before_it_replaces_anything(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    """``export - | import --replace -`` on the same database: an import that emptied the
    database before its input came would import an empty (or cut) export, and say
    "replaced". It waits for the first bytes with the data untouched."""
    filled = cli("claude-db", "query", "create table t(id int primary key, v text); "
                 "insert into t select g, md5(g::text) from generate_series(1, 2000) g")
    assert filled.code == 0, filled
    before = _checksum(session["DATABASE_URL"])
    exported = cli("claude-db", "export", "dump.pgc", "--format", "custom")
    assert exported.code == 0, exported
    importing = subprocess.Popen(
        [str(BIN / "claude-db"), "import", "--replace", "--yes", "-"], cwd=workdir,
        env=dict(os.environ), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: _reading_stdin(importing.pid), timeout=300)
        assert _checksum(session["DATABASE_URL"]) == before  # nothing replaced yet
        _, stderr = importing.communicate((workdir / "dump.pgc").read_bytes(), timeout=300)
    finally:
        importing.kill()
        importing.wait()
    assert importing.returncode == 0, stderr
    assert _checksum(session["DATABASE_URL"]) == before
