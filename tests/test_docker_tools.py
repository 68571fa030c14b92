"""claude-db's commands on docker sessions: psql, export and import run inside the containers."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Cli, assert_one_line_error
from docker_support import SESSION_IMAGE, docker

pytest_plugins = ["docker_fixtures"]
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


def test_psql_runs_inside_the_database_container(
    cli: Cli, new_name: Callable[[], str]
) -> None:
    name = new_name()
    start(cli, name)
    # the server sees the client on its own loopback: psql ran in the database container
    result = cli("claude-db", "psql", "-XAt", "-c", "SELECT inet_client_addr(), current_database()")
    assert result.code == 0, result
    assert result.stdout == "127.0.0.1|appdb\n"  # no TTY on piped streams: no \r
    # extra arguments reach psql; its exit status comes back
    failed = cli("claude-db", "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "SELECT nosuchcolumn")
    assert failed.code != 0 and "nosuchcolumn" in failed.stderr, failed
    # psql reads the piped stdin
    piped = cli("claude-db", "shell", "-XAt", input="SELECT 40 + 2;\n")
    assert piped.stdout == "42\n", piped


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
