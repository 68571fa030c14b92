"""Security of the local runtime: what one session's DATABASE_URL can reach (its own
database only), what its server inherits from us (nothing), a port another program took
while the session was stopped, and the binaries a session's data needs."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.testing import Cli, assert_one_line_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: servers of other users")

#: what a server may inherit from us (claude_db.runtimes.local.runtime.server_env)
SERVER_VARIABLES = {"PATH", "LANG", "LC_ALL", "TZ"}


def _runtime_state(name: str) -> dict[str, Any]:
    root = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    data = json.loads((root / "sessions" / name / "session.json").read_text())
    state: dict[str, Any] = data["runtime_state"]
    return state


@contextlib.contextmanager
def _session(cli: Cli, name: str, workdir: Path, *options: str,
             env: dict[str, str] | None = None) -> Iterator[str]:
    """A started session; yields its DATABASE_URL. Deleted afterwards, even on failure."""
    workdir.mkdir(exist_ok=True)
    try:
        result = cli("claude-session", "start", name, *options, cwd=workdir, env=env)
        assert result.code == 0, result
        yield read_env(workdir)["DATABASE_URL"]
    finally:
        cli("claude-session", "delete", name, "--yes", cwd=workdir)


def _refused(url: str, statement: str) -> str:
    """Run ``statement`` as the URL's role; it must fail. Returns the server's message."""
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.Error) as failure:
        conn.execute(statement)
    return str(failure.value)


def test_a_sessions_url_reaches_nothing_outside_its_database(cli: Cli, tmp_path: Path) -> None:
    """Before, the URL's role was the server's superuser: every statement below worked."""
    with _session(cli, "iso-a", tmp_path / "a") as url_a, \
            _session(cli, "iso-b", tmp_path / "b") as url_b:
        b_data = _runtime_state("iso-b")["datadir"]
        marker = Path("/tmp") / f"claude-db-pwned-{secrets.token_hex(4)}"
        with psycopg.connect(url_a, autocommit=True) as conn:
            row = conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                "WHERE rolname = current_user"
            ).fetchone()
            assert row == (False, False, True)
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba) = current_user FROM pg_database "
                "WHERE datname = current_database()"
            ).fetchone()
            assert owner == (True,)  # it owns its database: tables, reset, snapshots

        # no program runs on the host
        assert "pg_execute_server_program" in _refused(
            url_a, f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'"
        )
        assert not marker.exists()
        # no file outside its database is read or written: not B's, not the server's own
        for statement in (
            f"SELECT pg_read_file('{b_data}/PG_VERSION')",
            f"SELECT pg_read_binary_file('{b_data}/global/pg_control')",
            "SELECT pg_read_file('/proc/self/environ')",
            f"SELECT pg_ls_dir('{b_data}')",
            "SELECT lo_import('/etc/passwd')",
            f"COPY (SELECT 1) TO '{marker}'",
            "CREATE TEMP TABLE t (line text); COPY t FROM '/etc/passwd'",
        ):
            message = _refused(url_a, statement)
            assert "permission denied" in message or "must be superuser" in message, statement
        assert not marker.exists()
        # no other server is reachable: dblink and untrusted languages need a superuser
        assert "permission denied to create extension" in _refused(
            url_a, "CREATE EXTENSION dblink"
        )
        assert "permission denied" in _refused(
            url_a, "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'libc', 'getpid'"
        )
        # and it cannot make itself more than it is
        for statement in (
            "ALTER ROLE current_user SUPERUSER",
            "ALTER ROLE current_user CREATEROLE",
            "GRANT pg_execute_server_program TO current_user",
            "ALTER ROLE claude_admin PASSWORD 'mine'",
            "ALTER SYSTEM SET listen_addresses = '*'",
        ):
            _refused(url_a, statement)

        # B's server does not take A's password, nor the admin role from outside
        b_port = _runtime_state("iso-b")["port"]
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url_a.replace(f":{_runtime_state('iso-a')['port']}/",
                                          f":{b_port}/"), connect_timeout=120)
        with pytest.raises(psycopg.OperationalError, match="rejects connection"):
            psycopg.connect(host="127.0.0.1", port=b_port, user="claude_admin",
                            dbname="postgres", connect_timeout=120)
        # B itself is untouched and its own URL works
        with psycopg.connect(url_b) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_servers_start_with_a_minimal_environment(cli: Cli, tmp_path: Path) -> None:
    """Before, a server inherited all of the CLI's environment (tokens, passwords)."""
    secret = {"CLAUDE_DB_TEST_SECRET": "s3cret-" + secrets.token_hex(4), "AWS_TOKEN": "t0k"}
    with _session(cli, "iso-env", tmp_path / "w", env=secret):
        for attempt in ("start", "attach"):
            pid = _runtime_state("iso-env")["pid"]
            entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            names = {entry.split(b"=", 1)[0].decode() for entry in entries if entry}
            assert names <= SERVER_VARIABLES, (attempt, names)
            assert b"s3cret-" not in b"".join(entries)
            if attempt == "start":
                assert cli("claude-session", "stop", "iso-env", cwd=tmp_path / "w").code == 0
                again = cli("claude-session", "attach", "iso-env", "--no-shell",
                            cwd=tmp_path / "w", env=secret)
                assert again.code == 0, again


def test_templates_cannot_be_changed_from_a_session(cli: Cli, tmp_path: Path) -> None:
    """Before, the template belonged to the servers' OS user: a superuser session rewrote its
    pg_hba.conf (COPY ... TO) and every later session let anyone in without a password."""
    with _session(cli, "iso-su", tmp_path / "su", "--superuser") as url:
        state = _runtime_state("iso-su")
        assert state["superuser"] is True
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                                ).fetchone() == (True,)
            # the deliberate opt-in really is a superuser: programs run (as the server's user)
            marker = Path("/tmp") / f"claude-db-superuser-{secrets.token_hex(4)}"
            try:
                conn.execute(f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'")
                assert marker.exists()
            finally:
                marker.unlink(missing_ok=True)
        root = Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "templates"
        templates = [t for t in root.iterdir() if t.name.startswith("postgres-") and t.is_dir()]
        assert templates
        for template in templates:
            info = template.stat()
            assert (info.st_uid, info.st_mode & 0o777) == (0, 0o700), template
            message = _refused(
                url, f"COPY (SELECT 'host all all 127.0.0.1/32 trust') TO '{template}/pg_hba.conf'"
            )
            assert "Permission denied" in message, message
            # nor by the server's OS user at all, whatever runs as it
            probe = subprocess.run(
                ["runuser", "-u", state["run_as"], "--", "test", "-w", str(template)]
            )
            assert probe.returncode != 0, template
    # the session's copy is its own: the server's user owns it
    with _session(cli, "iso-own", tmp_path / "own"):
        datadir = Path(_runtime_state("iso-own")["datadir"])
        assert datadir.stat().st_uid != 0
        rules = [line.split() for line in (datadir / "pg_hba.conf").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        assert [rule for rule in rules if "trust" in rule] == [
            ["local", "all", "claude_admin", "trust"]  # through the 0700 socket directory only
        ]


def test_superuser_from_the_environment(cli: Cli, tmp_path: Path) -> None:
    opt_in = {"CLAUDE_DB_SUPERUSER": "true"}
    with _session(cli, "iso-su-env", tmp_path / "w", env=opt_in) as url, \
            psycopg.connect(url) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert row.fetchone() == (True,)


def test_a_port_taken_while_stopped_moves_the_session(cli: Cli, tmp_path: Path) -> None:
    """Before, attach failed for good, and a squatter could wait for our clients' passwords."""
    workdir = tmp_path / "w"
    with _session(cli, "iso-port", workdir):
        assert cli("claude-db", "query", "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)",
                   cwd=workdir).code == 0
        old_port = _runtime_state("iso-port")["port"]
        assert cli("claude-session", "stop", "iso-port", cwd=workdir).code == 0
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            squatter.bind(("127.0.0.1", old_port))
            squatter.listen()
            # a stopped session's commands say so, without knocking at its old port
            stopped = cli("claude-db", "query", "SELECT 1", cwd=workdir)
            assert_one_line_error(stopped, ExitCode.NOT_RUNNING)
            attach = cli("claude-session", "attach", "iso-port", "--no-shell", cwd=workdir)
            assert attach.code == 0, attach
            assert "updated DATABASE_URL" in attach.stderr, attach
            new_port = _runtime_state("iso-port")["port"]
            assert new_port != old_port
            env = read_env(workdir)
            assert f"127.0.0.1:{new_port}/" in env["DATABASE_URL"]
            assert env["DB_PORT"] == str(new_port)
            query = cli("claude-db", "query", "SELECT x FROM kept", "--csv", cwd=workdir)
            assert query.stdout == "x\n7\n", query
            # nothing of ours ever knocked at the squatter's door
            squatter.setblocking(False)
            with pytest.raises(BlockingIOError):
                squatter.accept()


def _copy_of_wheel_binaries(tmp_path: Path) -> Path:
    """A private copy of the pgserver wheel's PostgreSQL 16: its ``pginstall`` (bin, lib,
    share: relocatable) and the libraries its rpath finds at ``../../../pgserver.libs``."""
    from claude_db_postgres.local import _wheel_bindirs

    bindirs = [d for d in _wheel_bindirs() if (d / "postgres").exists()]
    assert bindirs, "pgserver (a dev dependency) is not installed"
    pginstall = bindirs[0].parent
    root = tmp_path / "wheel"
    copy = root / "pgserver" / "pginstall"
    shutil.copytree(pginstall, copy, symlinks=True)
    shutil.copytree(pginstall.parent.parent / "pgserver.libs", root / "pgserver.libs")
    for part in (copy, *copy.parents):  # the server's user must reach it
        if str(part).startswith("/tmp/") and part.stat().st_uid == os.geteuid():
            os.chmod(part, part.stat().st_mode | 0o111)
    return copy / "bin"


def test_a_session_keeps_the_binaries_it_was_created_with(cli: Cli, tmp_path: Path) -> None:
    """Before, a start took whichever binaries were found now: another major version
    refused the data ("database files are incompatible")."""
    debian = Path("/usr/lib/postgresql/15/bin")
    if not (debian / "postgres").exists():
        pytest.skip("needs Debian's PostgreSQL 15 besides the wheel's 16")
    pg16 = _copy_of_wheel_binaries(tmp_path)
    workdir = tmp_path / "w"
    with _session(cli, "iso-bin", workdir, env={"CLAUDE_DB_POSTGRES_BINDIR": str(pg16)}):
        assert _runtime_state("iso-bin")["bindir"] == str(pg16)
        assert cli("claude-session", "stop", "iso-bin", cwd=workdir).code == 0
        # other binaries are what the host offers now: the session keeps its own
        newer = {"CLAUDE_DB_POSTGRES_BINDIR": str(debian)}
        attach = cli("claude-session", "attach", "iso-bin", "--no-shell", cwd=workdir, env=newer)
        assert attach.code == 0, attach
        pid = _runtime_state("iso-bin")["pid"]
        assert os.readlink(f"/proc/{pid}/exe") == str(pg16 / "postgres")
        status = cli("claude-db", "status", cwd=workdir, env=newer)
        assert status.stdout.startswith("ready: postgres 16"), status
        assert cli("claude-session", "stop", "iso-bin", cwd=workdir).code == 0

        shutil.rmtree(pg16.parent.parent.parent)  # those binaries are gone now
        result = cli("claude-session", "attach", "iso-bin", "--no-shell", cwd=workdir, env=newer)
        assert_one_line_error(result, ExitCode.NOT_RUNNING)
        assert f"{pg16}/postgres is gone" in result.stderr, result
        assert "postgres 16" in result.stderr and "install" in result.stderr, result
        listed = json.loads(cli("claude-session", "list", "--json", cwd=workdir).stdout)
        assert [s["status"] for s in listed if s["name"] == "iso-bin"] == ["stopped"]


def test_a_mariadb_sessions_sql_reaches_no_file_outside_its_server(
    cli: Cli, tmp_path: Path
) -> None:
    """Before, LOAD_FILE() and INTO OUTFILE reached every file the server's user may."""
    if shutil.which("mariadbd") is None:
        pytest.skip("needs Debian's mariadbd (apt-get install mariadb-server)")
    workdir = tmp_path / "w"
    marker = Path("/tmp") / f"claude-db-outfile-{secrets.token_hex(4)}"
    secret = {"CLAUDE_DB_TEST_SECRET": "s3cret-maria"}
    with _session(cli, "iso-maria", workdir, "--db", "mysql", env=secret):
        read = cli("claude-db", "query", "SELECT LOAD_FILE('/etc/passwd') IS NULL AS hidden",
                   "--csv", cwd=workdir)
        assert read.stdout == "hidden\n1\n", read
        written = cli("claude-db", "query", f"SELECT 1 INTO OUTFILE '{marker}'", cwd=workdir)
        assert_one_line_error(written, ExitCode.FAILED)
        assert "secure-file-priv" in written.stderr, written
        assert not marker.exists()
        # its temporary files (temporary tables, sorts) are not in the shared /tmp either
        tmpdir = cli("claude-db", "query", "SELECT @@tmpdir AS t", "--csv", cwd=workdir)
        assert tmpdir.stdout == f"t\n{_runtime_state('iso-maria')['socket_dir']}\n", tmpdir
        pid = _runtime_state("iso-maria")["pid"]
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"s3cret-maria" not in environ


def test_the_admin_roles_name_is_not_a_session_user(cli: Cli, state: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    workdir.mkdir()
    result = cli("claude-session", "start", "iso-admin", cwd=workdir,
                 env={"CLAUDE_DB_USER": "claude_admin"})
    assert_one_line_error(result, ExitCode.USAGE)
    assert "CLAUDE_DB_USER" in result.stderr
    assert json.loads(cli("claude-session", "list", "--json").stdout) == []
    assert not (workdir / ".env").exists()


def _autovacuum_workers(server_pid: int) -> list[int]:
    """The session server's autovacuum workers (its children named so)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        if int(parent) == server_pid and command.startswith(b"postgres: autovacuum worker"):
            found.append(int(entry.name))
    return found


def test_snapshots_and_reset_work_while_autovacuum_runs(cli: Cli, tmp_path: Path) -> None:
    """The owner may not end autovacuum workers (they have no role): ending "every other
    backend" before a snapshot failed with "must be a superuser to terminate superuser
    process" while one ran; CREATE DATABASE and DROP DATABASE end them by themselves."""
    from claude_db.testing.safety import wait_for

    workdir = tmp_path / "w"
    with _session(cli, "iso-vacuum", workdir):
        conf = Path(_runtime_state("iso-vacuum")["datadir"]) / "postgresql.conf"
        with open(conf, "a") as out:
            out.write("autovacuum_naptime = 1\n")  # a worker comes within a second or so
        assert cli("claude-session", "stop", "iso-vacuum", cwd=workdir).code == 0
        assert cli("claude-session", "attach", "iso-vacuum", "--no-shell", cwd=workdir).code == 0
        slow = ("autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1, "
                "autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0")
        made = cli("claude-db", "query",
                   f"CREATE TABLE t (x int) WITH ({slow}); "
                   "INSERT INTO t SELECT generate_series(1, 100000); DELETE FROM t WHERE x % 2 = 0",
                   cwd=workdir)
        assert made.code == 0, made
        server = _runtime_state("iso-vacuum")["pid"]
        wait_for("an autovacuum worker", lambda: _autovacuum_workers(server))
        saved = cli("claude-db", "snapshot", "save", "during-vacuum", cwd=workdir)
        assert saved.code == 0, saved
        reset = cli("claude-db", "reset", "--yes", cwd=workdir)
        assert reset.code == 0, reset
        restored = cli("claude-db", "snapshot", "restore", "during-vacuum", "--yes", cwd=workdir)
        assert restored.code == 0, restored
        counted = cli("claude-db", "query", "SELECT count(*) AS n FROM t", "--csv", cwd=workdir)
        assert counted.stdout == "n\n50000\n", counted
        # without snapshots reset drops the database itself: as the owner may, too
        deleted = cli("claude-db", "query", "DELETE FROM t WHERE x % 5 = 1", cwd=workdir)
        assert deleted.code == 0, deleted
        named = cli("claude-db", "query", "SELECT current_database()", "--csv", cwd=workdir)
        title = f"postgres: autovacuum worker {named.stdout.splitlines()[1]}\0".encode()

        def vacuuming() -> bool:  # a worker in the very database reset drops
            with contextlib.suppress(OSError):
                return any(Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title)
                           for pid in _autovacuum_workers(server))
            return False

        wait_for("an autovacuum worker in the database", vacuuming)
        plain = cli("claude-db", "reset", "--yes", cwd=workdir,
                    env={"CLAUDE_DB_AUTO_SNAPSHOTS": "0"})
        assert plain.code == 0, plain
        gone = cli("claude-db", "query", "SELECT count(*) FROM pg_class WHERE relname = 't'",
                   "--csv", cwd=workdir)
        assert gone.stdout.splitlines()[1:] == ["0"], gone
