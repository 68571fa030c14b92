"""The docker runtime's session lifecycle against a real Docker engine (issue 3's acceptance)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from claude_db.testing import BIN, Cli, assert_one_line_error, read_dotenv, run_on_terminal
from claude_db.testing.docker import (
    NOTHING,
    SESSION_IMAGE,
    docker,
    inspect,
    resources,
    session_workdir,
)
from claude_db.testing.safety import session_json

pytest_plugins = ["claude_db.testing.docker"]
pytestmark = pytest.mark.docker

USERS_PROGRAM = """\
import os
import psycopg

with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS users "
        "(id SERIAL PRIMARY KEY, name VARCHAR(100), email VARCHAR(100))"
    )
    conn.execute("INSERT INTO users (name, email) VALUES (%s, %s)", ("Alice", "alice@example.com"))
    rows = conn.execute("SELECT name, email FROM users").fetchall()
print(rows)
"""


def started(cli: Cli, name: str, *args: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> None:
    result = cli("claude-session", "start", name, *args, cwd=cwd, env=env)
    assert result.code == 0, result
    assert "docker runtime" in result.stdout, result


def test_full_workflow_inside_a_session_container(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    name = new_name()
    before = resources(name)
    assert before == NOTHING
    started(cli, name, "--image", SESSION_IMAGE)

    # the resources, named and labelled as documented; nothing published
    assert resources(name) == {"containers": sorted([name, f"{name}-db"]),
                               "networks": [f"{name}-net"], "volumes": [f"{name}-data"]}
    db = inspect(f"{name}-db")
    labels = db["Config"]["Labels"]
    assert labels["claude-db.session"] == name and labels["claude-db.engine"] == "postgres"
    assert labels["claude-db.role"] == "database"
    network = db["NetworkSettings"]["Networks"][f"{name}-net"]
    assert f"{name}-db" in network["Aliases"]
    assert not db["HostConfig"]["PortBindings"]  # the seed: not exposed to the host by default
    assert docker("port", f"{name}-db").stdout.strip() == ""
    mounts = {m["Destination"]: m for m in db["Mounts"]}
    assert mounts["/var/lib/postgresql/data"]["Name"] == f"{name}-data"

    # .env (written on the host, seen in the container) holds the in-network URL
    dotenv = read_dotenv(workdir)
    assert dotenv["CLAUDE_SESSION"] == name
    assert f"@{name}-db:5432/appdb" in dotenv["DATABASE_URL"]
    lines = docker("exec", name, "env").stdout.splitlines()
    inside_env = dict(line.split("=", 1) for line in lines if "=" in line)
    for key in ("DATABASE_URL", "DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME",
                "PGHOST", "PGPASSWORD", "CLAUDE_SESSION"):
        assert inside_env[key] == dotenv[key], key

    # the seed's Full Workflow, inside the session container
    status = docker("exec", name, "claude-db", "status")
    assert status.stdout.startswith("ready: postgres"), status
    assert f"{name}-db:5432" in status.stdout
    (workdir / "index.py").write_text(USERS_PROGRAM)
    run = docker("exec", name, "python3", "index.py")  # the work directory is mounted there
    assert run.stdout.strip() == "[('Alice', 'alice@example.com')]", run
    query = docker("exec", name, "claude-db", "query", "SELECT count(*) AS n FROM users", "--json")
    assert json.loads(query.stdout) == [{"n": 1}]
    info = docker("exec", name, "claude-db", "info", "--json")
    assert json.loads(info.stdout)["DB_HOST"] == f"{name}-db"
    # ...and the same data from the host
    assert cli("claude-db", "query", "SELECT name FROM users", "--csv").stdout == "name\nAlice\n"

    deleted = cli("claude-session", "delete", name, "--yes")
    assert deleted.code == 0, deleted
    assert resources(name) == NOTHING
    assert "DATABASE_URL" not in read_dotenv(workdir)


def test_killed_database_comes_back_with_its_data(
    cli: Cli, new_name: Callable[[], str]
) -> None:
    name = new_name()
    started(cli, name, "--image", SESSION_IMAGE)
    assert cli("claude-db", "query", "CREATE TABLE kept (v text); "
               "INSERT INTO kept VALUES ('survives')").code == 0
    session_container = inspect(name)["Id"]

    docker("kill", f"{name}-db")
    assert inspect(name)["State"]["Running"]  # the session kept running
    assert_one_line_error(cli("claude-db", "status"), 4)
    listed = json.loads(cli("claude-session", "list", "--json").stdout)
    assert [s["status"] for s in listed if s["name"] == name] == ["stopped"]

    attached = cli("claude-session", "attach", name, "--no-shell")
    assert attached.code == 0, attached
    assert cli("claude-db", "query", "SELECT v FROM kept", "--csv").stdout == "v\nsurvives\n"
    assert inspect(name)["Id"] == session_container
    assert docker("exec", name, "claude-db", "status").returncode == 0


def test_stop_keeps_data_and_attach_restarts_everything(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    name = new_name()
    started(cli, name, "--image", SESSION_IMAGE)
    assert cli("claude-db", "query", "CREATE TABLE t (v int); INSERT INTO t VALUES (7)").code == 0

    stopped = cli("claude-session", "stop", name)
    assert stopped.code == 0, stopped
    for container in (name, f"{name}-db"):
        assert inspect(container)["State"]["Status"] == "exited"
    assert_one_line_error(cli("claude-db", "query", "SELECT 1"), 4)

    attached = cli("claude-session", "attach", name, "--no-shell")
    assert attached.code == 0, attached
    for container in (name, f"{name}-db"):
        assert inspect(container)["State"]["Status"] == "running"
    assert cli("claude-db", "query", "SELECT v FROM t", "--csv").stdout == "v\n7\n"
    # attach opens its shell in the session container, in the work directory
    shell = cli("claude-session", "attach", name,
                input='echo "$PWD $(hostname) ${DATABASE_URL%%:*}"\n')
    assert shell.code == 0, shell
    assert shell.stdout.strip() == f"/workspace {name} postgresql"
    # ...and on a terminal, a terminal there
    code, shown = run_on_terminal(
        [str(BIN / "claude-session"), "attach", name], cwd=workdir, wait_for=b"/workspace",
        lines=('echo "tty:$(tty | cut -c1-8):$(hostname)"', "exit 3"),
    )
    assert code == 3 and f"tty:/dev/pts:{name}" in shown, shown


def test_sessions_cannot_reach_each_other(
    cli: Cli, new_name: Callable[[], str], tmp_path: Path
) -> None:
    a, b = new_name(), new_name()
    work_a, work_b = session_workdir(tmp_path, "a"), session_workdir(tmp_path, "b")
    started(cli, a, "--image", SESSION_IMAGE, cwd=work_a)
    started(cli, b, "--image", SESSION_IMAGE, cwd=work_b)
    env_a, env_b = read_dotenv(work_a), read_dotenv(work_b)
    assert env_a["DB_PASSWORD"] != env_b["DB_PASSWORD"]

    # from a's container, b's database has no name...
    assert docker("exec", a, "getent", "hosts", f"{b}-db", check=False).returncode != 0
    assert docker("exec", a, "getent", "hosts", f"{a}-db").returncode == 0
    # ...and its address does not answer
    b_ip = inspect(f"{b}-db")["NetworkSettings"]["Networks"][f"{b}-net"]["IPAddress"]
    probe = ("import socket, sys\n"
             "try:\n"
             f"    socket.create_connection(({b_ip!r}, 5432), timeout=3)\n"
             "except OSError as exc:\n"
             "    sys.exit(f'unreachable: {exc}')\n")
    reached = docker("exec", a, "python3", "-c", probe, check=False)
    assert reached.returncode != 0 and "unreachable" in reached.stderr, reached
    # a's credentials do not open b's database
    wrong = cli("claude-db", "status", env={"DATABASE_URL": env_b["DATABASE_URL"].replace(
        env_b["DB_PASSWORD"], env_a["DB_PASSWORD"]).replace(f"{b}-db", b_ip)}, cwd=tmp_path)
    assert wrong.code == 1 and "password authentication failed" in wrong.stderr, wrong  # refused


def test_publish_uses_a_stable_loopback_port(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    name = new_name()
    started(cli, name, "--publish")
    url = read_dotenv(workdir)["DATABASE_URL"]
    assert "@127.0.0.1:" in url
    port = int(read_dotenv(workdir)["DB_PORT"])
    assert docker("port", f"{name}-db").stdout.split() == ["5432/tcp", "->", f"127.0.0.1:{port}"]
    assert cli("claude-db", "query", "CREATE TABLE p (v int); INSERT INTO p VALUES (1)").code == 0

    for interrupt in (("claude-session", "stop", name), None):
        if interrupt:
            assert cli(*interrupt).code == 0
        else:
            docker("kill", f"{name}-db")
        assert cli("claude-session", "attach", name, "--no-shell").code == 0
        assert docker("port", f"{name}-db").stdout.split()[-1] == f"127.0.0.1:{port}"
        assert cli("claude-db", "query", "SELECT v FROM p", "--csv").stdout == "v\n1\n"
    # psql on the host through the URL .env holds: what --publish is for
    host_psql = cli("psql", url, "-XAtc", "SELECT count(*) FROM p")
    assert host_psql.stdout.strip() == "1", host_psql


def test_delete_keep_data_keeps_a_volume_no_session_owns(
    cli: Cli, new_name: Callable[[], str]
) -> None:
    name = new_name()
    started(cli, name)
    assert cli("claude-db", "query", "CREATE TABLE k (v int); INSERT INTO k VALUES (3)").code == 0
    deleted = cli("claude-session", "delete", name, "--yes", "--keep-data")
    assert deleted.code == 0, deleted
    assert resources(name) == NOTHING
    kept_label = f"label=claude-db.kept-from={name}"
    kept = docker("volume", "ls", "-q", "--filter", kept_label).stdout.split()
    assert len(kept) == 1 and kept[0] in deleted.stderr, deleted
    # the data is all there: a server started on the kept volume has the table
    files = docker("run", "--rm", "-v", f"{kept[0]}:/data:ro", "--entrypoint", "ls",
                   "claude-db-test/postgres:15", "/data").stdout.split()
    assert "PG_VERSION" in files and "base" in files
    # and the session's name is free again
    started(cli, name)
    assert cli("claude-session", "delete", name, "--yes").code == 0


def test_unpullable_image_is_one_clear_error(cli: Cli, new_name: Callable[[], str]) -> None:
    name = new_name()
    bogus = "claude-db-test/no-such-image:0"
    result = cli("claude-session", "start", name, env={"CLAUDE_DB_IMAGE": bogus})
    assert_one_line_error(result, 1)
    assert bogus in result.stderr and "cannot be pulled" in result.stderr
    assert resources(name) == NOTHING
    assert name not in cli("claude-session", "list").stdout


def test_database_that_exits_fails_fast_with_its_logs(
    cli: Cli, new_name: Callable[[], str]
) -> None:
    name = new_name()
    # an image without a server: the container exits at once
    result = cli("claude-session", "start", name,
                 env={"CLAUDE_DB_IMAGE": "claude-db-test/debian:bookworm",
                      "CLAUDE_DB_READY_TIMEOUT": "600"})
    assert_one_line_error(result, 4)
    assert f"container {name}-db exited with code" in result.stderr, result
    assert resources(name) == NOTHING


def test_names_docker_already_uses_are_refused_untouched(
    cli: Cli, new_name: Callable[[], str]
) -> None:
    name = new_name()
    docker("network", "create", "--label", f"claude-db.session={name}", f"{name}-net")
    result = cli("claude-session", "start", name)
    assert_one_line_error(result, 1)
    assert f"{name}-net" in result.stderr
    assert resources(name) == {**NOTHING, "networks": [f"{name}-net"]}  # someone else's: kept


def test_attach_recreates_a_removed_database_container(
    cli: Cli, new_name: Callable[[], str]
) -> None:
    name = new_name()
    started(cli, name)
    assert cli("claude-db", "query", "CREATE TABLE r (v int); INSERT INTO r VALUES (5)").code == 0
    docker("rm", "-f", f"{name}-db")
    listed = json.loads(cli("claude-session", "list", "--json").stdout)
    assert [s["status"] for s in listed if s["name"] == name] == ["stopped"]
    assert cli("claude-session", "attach", name, "--no-shell").code == 0
    assert cli("claude-db", "query", "SELECT v FROM r", "--csv").stdout == "v\n5\n"

    docker("rm", "-f", f"{name}-db")
    docker("volume", "rm", f"{name}-data")
    gone = cli("claude-session", "attach", name, "--no-shell")
    assert_one_line_error(gone, 4)
    assert "volume" in gone.stderr
    assert cli("claude-session", "delete", name, "--yes").code == 0
    assert resources(name) == NOTHING


def test_attach_brings_env_to_the_database_s_new_address(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    """A re-created network gets another subnet: .env must follow, or its URL reaches
    whatever has the old address now."""
    name = new_name()
    started(cli, name)
    old_url = read_dotenv(workdir)["DATABASE_URL"]
    docker("rm", "-f", f"{name}-db")
    docker("network", "rm", f"{name}-net")
    squatter = f"{name}-squat"  # takes the freed subnet: the session's network gets another
    docker("network", "create", squatter)
    try:
        attached = cli("claude-session", "attach", name, "--no-shell")
        assert attached.code == 0, attached
        shown = json.loads(cli("claude-session", "env", name, "-f", "json").stdout)
        new_url = read_dotenv(workdir)["DATABASE_URL"]
        assert new_url == shown["DATABASE_URL"] != old_url
        assert "updated DATABASE_URL, DB_HOST" in attached.stderr, attached
        with psycopg.connect(new_url, connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        again = cli("claude-session", "attach", name, "--no-shell")
        assert again.code == 0 and "updated" not in again.stderr, again  # nothing moved
    finally:
        docker("network", "rm", squatter)
    assert cli("claude-session", "delete", name, "--yes").code == 0
    assert resources(name) == NOTHING


def test_the_ping_names_the_api_version_the_client_then_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start asks the engine for its API version once (the ping), not again (GET /version)."""
    from claude_db.runtimes.docker import client as docker_client

    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    host = docker_client.docker_host()
    assert host is not None
    monkeypatch.setattr(docker_client, "_api_versions", {})
    docker_client._client_for.cache_clear()
    try:
        assert docker_client.ping() is None
        expected = docker("version", "--format", "{{.Server.APIVersion}}").stdout.strip()
        assert docker_client._api_versions == {host: expected}
        assert docker_client.client().api.api_version == expected
    finally:
        docker_client._client_for.cache_clear()


@pytest.mark.parametrize("break_it, reason", [
    ("ALTER USER postgres PASSWORD 'not-the-recorded-one'", "password authentication failed"),
    ("DROP DATABASE appdb WITH (FORCE)", 'database "appdb" does not exist'),
])
def test_readiness_fails_at_once_on_a_refusal_waiting_cannot_clear(
    cli: Cli, new_name: Callable[[], str], break_it: str, reason: str
) -> None:
    name = new_name()
    started(cli, name)
    assert cli("claude-db", "query", break_it, "--database", "postgres").code == 0
    # the whole timeout (10 minutes, longer than cli's own 180 s) was spent retrying before
    attached = cli("claude-session", "attach", name, "--no-shell",
                   env={"CLAUDE_DB_READY_TIMEOUT": "600"})
    assert_one_line_error(attached, 1)
    assert f"the postgres database of session {name!r} refused" in attached.stderr, attached
    assert reason in attached.stderr, attached


def test_an_explicit_session_image_without_databases_is_refused_not_ignored(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    """12.14: CLAUDE_DB_ENABLED=false used to start a session without the container --image
    asked for, and say nothing about it."""
    name = new_name()
    off = {"CLAUDE_DB_ENABLED": "false"}
    refused = cli("claude-session", "start", name, "--image", SESSION_IMAGE, env=off)
    assert_one_line_error(refused, 2)
    assert "--image" in refused.stderr and "CLAUDE_DB_ENABLED is false" in refused.stderr
    assert name not in cli("claude-session", "list").stdout
    assert resources(name) == NOTHING and not (workdir / ".env").exists()
    # from the environment (maybe set for every session): started, and it says so
    noted = cli("claude-session", "start", name, env={**off, "CLAUDE_SESSION_IMAGE": SESSION_IMAGE})
    assert noted.code == 0, noted
    assert "no container (CLAUDE_SESSION_IMAGE ignored)" in noted.stderr, noted
    assert resources(name) == NOTHING


@pytest.mark.parametrize("again", [["--keep-data"], []], ids=["keep-again", "plain-delete"])
def test_delete_keep_data_killed_mid_copy_leaves_nothing_unrecorded(
    cli: Cli, new_name: Callable[[], str], state: Path, again: list[str]
) -> None:
    """``delete --keep-data`` killed while it copies: the session stays, and the next
    ``delete`` finds the kept volume on record: with ``--keep-data`` it copies again into
    it (one kept volume, complete), without it the half copy goes."""
    name = new_name()
    started(cli, name)
    assert cli("claude-db", "query", "CREATE TABLE k (v int); INSERT INTO k VALUES (3)").code == 0
    killed = cli("claude-session", "delete", name, "--yes", "--keep-data",
                 env={"CLAUDE_DB_TEST_KILL_AT": "keep-copy-started"})
    assert killed.code == -signal.SIGKILL, killed
    kept_label = f"label=claude-db.kept-from={name}"
    [half] = docker("volume", "ls", "-q", "--filter", kept_label).stdout.split()
    assert session_json(state, name)["runtime_state"]["kept_volume"] == half  # on record

    deleted = cli("claude-session", "delete", name, "--yes", *again)
    assert deleted.code == 0, deleted
    assert resources(name) == NOTHING  # the copier container too
    kept = docker("volume", "ls", "-q", "--filter", kept_label).stdout.split()
    if not again:
        assert kept == [], kept
        return
    assert kept == [half] and half in deleted.stderr, (kept, deleted)
    files = docker("run", "--rm", "-v", f"{half}:/data:ro", "--entrypoint", "ls",
                   "claude-db-test/postgres:15", "/data").stdout.split()
    assert "PG_VERSION" in files and "base" in files
    docker("volume", "rm", half)
