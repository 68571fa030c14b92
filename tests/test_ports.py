"""Loopback ports of local sessions: a stopped session's port stays its own (finding 10),
and a session that comes back on another port gets a new password (finding 8)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
import pytest

from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.faults import KILL_AT
from claude_db.testing import Cli, CliResult, assert_one_line_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root: network namespaces, a second user")

BIN = Path(sys.executable).parent


def _port(state: Path, name: str) -> int:
    port: int = json.loads((state / "sessions" / name / "session.json").read_text())[
        "runtime_state"]["port"]
    return port


@contextlib.contextmanager
def _two_port_namespace() -> Iterator[tuple[str, set[int]]]:
    """A network namespace of its own (nothing else listens there) whose kernel hands out
    only two ports for bind(0): yields its name and the two. Closed connections keep no
    port there (no TIME_WAIT): else a client's port blocks a bind(0) for a minute."""
    name = f"cdb-ports-{secrets.token_hex(4)}"
    low = 40000 + 2 * secrets.randbelow(10000)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for setting in ("ip link set lo up", "sysctl -qw net.ipv4.tcp_max_tw_buckets=0",
                        f"sysctl -qw net.ipv4.ip_local_port_range={low}\t{low + 1}"):
            subprocess.run(["ip", "netns", "exec", name, *setting.split(" ")], check=True)
        yield name, {low, low + 1}
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def _age_claims(state: Path) -> None:
    """As if the 5 minutes a claim is held had passed."""
    registry = state / "ports.json"
    claims = json.loads(registry.read_text())
    registry.write_text(json.dumps({port: {**claim, "at": 0} if isinstance(claim, dict) else 0
                                    for port, claim in claims.items()}))


@contextlib.contextmanager
def _cli_in_two_port_namespace(cli: Cli) -> Iterator[tuple[Callable[..., CliResult], set[int]]]:
    """Yields a ``cli`` that runs in :func:`_two_port_namespace`, and its two ports."""
    with _two_port_namespace() as (namespace, ports):

        def run(*argv: str, workdir: Path) -> CliResult:
            workdir.mkdir(exist_ok=True)
            return cli("ip", "netns", "exec", namespace, str(BIN / argv[0]), *argv[1:],
                       cwd=workdir, env={"CLAUDE_DB_RUNTIME": "local",
                                         "CLAUDE_DB_PASSWORD": "shared"})

        yield run, ports


def test_a_stopped_sessions_port_goes_to_no_new_session(
    cli: Cli, state: Path, tmp_path: Path
) -> None:
    """Before, a port was held for 5 minutes only: then a new session got the stopped one's
    port, and the stopped one's .env (with a shared CLAUDE_DB_PASSWORD) read its database."""
    with _cli_in_two_port_namespace(cli) as (run, ports):
        a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
        try:
            assert run("claude-session", "start", "ports-a", workdir=a).code == 0
            assert run("claude-db", "query", "CREATE TABLE mine (x int); INSERT INTO mine "
                       "VALUES (1)", workdir=a).code == 0
            assert run("claude-session", "stop", "ports-a", workdir=a).code == 0
            _age_claims(state)

            assert run("claude-session", "start", "ports-b", workdir=b).code == 0
            assert {_port(state, "ports-a"), _port(state, "ports-b")} == ports
            assert run("claude-session", "stop", "ports-b", workdir=b).code == 0

            # a's .env reaches a's database again, on its own port
            assert run("claude-session", "attach", "ports-a", "--no-shell", workdir=a).code == 0
            assert f":{_port(state, 'ports-a')}/" in read_env(a)["DATABASE_URL"]
            query = run("claude-db", "query", "SELECT x FROM mine", "--csv", workdir=a)
            assert query.stdout == "x\n1\n", query

            # both ports are sessions': a third start says so, and leaves nothing behind
            third = run("claude-session", "start", "ports-c", workdir=c)
            assert_one_line_error(third, ExitCode.FAILED)
            assert "no free loopback port" in third.stderr, third
            assert not (state / "sessions" / "ports-c").exists()
            assert not (c / ".env").exists()
        finally:
            for name, workdir in (("ports-a", a), ("ports-b", b)):
                run("claude-session", "delete", name, "--yes", workdir=workdir)


def test_a_port_recorded_by_an_older_claude_db_is_the_sessions_from_its_next_start(
    cli: Cli, state: Path, tmp_path: Path
) -> None:
    """An older claude-db recorded when a port was handed out, not for which session: the
    session's next start records it as the session's."""
    with _cli_in_two_port_namespace(cli) as (run, ports):
        a, b = tmp_path / "a", tmp_path / "b"
        try:
            assert run("claude-session", "start", "ports-old", workdir=a).code == 0
            assert run("claude-session", "stop", "ports-old", workdir=a).code == 0
            registry = state / "ports.json"
            registry.write_text(json.dumps({port: 0 for port in json.loads(
                registry.read_text())}))  # as an older claude-db left it, 5 minutes later
            assert run("claude-session", "attach", "ports-old", "--no-shell",
                       workdir=a).code == 0
            assert run("claude-session", "stop", "ports-old", workdir=a).code == 0
            _age_claims(state)
            assert run("claude-session", "start", "ports-new", workdir=b).code == 0
            assert {_port(state, "ports-old"), _port(state, "ports-new")} == ports
        finally:
            for name, workdir in (("ports-old", a), ("ports-new", b)):
                run("claude-session", "delete", name, "--yes", workdir=workdir)


SECOND_USER = "claudedb-attacker"  # the user tests/test_state_security.py makes too

#: a fake PostgreSQL server: asks its first client for a cleartext password, prints it,
#: and keeps the port
FAKE_SERVER = r"""
import signal, socket, struct, sys

def message(conn, typed):
    def exactly(n):
        data = b""
        while len(data) < n:
            data += conn.recv(n - len(data)) or sys.exit("client left")
        return data
    kind = exactly(1) if typed else b""
    return kind, exactly(struct.unpack("!I", exactly(4))[0] - 4)

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
print("listening", flush=True)
conn, _ = server.accept()
while True:
    _, body = message(conn, typed=False)
    if struct.unpack("!I", body[:4])[0] not in (80877103, 80877104):  # SSL, GSS: no
        break
    conn.sendall(b"N")
conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
print(message(conn, typed=True)[1].rstrip(b"\0").decode(), flush=True)
conn.close()
signal.pause()
"""


@pytest.fixture(scope="module")
def second_user() -> str:
    try:
        pwd.getpwnam(SECOND_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", SECOND_USER])  # another run may make it meanwhile
        pwd.getpwnam(SECOND_USER)
    return SECOND_USER


def _psql_as(user: str, url: str, password: str) -> subprocess.CompletedProcess[str]:
    parts = urlsplit(url)
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", f"PGPASSWORD={password}", "psql", "-h",
         "127.0.0.1", "-p", str(parts.port), "-U", str(parts.username),
         "-d", parts.path.lstrip("/"), "-w", "-Atc", "SELECT 1"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def test_a_password_stolen_on_a_stopped_sessions_port_is_no_use_after_attach(
    cli: Cli, state: Path, tmp_path: Path, second_user: str
) -> None:
    """Before, attach moved the session away from the fake server but kept its password:
    the second user logged in with what the session's app had sent the fake."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    try:
        assert cli("claude-session", "start", "ports-stolen", cwd=workdir).code == 0
        old_url = read_env(workdir)["DATABASE_URL"]
        old_port = _port(state, "ports-stolen")
        assert cli("claude-session", "stop", "ports-stolen", cwd=workdir).code == 0
        fake = subprocess.Popen(
            # setpriv execs (runuser would fork): killing the pid ends the fake
            ["setpriv", f"--reuid={second_user}", f"--regid={second_user}", "--init-groups",
             "/usr/bin/python3", "-c", FAKE_SERVER, str(old_port)],
            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            assert fake.stdout is not None and fake.stdout.readline() == "listening\n"
            # the session's app, reading .env, connects while the session is stopped
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(old_url, connect_timeout=120)
            stolen = fake.stdout.readline().strip()
            assert stolen == unquote(str(urlsplit(old_url).password))

            attach = cli("claude-session", "attach", "ports-stolen", "--no-shell", cwd=workdir)
            assert attach.code == 0, attach
        finally:
            fake.kill()
            fake.wait()
        new_url = read_env(workdir)["DATABASE_URL"]
        assert _port(state, "ports-stolen") != old_port
        refused = _psql_as(second_user, new_url, stolen)
        assert refused.returncode != 0 and "password authentication failed" in refused.stderr
        # what the second user lacks is the password only: with .env's, it gets in
        new_password = unquote(str(urlsplit(new_url).password))
        assert _psql_as(second_user, new_url, new_password).stdout == "1\n"
        assert "new password" in attach.stderr, attach  # and says so
        query = cli("claude-db", "query", "SELECT 1 AS x", "--csv", cwd=workdir)
        assert query.stdout == "x\n1\n", query
    finally:
        cli("claude-session", "delete", "ports-stolen", "--yes", cwd=workdir)


def test_a_mariadb_session_that_moves_gets_a_new_password(
    cli: Cli, state: Path, tmp_path: Path
) -> None:
    """MariaDB's equivalent: its accounts file (run at every server start) follows, so a
    restart does not bring the old password back."""
    if shutil.which("mariadbd") is None:
        pytest.skip("needs Debian's mariadbd (apt-get install mariadb-server)")
    import pymysql

    workdir = tmp_path / "w"
    workdir.mkdir()
    try:
        started = cli("claude-session", "start", "ports-maria", "--db", "mysql", cwd=workdir)
        assert started.code == 0, started
        old = urlsplit(read_env(workdir)["DATABASE_URL"])
        assert cli("claude-session", "stop", "ports-maria", cwd=workdir).code == 0
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            squatter.bind(("127.0.0.1", int(str(old.port))))
            squatter.listen()
            attach = cli("claude-session", "attach", "ports-maria", "--no-shell", cwd=workdir)
        assert attach.code == 0 and "new password" in attach.stderr, attach
        new = urlsplit(read_env(workdir)["DATABASE_URL"])
        assert new.port != old.port and new.password != old.password
        with pytest.raises(pymysql.err.OperationalError) as refused:
            pymysql.connect(host="127.0.0.1", port=new.port, user=str(old.username),
                            password=unquote(str(old.password)), connect_timeout=120)
        assert refused.value.args[0] == 1045  # access denied
        # a restart on the same port keeps the new password
        assert cli("claude-session", "stop", "ports-maria", cwd=workdir).code == 0
        attach = cli("claude-session", "attach", "ports-maria", "--no-shell", cwd=workdir)
        assert attach.code == 0 and "new password" not in attach.stderr, attach
        assert read_env(workdir)["DATABASE_URL"] == new.geturl()
        query = cli("claude-db", "query", "SELECT 1 AS x", "--csv", cwd=workdir)
        assert query.stdout == "x\n1\n", query
    finally:
        cli("claude-session", "delete", "ports-maria", "--yes", cwd=workdir)


def test_a_password_change_cut_short_is_finished_by_the_next_start(
    cli: Cli, state: Path, tmp_path: Path
) -> None:
    """attach killed after the server came back on a new port, before its new password was
    set: the record has the new password, the server the old; the next attach sets it."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    try:
        assert cli("claude-session", "start", "ports-cut", cwd=workdir).code == 0
        old = urlsplit(read_env(workdir)["DATABASE_URL"])
        assert cli("claude-session", "stop", "ports-cut", cwd=workdir).code == 0
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            squatter.bind(("127.0.0.1", int(str(old.port))))
            squatter.listen()
            killed = cli("claude-session", "attach", "ports-cut", "--no-shell", cwd=workdir,
                         env={KILL_AT: "local-started"})
            assert killed.code == -9, killed
            attach = cli("claude-session", "attach", "ports-cut", "--no-shell", cwd=workdir)
        assert attach.code == 0, attach
        new = urlsplit(read_env(workdir)["DATABASE_URL"])
        assert new.port != old.port and new.password != old.password
        with psycopg.connect(new.geturl()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(new._replace(netloc=new.netloc.replace(
                f":{new.password}@", f":{old.password}@")).geturl())
    finally:
        cli("claude-session", "delete", "ports-cut", "--yes", cwd=workdir)


def test_a_wait_for_the_port_registry_held_by_another_program_says_so(
    cli: Cli, state: Path, workdir: Path
) -> None:
    """Before, the notice read the holder's pid from the lock file; another program leaves
    none there (a claude-db command neither, for a moment): a traceback instead of a line."""
    lock = state / ".locks" / "ports.json.lock"
    lock.parent.mkdir(mode=0o700, exist_ok=True)
    holder = subprocess.Popen(["flock", str(lock), "sh", "-c", "echo held; read x"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline() == "held\n"
        start = subprocess.Popen(
            [str(BIN / "claude-session"), "start", "ports-wait"], cwd=workdir,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert start.stderr is not None
        line = start.stderr.readline()  # its first: nothing else comes while it waits
        assert line == "waiting for the port registry: another process holds it\n"
    finally:
        holder.stdin.close()
        holder.wait()
    try:
        _, rest = start.communicate(timeout=600)
        assert start.returncode == 0 and "Traceback" not in rest, rest
    finally:
        cli("claude-session", "delete", "ports-wait", "--yes")


def test_a_fixed_password_stays_when_the_session_moves(
    cli: Cli, state: Path, workdir: Path
) -> None:
    """CLAUDE_DB_PASSWORD=... is everyone's already: a move keeps it as set (review: it was
    replaced by a random one, unlike what README says of the setting)."""
    fixed = {"CLAUDE_DB_PASSWORD": "fixedpw"}
    assert cli("claude-session", "start", "fixed-move", env=fixed).code == 0
    try:
        assert cli("claude-session", "stop", "fixed-move").code == 0
        old = int(read_env(workdir)["DB_PORT"])
        with socket.create_server(("127.0.0.1", old)):  # another program took the port
            attached = cli("claude-session", "attach", "fixed-move", "--no-shell", env=fixed)
            assert attached.code == 0, attached
        values = read_env(workdir)
        assert int(values["DB_PORT"]) != old and values["DB_PASSWORD"] == "fixedpw", values
        assert cli("claude-db", "query", "select 1").code == 0
    finally:
        assert cli("claude-session", "delete", "fixed-move", "--yes").code == 0
