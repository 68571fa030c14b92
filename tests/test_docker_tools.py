"""claude-db's commands on docker sessions: psql and import see the user's files; export and
the rest run inside the containers."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_db.testing import Cli, assert_one_line_error
from claude_db.testing.docker import SESSION_IMAGE, docker

pytest_plugins = ["claude_db.testing.docker"]
pytestmark = pytest.mark.docker

SEED = """\
CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, note text);
INSERT INTO users (name, note) VALUES ('Alice', 'semi;colon'), ('Bob', E'two\\nlines'),
    ('Zoë', NULL);
"""


def start(cli: Cli, name: str, *args: str) -> None:
    result = cli("claude-session", "start", name, *args)
    assert result.code == 0 and "docker runtime" in result.stdout, result


def comparable(dump: str) -> list[str]:
    """A dump without pg_dump's per-run random \\restrict key."""
    keys = ("\\restrict", "\\unrestrict")
    return [line for line in dump.splitlines() if not line.startswith(keys)]


def users(cli: Cli) -> str:
    result = cli("claude-db", "query", "SELECT name, note FROM users ORDER BY id", "--json")
    assert result.code == 0, result
    return result.stdout


def test_psql_runs_beside_the_database_with_the_user_s_files(
    cli: Cli, new_name: Callable[[], str], workdir: Path, tmp_path: Path
) -> None:
    """12.13: files psql is told to read or write are the user's, not the container's."""
    name = new_name()
    start(cli, name)
    # a tools container on the session's network, not the database container itself
    result = cli("claude-db", "psql", "-XAt", "-c",
                 "SELECT inet_client_addr() <> inet_server_addr(), current_database()")
    assert result.code == 0, result
    assert result.stdout == "t|appdb\n"  # no TTY on piped streams: no \r
    # extra arguments reach psql; its exit status comes back
    failed = cli("claude-db", "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "SELECT nosuchcolumn")
    assert failed.code != 0 and "nosuchcolumn" in failed.stderr, failed
    # psql reads the piped stdin
    piped = cli("claude-db", "shell", "-XAt", input="SELECT 40 + 2;\n")
    assert piped.stdout == "42\n", piped

    (workdir / "q.sql").write_text("SELECT 'from q.sql';\n")
    assert cli("claude-db", "psql", "-XAt", "-f", "q.sql").stdout == "from q.sql\n"
    elsewhere = tmp_path / "elsewhere"  # outside the current directory, named by the user
    elsewhere.mkdir()
    (elsewhere / "q.sql").write_text("SELECT 'from elsewhere';\n")
    named = cli("claude-db", "psql", "-XAt", "-f", str(elsewhere / "q.sql"))
    assert named.stdout == "from elsewhere\n", named
    copied = cli("claude-db", "psql", "-X", "-c",
                 "\\copy (SELECT 1 AS a, 'x' AS b) TO 'out.csv' CSV HEADER")
    assert copied.code == 0, copied
    assert (workdir / "out.csv").read_text() == "a,b\n1,x\n"
    (workdir / "in.csv").write_text("7\n8\n")
    loaded = cli("claude-db", "psql", "-X", "-c", "CREATE TABLE n (v int)", "-c",
                 "\\copy n FROM 'in.csv' CSV")
    assert loaded.code == 0 and "COPY 2" in loaded.stdout, loaded
    written = cli("claude-db", "psql", "-XAt", "-o", "result.txt", "-c", "SELECT sum(v) FROM n")
    assert written.code == 0 and (workdir / "result.txt").read_text() == "15\n", written
    # a directory mounted at its own path must not hide the image's programs
    for where, argv in ((workdir, ("-f", "/etc/hostname")), (Path("/"), ("-c", "SELECT 1"))):
        refused = cli("claude-db", "psql", "--session", name, *argv, cwd=where)
        assert_one_line_error(refused, 2)
        assert "where it would hide the image's" in refused.stderr, refused


def test_export_reset_import_round_trip(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    name = new_name()
    start(cli, name)
    assert cli("claude-db", "import", "-", input=SEED).code == 0
    before = users(cli)
    assert json.loads(before)[2] == {"name": "Zoë", "note": None}

    exported = cli("claude-db", "export", "backup.sql")
    assert exported.code == 0, exported
    dump = (workdir / "backup.sql").read_text()
    assert 'CREATE TABLE "public"."users"' in dump
    assert cli("claude-db", "export", "backup.sql.gz").code == 0
    zipped = gzip.decompress((workdir / "backup.sql.gz").read_bytes()).decode()
    assert comparable(zipped) == comparable(dump)
    assert comparable(cli("claude-db", "export", "-").stdout) == comparable(dump)

    reset = cli("claude-db", "reset", "--yes")
    assert reset.code == 0, reset
    gone = cli("claude-db", "query", "SELECT count(*) FROM users")
    assert gone.code == 1 and "does not exist" in gone.stderr, gone

    imported = cli("claude-db", "import", "backup.sql.gz")
    assert imported.code == 0, imported
    assert users(cli) == before


@pytest.mark.parametrize(("header", "trailer"), [
    ("", ""),
    ("\\restrict k3y\n", "\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict k3y\n"),
])
def test_a_dump_that_ends_in_copy_data_imports(
    cli: Cli, new_name: Callable[[], str], header: str, trailer: str
) -> None:
    """A dump whose last table has no index ends with COPY data: the image's psql (15.20)
    stops reading silently at an empty statement right after COPY, so an import (and every
    docker fork, which is an export into an import) failed (found by a first-time user)."""
    start(cli, new_name())
    dump = header + "CREATE TABLE q2 (x int);\nCOPY q2 (x) FROM stdin;\n1\n2\n\\.\n" + trailer
    imported = cli("claude-db", "import", "-", input=dump)
    assert imported.code == 0, imported
    counted = cli("claude-db", "query", "SELECT count(*) AS n FROM q2", "--json")
    assert json.loads(counted.stdout) == [{"n": 2}], counted


def test_failed_import_applies_nothing(cli: Cli, new_name: Callable[[], str]) -> None:
    name = new_name()
    start(cli, name)
    script = "CREATE TABLE half (v int);\nINSERT INTO half VALUES (1);\nSELEC broken;\n"
    result = cli("claude-db", "import", "-", input=script)
    assert_one_line_error(result, 1)
    assert "nothing was applied" in result.stderr and "line 3" in result.stderr, result
    missing = cli("claude-db", "query", "SELECT * FROM half")
    assert missing.code == 1 and "does not exist" in missing.stderr


def test_inside_a_session_container_with_only_database_url(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    name = new_name()
    start(cli, name, "--image", SESSION_IMAGE)
    # no Docker in there: everything goes through DATABASE_URL
    assert docker("exec", name, "test", "-e", "/var/run/docker.sock", check=False).returncode != 0
    (workdir / "schema.sql").write_text(SEED)
    imported = docker("exec", name, "claude-db", "import", "schema.sql")
    assert "imported schema.sql" in imported.stderr, imported
    query = docker("exec", name, "claude-db", "query", "SELECT count(*) AS n FROM users", "--json")
    assert json.loads(query.stdout) == [{"n": 3}]
    docker("exec", name, "claude-db", "export", "out.sql")
    assert 'CREATE TABLE "public"."users"' in (workdir / "out.sql").read_text()
    psql = docker("exec", name, "claude-db", "psql", "-XAtc", "SELECT count(*) FROM users")
    assert psql.stdout == "3\n"

    # without the client tools: one clear line, not a traceback
    bare = ["exec", "-e", "PATH=/opt/claude-db/bin", name, "claude-db"]
    for command, tool in ((["export", "-"], "pg_dump"), (["psql", "-c", "SELECT 1"], "psql")):
        result = docker(*bare, *command, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result
        assert lines[0].startswith(f"error: {tool} is not installed here"), result
    # ...while the driver-based commands still work
    status = docker(*bare, "status")
    assert status.stdout.startswith("ready: postgres"), status


INCLUDING = {
    "main.sql": "CREATE TABLE t (v int);\n\\ir parts/one.sql\n\\i parts/two.sql\n"
                "\\copy t FROM 'data/rows.csv' CSV\n",
    "parts/one.sql": "INSERT INTO t VALUES (1);\n\\ir three.sql\n",  # \ir: beside one.sql
    "parts/three.sql": "INSERT INTO t VALUES (3);\n",
    "parts/two.sql": "INSERT INTO t VALUES (2);\n",
    "data/rows.csv": "4\n5\n",
}


@pytest.mark.parametrize("runtime", ["docker", "local"])
def test_an_imported_script_finds_the_files_beside_it(
    cli: Cli, new_name: Callable[[], str], workdir: Path, runtime: str
) -> None:
    """14.13: \\i, \\ir and \\copy FROM in an imported file resolve beside the file, on every
    runtime, whether the file is in the current directory or elsewhere."""
    name = new_name()
    start_result = cli("claude-session", "start", name, "--runtime", runtime)
    assert start_result.code == 0, start_result
    scripts = workdir / "db"
    for relative, text in INCLUDING.items():
        (scripts / relative).parent.mkdir(parents=True, exist_ok=True)
        (scripts / relative).write_text(text)
    imported = cli("claude-db", "import", "db/main.sql")
    assert imported.code == 0, imported
    rows = cli("claude-db", "query", "SELECT string_agg(v::text, '-' ORDER BY v) AS v FROM t",
               "--csv")
    assert rows.stdout == "v\n1-2-3-4-5\n", rows
    # from another directory, by absolute path: the same
    other = workdir / "elsewhere"
    other.mkdir()
    assert cli("claude-db", "query", "DROP TABLE t").code == 0
    again = cli("claude-db", "import", str(scripts / "main.sql"), cwd=other,
                env={"CLAUDE_SESSION": name})
    assert again.code == 0, again
    assert cli("claude-db", "query", "SELECT count(*) AS n FROM t", "--csv").stdout == "n\n5\n"
    # a missing include fails the import and applies nothing
    (scripts / "broken.sql").write_text("CREATE TABLE b (v int);\n\\ir nowhere.sql\n")
    broken = cli("claude-db", "import", "db/broken.sql")
    assert_one_line_error(broken, 1)
    assert "nowhere.sql" in broken.stderr and "nothing was applied" in broken.stderr, broken
    assert cli("claude-db", "query", "SELECT * FROM b").code == 1
