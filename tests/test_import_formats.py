"""``claude-db import`` takes what users have (archives, compressed files, pipes) and its
outcome is told truthfully, against real local PostgreSQL sessions."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.testing import Cli, assert_one_line_error

pytest_plugins = ["claude_db.testing.docker"]  # the docker runtime's case, at the end

ROWS = "create table t(id int primary key, v text); insert into t select g, 'v' || g " \
       "from generate_series(1, 500) g"


@pytest.fixture
def session(cli: Cli, workdir: Path) -> Iterator[dict[str, str]]:
    result = cli("claude-session", "start", "formats")
    assert result.code == 0, result
    yield read_env(workdir)
    cli("claude-session", "delete", "formats", "--yes")


def _tables(cli: Cli) -> list[str]:
    listed = cli(
        "claude-db", "query",
        "select tablename from pg_tables where schemaname='public' order by 1", "--csv",
    )
    assert listed.code == 0, listed
    return listed.stdout.splitlines()[1:]


def _count(cli: Cli) -> str:
    counted = cli("claude-db", "query", "select count(*) from t", "--csv")
    assert counted.code == 0, counted
    return counted.stdout.splitlines()[1]


def _pg_dump(env: dict[str, str], *args: str) -> None:
    """The session server's own pg_dump (the local runtime's binaries)."""
    from claude_db_postgres.local import find_bindir

    subprocess.run(
        [str(find_bindir() / "pg_dump"), *args], check=True,
        env={**os.environ, **{k: v for k, v in env.items() if k.startswith("PG")}},
    )


def test_archives_and_compressed_dumps_are_imported(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    assert cli("claude-db", "query", ROWS).code == 0
    _pg_dump(session, "-Fc", "-f", str(workdir / "custom.dump"))
    _pg_dump(session, "-Ft", "-f", str(workdir / "tar.dump"))
    assert cli("claude-db", "export", "plain.sql").code == 0
    plain = (workdir / "plain.sql").read_bytes()
    custom = (workdir / "custom.dump").read_bytes()
    # named as users name them, or not at all: the content decides
    (workdir / "dump.sql.bz2").write_bytes(bz2.compress(plain))
    (workdir / "dump.xz").write_bytes(lzma.compress(plain))
    (workdir / "custom.dump.gz").write_bytes(gzip.compress(custom))
    zstd = shutil.which("zstd")
    assert zstd, "the zstd program (a test dependency) is not installed"
    subprocess.run([zstd, "-q", "-o", str(workdir / "dump.zst"), str(workdir / "plain.sql")],
                   check=True)
    with zipfile.ZipFile(workdir / "dump.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("backup.sql", plain)
    for name in ("custom.dump", "tar.dump", "dump.sql.bz2", "dump.xz", "custom.dump.gz",
                 "dump.zst", "dump.zip"):
        assert cli("claude-db", "query", "drop table t").code == 0
        result = cli("claude-db", "import", name)
        assert result.code == 0, (name, result)
        assert _count(cli) == "500", name
    # archives and zstd from stdin too
    for data in (custom, (workdir / "dump.zst").read_bytes(), (workdir / "tar.dump").read_bytes()):
        assert cli("claude-db", "query", "drop table t").code == 0
        result = cli("claude-db", "import", "-", input=data)
        assert result.code == 0, result
        assert _count(cli) == "500"
    # a cut archive: pg_restore's error, and nothing applied
    assert cli("claude-db", "query", "drop table t").code == 0
    (workdir / "cut.dump").write_bytes(custom[: len(custom) * 2 // 3])
    result = cli("claude-db", "import", "cut.dump")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "pg_restore" in result.stderr, result
    assert _tables(cli) == []
    # what cannot be read: one clear line, never binary garbage
    (workdir / "dump.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + os.urandom(64))
    result = cli("claude-db", "import", "dump.7z")
    assert_one_line_error(result, ExitCode.USAGE)
    assert "7z-compressed" in result.stderr, result
    (workdir / "random.bin").write_bytes(b"\x00\x01garbage\x00" * 100)
    result = cli("claude-db", "import", "random.bin")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "binary data, not SQL text" in result.stderr, result
    with zipfile.ZipFile(workdir / "two.zip", "w") as archive:
        archive.writestr("a.sql", "select 1;")
        archive.writestr("b.sql", "select 2;")
    result = cli("claude-db", "import", "two.zip")
    assert_one_line_error(result, ExitCode.USAGE)
    assert "holds 2 files" in result.stderr, result
    assert _tables(cli) == []


def test_a_directory_dump_is_imported(cli: Cli, session: dict[str, str], workdir: Path) -> None:
    """pg_dump -Fd: per-file compressed (its default) or not, all or nothing."""
    assert cli("claude-db", "query", ROWS).code == 0
    _pg_dump(session, "-Fd", "-f", str(workdir / "gz.d"))
    _pg_dump(session, "-Fd", "-Z", "0", "-f", str(workdir / "plain.d"))
    assert list((workdir / "gz.d").glob("*.dat.gz")), "pg_dump -Fd compresses by default"
    assert not list((workdir / "plain.d").glob("*.gz"))
    for name, *options in (("gz.d",), ("plain.d/", "--skip-ownership")):
        assert cli("claude-db", "query", "drop table t").code == 0
        result = cli("claude-db", "import", *options, name)
        assert result.code == 0, (name, result)
        assert _count(cli) == "500", name
    assert cli("claude-db", "query", "delete from t where id > 10").code == 0
    result = cli("claude-db", "import", "--replace", "--yes", "gz.d")
    assert result.code == 0, result
    assert _count(cli) == "500"
    # a dump of a table whose foreign key needs a table the target lacks: nothing applied
    assert cli("claude-db", "query",
               "create table r(id int references t, v text); insert into r values (1, 'x')"
               ).code == 0
    _pg_dump(session, "-Fd", "-t", "r", "-f", str(workdir / "r.d"))
    assert cli("claude-db", "reset", "--yes").code == 0
    result = cli("claude-db", "import", "r.d")
    assert_one_line_error(result, ExitCode.FAILED)
    assert 'relation "public.t" does not exist' in result.stderr, result
    assert _tables(cli) == []
    # a damaged directory: pg_restore's own error, nothing applied
    shutil.copytree(workdir / "plain.d", workdir / "damaged.d")
    for data in (workdir / "damaged.d").glob("[0-9]*.dat"):  # the data, not toc.dat
        data.unlink()
    result = cli("claude-db", "import", "damaged.d")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "pg_restore" in result.stderr, result
    assert _tables(cli) == []
    # a directory that is no dump: refused before anything runs
    (workdir / "notes").mkdir()
    (workdir / "notes" / "a.sql").write_text("create table n(x int);\n")
    result = cli("claude-db", "import", "notes")
    assert_one_line_error(result, ExitCode.USAGE)
    assert "without a toc.dat" in result.stderr, result
    assert _tables(cli) == []


def test_a_bom_a_fifo_and_dev_stdin_are_accepted(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    (workdir / "bom.sql").write_bytes(b"\xef\xbb\xbfcreate table bom(x int);\n")
    result = cli("claude-db", "import", "bom.sql")
    assert result.code == 0, result
    fifo = workdir / "fifo.sql"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"printf 'create table fifo(x int);' > {fifo}"])
    result = cli("claude-db", "import", str(fifo))
    writer.wait()
    assert result.code == 0, result
    result = cli("claude-db", "import", "/dev/stdin", input="create table devstdin(x int);")
    assert result.code == 0, result
    assert _tables(cli) == ["bom", "devstdin", "fifo"]


def test_an_import_says_what_happened(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    # a last statement without ';' runs, as psql runs it
    (workdir / "open.sql").write_text("create table open1(x int);\ncreate table open2(x int)")
    result = cli("claude-db", "import", "open.sql")
    assert result.code == 0, result
    assert _tables(cli) == ["open1", "open2"]
    # psql's own control silently stopped it, or a file cut inside COPY data: never a success
    stopped = {
        "copy.sql": ("create table c(x text);\nCOPY c FROM stdin;\nrow one\nrow two\n",
                     "line 2: the COPY's data has no \\. end line"),
        "quit.sql": ("create table q(x int);\n\\q\ncreate table q2(x int);\n",
                     "psql stopped before the end of the file"),
    }
    for name, (text, said) in stopped.items():
        (workdir / name).write_text(text)
        result = cli("claude-db", "import", name)
        assert_one_line_error(result, ExitCode.FAILED)
        assert f"nothing was applied: {said}" in result.stderr, result
        assert _tables(cli) == ["open1", "open2"], name
    (workdir / "off.sql").write_text(
        "\\set ON_ERROR_STOP off\ncreate table off1(x int);\nselect 1/0;\n"
    )
    result = cli("claude-db", "import", "off.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "nothing was applied: line 3: division by zero" in result.stderr, result
    # --replace with such a file: the previous data is back, and no "replaced"
    result = cli("claude-db", "import", "--replace", "--yes", "quit.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "the previous data is back" in result.stderr, result
    assert _tables(cli) == ["open1", "open2"]
    # COMMIT at a line start inside a PL/pgSQL body, a psql meta-command's error: nothing
    # was applied, and the error says so
    (workdir / "body.sql").write_text(
        "create procedure p() language plpgsql as $$\nbegin\n  create table inner1(x int);\n"
        "COMMIT;\nend $$;\ncreate table body1(x int);\nselect 1/0;\n"
    )
    (workdir / "meta.sql").write_text("create table meta1(x int);\n\\nosuchcommand\n")
    for name, error in (("body.sql", "line 7: division by zero"),
                        ("meta.sql", "line 2: invalid command \\nosuchcommand")):
        result = cli("claude-db", "import", name)
        assert_one_line_error(result, ExitCode.FAILED)
        assert f"import failed, nothing was applied: {error}" in result.stderr, result
        assert "stays applied" not in result.stderr
    assert _tables(cli) == ["open1", "open2"]


def test_restrict_lines_pass_an_older_psql(cli: Cli, workdir: Path) -> None:
    """pg_dump 17.6/16.10/15.14 and later wrap a dump in \\restrict KEY ... \\unrestrict KEY;
    the pgserver wheel's psql 16.2 refuses them: an export from one session must still import
    into a session on those binaries."""
    from claude_db_postgres.local import _wheel_bindirs

    bindirs = [d for d in _wheel_bindirs() if (d / "psql").exists()]
    assert bindirs, "pgserver (a dev dependency) is not installed"
    env = {"CLAUDE_DB_POSTGRES_BINDIR": str(bindirs[0])}
    version = subprocess.run([str(bindirs[0] / "psql"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert " 16.2" in version, version  # older than 16.10: the case to prove
    key = "AbCdEf0123456789aBcDeF0123456789aBcDeF0123456789aBcDeF012345678"
    dump = (
        f"--\n-- PostgreSQL database dump\n--\n\n\\restrict {key}\n\nSET client_encoding = "
        "'UTF8';\nCREATE TABLE \"public\".\"r\" (\"x\" integer);\nCOPY \"public\".\"r\" (\"x\") "
        f"FROM stdin;\n1\n2\n\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n"
        f"\\unrestrict {key}\n"
    )
    (workdir / "restricted.sql").write_text(dump)
    assert cli("claude-session", "start", "older", env=env).code == 0
    try:
        result = cli("claude-db", "import", "restricted.sql", env=env)
        assert result.code == 0, result
        counted = cli("claude-db", "query", "select count(*) from r", "--csv", env=env)
        assert counted.stdout.splitlines()[1] == "2", counted
    finally:
        cli("claude-session", "delete", "older", "--yes", env=env)


def test_statements_no_transaction_may_hold(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    assert cli("claude-db", "query", ROWS).code == 0
    (workdir / "concurrently.sql").write_text(
        "create table c(x int);\nCREATE INDEX CONCURRENTLY c_x ON c(x);\n"
        "create type mood as enum ('ok');\nalter type mood add value 'meh';\n"
        "create table m(v mood default 'meh');\nVACUUM t;\n"
    )
    result = cli("claude-db", "import", "concurrently.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "nothing was applied: line 2: CREATE INDEX CONCURRENTLY cannot run inside a " \
           "transaction block; import --no-transaction runs it" in result.stderr, result
    assert _tables(cli) == ["t"]
    result = cli("claude-db", "import", "--no-transaction", "concurrently.sql")
    assert result.code == 0, result
    assert "outside one transaction" in result.stderr, result
    assert _tables(cli) == ["c", "m", "t"]
    # a failure half way: the snapshot taken first is put back, all or nothing still
    (workdir / "half.sql").write_text(
        "create table h(x int);\nCREATE INDEX CONCURRENTLY h_x ON h(x);\ndelete from t;\n"
        "select 1/0;\n"
    )
    result = cli("claude-db", "import", "--no-transaction", "half.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert result.stderr.endswith("line 4: division by zero; the previous data is back\n")
    assert _tables(cli) == ["c", "m", "t"] and _count(cli) == "500"
    # undo brings back what was there before the successful one
    assert cli("claude-db", "undo", "--yes").code == 0
    assert _tables(cli) == ["t"]


def test_roles_the_session_lacks(cli: Cli, session: dict[str, str], workdir: Path) -> None:
    (workdir / "owned.sql").write_text(
        'CREATE TABLE "public"."o" ("x" integer);\n'
        'ALTER TABLE "public"."o" OWNER TO "app";\n'
        "COPY \"public\".\"o\" (\"x\") FROM stdin;\n1\n\\.\n"
        'REVOKE ALL ON TABLE "public"."o" FROM PUBLIC;\n'
        'GRANT SELECT ON TABLE "public"."o" TO "reader";\n'
        'ALTER DEFAULT PRIVILEGES FOR ROLE "app" GRANT SELECT ON TABLES  TO "reader";\n'
    )
    result = cli("claude-db", "import", "owned.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert 'line 2: role "app" does not exist; import --create-roles' in result.stderr, result
    assert "--skip-ownership" in result.stderr, result
    assert _tables(cli) == []
    result = cli("claude-db", "import", "--skip-ownership", "owned.sql")
    assert result.code == 0, result
    counted = cli("claude-db", "query", "select count(*) from o", "--csv")
    assert counted.stdout.splitlines()[1] == "1", counted


ROLES_DUMP = (
    'CREATE TABLE "public"."t" ("x" integer);\n'
    'ALTER TABLE "public"."t" OWNER TO app;\n'
    "COPY \"public\".\"t\" (\"x\") FROM stdin;\n1\n\\.\n"
    'GRANT SELECT ON t TO reader, "Odd ""One""";\n'
    "ALTER TABLE t ENABLE ROW LEVEL SECURITY;\n"
    "CREATE POLICY p ON t TO authenticated USING (true);\n"
)
ROLES = "app, reader, Odd \"One\", authenticated"


def _roles(cli: Cli) -> list[str]:
    """The roles that are neither built in nor the session's, and what they may do."""
    listed = cli(
        "claude-db", "query",
        "select rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolinherit "
        "from pg_roles where rolname in ('app', 'reader', 'Odd \"One\"', 'authenticated', "
        "'ghost')", "--csv",
    )
    assert listed.code == 0, listed
    return listed.stdout.splitlines()[1:]


def _created_as_nologin(cli: Cli) -> None:
    """ROLES_DUMP's roles exist, NOLOGIN with nothing else; its policy and row are there."""
    assert sorted(_roles(cli)) == sorted([
        "app,f,f,f,f,t", "reader,f,f,f,f,t", '"Odd ""One""",f,f,f,f,t', "authenticated,f,f,f,f,t",
    ])
    policy = cli("claude-db", "query",
                 "select policyname, array_to_string(roles, ' ') from pg_policies", "--csv")
    assert policy.stdout.splitlines()[1:] == ["p,authenticated"], policy
    assert _count(cli) == "1"


def test_create_roles_makes_the_roles_a_dump_names(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    (workdir / "roles.sql").write_text(ROLES_DUMP)
    result = cli("claude-db", "import", "roles.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert 'role "app" does not exist; import --create-roles' in result.stderr, result
    assert "--skip-ownership" in result.stderr, result
    for other in ("--replace", "--no-transaction"):  # the roles would outlive a failure
        result = cli("claude-db", "import", "--create-roles", other, "roles.sql")
        assert_one_line_error(result, ExitCode.USAGE)
    assert _tables(cli) == [] and _roles(cli) == []
    # a failed import drops again the roles it created (the transaction left nothing)
    (workdir / "fails.sql").write_text(
        "CREATE TABLE g (x int);\nALTER TABLE g OWNER TO ghost;\nSELECT 1/0;\n"
    )
    result = cli("claude-db", "import", "--create-roles", "fails.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "line 3: division by zero" in result.stderr, result
    assert _tables(cli) == [] and _roles(cli) == []
    result = cli("claude-db", "import", "--create-roles", "roles.sql")
    assert result.code == 0, result
    assert f"created roles (NOLOGIN): {ROLES}" in result.stderr, result
    _created_as_nologin(cli)
    owner = cli("claude-db", "query", "select tableowner from pg_tables where tablename='t'",
                "--csv")
    assert owner.stdout.splitlines()[1] == "app", owner
    # only the roles the server lacks are created
    (workdir / "more.sql").write_text(
        "CREATE TABLE u (x int);\nGRANT SELECT ON u TO reader, writer;\n"
    )
    result = cli("claude-db", "import", "--create-roles", "more.sql")
    assert result.code == 0 and "created roles (NOLOGIN): writer\n" in result.stderr, result
    # an archive's roles are found in pg_restore's SQL (on a new server, without them)
    assert cli("claude-db", "export", "--format", "custom", "roles.dump").code == 0
    assert cli("claude-session", "delete", "formats", "--yes").code == 0
    assert cli("claude-session", "start", "formats").code == 0
    result = cli("claude-db", "import", "roles.dump")
    assert_one_line_error(result, ExitCode.FAILED)
    result = cli("claude-db", "import", "--create-roles", "roles.dump")
    assert result.code == 0, result
    created = [line for line in result.stderr.splitlines() if "created roles" in line]
    # pg_dump --no-owner: app owns nothing there, but the table's privileges name it
    assert sorted(created[0].split(": ")[1].split(", ")) == [
        'Odd "One"', "app", "authenticated", "reader", "writer"
    ], result
    assert _count(cli) == "1" and len(_roles(cli)) == 4


def test_create_roles_again_after_a_reset(cli: Cli, session: dict[str, str], workdir: Path) -> None:
    """The roles outlive a reset (they are the server's), the new database's schema public
    grants them nothing: the second import failed with "permission denied for schema
    public" (first-time user)."""
    (workdir / "roles.sql").write_text(ROLES_DUMP)
    assert cli("claude-db", "import", "--create-roles", "roles.sql").code == 0
    assert cli("claude-db", "reset", "--yes").code == 0
    again = cli("claude-db", "import", "--create-roles", "roles.sql")
    assert again.code == 0 and "created roles" not in again.stderr, again
    assert _count(cli) == "1"
    # a failed import takes back the grant it gave (nothing of it stays applied)
    assert cli("claude-db", "reset", "--yes").code == 0
    (workdir / "fails.sql").write_text(ROLES_DUMP + "SELECT 1/0;\n")
    assert_one_line_error(cli("claude-db", "import", "--create-roles", "fails.sql"),
                          ExitCode.FAILED)
    may = cli("claude-db", "query", "select has_schema_privilege('app', 'public', 'CREATE')",
              "--csv")
    assert may.stdout.splitlines()[1] == "f", may


def test_export_format_custom_round_trips(
    cli: Cli, session: dict[str, str], workdir: Path
) -> None:
    assert cli("claude-db", "query", ROWS).code == 0
    result = cli("claude-db", "export", "--format", "custom", "backup.dump")
    assert result.code == 0, result
    assert (workdir / "backup.dump").read_bytes().startswith(b"PGDMP")
    assert cli("claude-db", "reset", "--yes").code == 0
    result = cli("claude-db", "import", "backup.dump")
    assert result.code == 0, result
    assert _count(cli) == "500"
    result = cli("claude-db", "export", "--format", "directory", "x")
    assert_one_line_error(result, ExitCode.USAGE)
    assert "plain, custom" in result.stderr, result


@pytest.mark.docker
def test_the_docker_runtime_imports_archives_and_tells_the_truth(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    """pg_restore and psql run in the database container: the same promises hold there."""
    name = new_name()
    assert cli("claude-session", "start", name).code == 0
    assert cli("claude-db", "query", ROWS).code == 0
    assert cli("claude-db", "export", "--format", "custom", "backup.dump").code == 0
    assert cli("claude-db", "export", "plain.sql").code == 0
    zstd = shutil.which("zstd")
    assert zstd, "the zstd program (a test dependency) is not installed"
    subprocess.run([zstd, "-q", "-o", str(workdir / "plain.zst"), str(workdir / "plain.sql")],
                   check=True)
    for dump in ("backup.dump", "plain.zst"):
        assert cli("claude-db", "reset", "--yes").code == 0
        result = cli("claude-db", "import", dump)
        assert result.code == 0, (dump, result)
        assert _count(cli) == "500", dump
    (workdir / "body.sql").write_text(
        "create procedure p() language plpgsql as $$\nbegin\nCOMMIT;\nend $$;\n"
        "create table b(x int);\n\\q\n"
    )
    result = cli("claude-db", "import", "body.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "nothing was applied: psql stopped before the end of the file" in result.stderr
    (workdir / "concurrently.sql").write_text("CREATE INDEX CONCURRENTLY t_v ON t(v);\n")
    result = cli("claude-db", "import", "--no-transaction", "concurrently.sql")
    assert result.code == 0, result
    assert _tables(cli) == ["t"]


@pytest.mark.docker
def test_the_docker_runtime_imports_a_directory_dump(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    """pg_restore runs in a tools container that mounts the dump directory."""
    assert cli("claude-session", "start", new_name()).code == 0
    assert cli("claude-db", "query", ROWS).code == 0
    (workdir / "dumps").mkdir()
    _pg_dump(read_env(workdir), "-Fd", "-f", str(workdir / "dumps" / "all.d"))
    assert list((workdir / "dumps" / "all.d").glob("*.dat.gz"))
    assert cli("claude-db", "reset", "--yes").code == 0
    result = cli("claude-db", "import", "--skip-ownership", "dumps/all.d")
    assert result.code == 0, result
    assert _count(cli) == "500"
    assert cli("claude-db", "query", "delete from t where id > 10").code == 0
    result = cli("claude-db", "import", "--replace", "--yes", str(workdir / "dumps" / "all.d"))
    assert result.code == 0, result
    assert _count(cli) == "500"
    assert cli("claude-db", "query",
               "create table r(id int references t, v text); insert into r values (1, 'x')"
               ).code == 0
    _pg_dump(read_env(workdir), "-Fd", "-t", "r", "-f", str(workdir / "r.d"))
    assert cli("claude-db", "reset", "--yes").code == 0
    result = cli("claude-db", "import", "r.d")
    assert_one_line_error(result, ExitCode.FAILED)
    assert 'relation "public.t" does not exist' in result.stderr, result
    assert _tables(cli) == []


@pytest.mark.parametrize("ending", ["", "\n"], ids=["no final newline", "final newline"])
def test_an_error_names_its_line_and_file(
    cli: Cli, session: dict[str, str], workdir: Path, ending: str
) -> None:
    """The line psql would name: a last statement without ``;`` fails on its own line (not
    on the one of the ``;`` claude-db adds); an error in an included file names that file."""
    (workdir / "last.sql").write_text("select 1;\nselec 2" + ending)
    failed = cli("claude-db", "import", "last.sql")
    assert_one_line_error(failed, ExitCode.FAILED)
    assert "line 2: syntax error" in failed.stderr, failed
    (workdir / "inc").mkdir(exist_ok=True)
    (workdir / "inc" / "child.sql").write_text("select 1;\nselect 2;\nselect 3;\nselec 4;\n")
    (workdir / "parent.sql").write_text("select 0;\n\\ir inc/child.sql\n")
    nested = cli("claude-db", "import", "parent.sql")
    assert_one_line_error(nested, ExitCode.FAILED)
    assert "line 4 of inc/child.sql: syntax error" in nested.stderr, nested


@pytest.mark.docker
def test_the_docker_runtime_creates_roles(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    """The container's superuser (the session's user) creates the roles."""
    assert cli("claude-session", "start", new_name()).code == 0
    (workdir / "roles.sql").write_text(ROLES_DUMP)
    result = cli("claude-db", "import", "roles.sql")
    assert_one_line_error(result, ExitCode.FAILED)
    assert "import --create-roles" in result.stderr and "--skip-ownership" in result.stderr
    result = cli("claude-db", "import", "--create-roles", "roles.sql")
    assert result.code == 0, result
    assert f"created roles (NOLOGIN): {ROLES}" in result.stderr, result
    _created_as_nologin(cli)
