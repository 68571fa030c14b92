"""Finding the Docker engine: DOCKER_HOST (unix and tcp), no daemon, and ``--runtime auto``."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from claude_db.testing import Cli, assert_one_line_error

if TYPE_CHECKING:
    from private_docker import PrivateEngine

pytest_plugins = ["claude_db.testing.docker", "private_docker"]

NOBODY = "tcp://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.mark.docker
@pytest.mark.xdist_group("private-dockerd")  # one private daemon, on one worker
@pytest.mark.slow  # a daemon of its own: `./dev test --all` (CI) runs it
def test_a_daemon_on_tcp_works(
    cli: Cli, new_name: Callable[[], str], remote_engine: PrivateEngine
) -> None:
    """A private daemon listening on TCP (with TLS): the user's own may listen on none."""
    name = new_name()
    tcp = remote_engine.tls_env()
    started = cli("claude-session", "start", name, env=tcp)
    assert started.code == 0 and "docker runtime" in started.stdout, started
    assert cli("claude-db", "status", env=tcp).code == 0
    psql = cli("claude-db", "psql", "-XAtc", "SELECT 1", env=tcp)
    assert psql.stdout == "1\n", psql  # the docker CLI through the tcp daemon too
    listed = json.loads(cli("claude-session", "list", "--json", env=tcp).stdout)
    assert [s["status"] for s in listed if s["name"] == name] == ["running"]
    assert cli("claude-session", "delete", name, "--yes", env=tcp).code == 0
    held = remote_engine.docker("ps", "-aq", "--filter", f"label=claude-db.session={name}")
    assert held.stdout == "", held


@pytest.mark.parametrize("host", [NOBODY, "unix:///nonexistent/docker.sock", "bogus"])
def test_runtime_docker_without_a_daemon_is_one_line_exit_7(cli: Cli, host: str) -> None:
    result = cli("claude-session", "start", "nodaemon", "--runtime", "docker",
                 env={"DOCKER_HOST": host})
    assert_one_line_error(result, 7)
    assert f"no Docker engine answers at {host}" in result.stderr
    assert result.stderr.count("no Docker engine answers") == 1, result  # said once
    listed = json.loads(cli("claude-session", "list", "--json").stdout)
    assert "nodaemon" not in [s["name"] for s in listed]


def test_auto_without_a_daemon_falls_back_to_local_and_says_so(cli: Cli) -> None:
    result = cli("claude-session", "start", "fallback", "--runtime", "auto",
                 env={"DOCKER_HOST": NOBODY})
    assert result.code == 0, result
    assert "on the local runtime" in result.stdout
    assert (f"no Docker engine answers at {NOBODY} (connection refused); "
            "using the local runtime") in result.stderr
    assert cli("claude-db", "status").code == 0
    assert cli("claude-session", "delete", "fallback", "--yes").code == 0


@pytest.mark.docker
def test_auto_takes_docker_when_it_answers(cli: Cli, new_name: Callable[[], str]) -> None:
    name = new_name()
    result = cli("claude-session", "start", name, env={"CLAUDE_DB_RUNTIME": "auto"})
    assert result.code == 0 and "docker runtime" in result.stdout, result
    assert "local" not in result.stderr
    assert cli("claude-session", "delete", name, "--yes").code == 0


@pytest.mark.docker
def test_a_docker_session_whose_daemon_is_gone(cli: Cli, new_name: Callable[[], str]) -> None:
    name = new_name()
    assert cli("claude-session", "start", name).code == 0
    gone = {"DOCKER_HOST": NOBODY}
    for command in (("claude-db", "status"), ("claude-db", "query", "SELECT 1"),
                    ("claude-session", "stop", name), ("claude-session", "attach", name,
                                                       "--no-shell")):
        result = cli(*command, env=gone)
        assert_one_line_error(result, 7)
        assert NOBODY in result.stderr
    listed = cli("claude-session", "list", env=gone)
    assert listed.code == 0 and "unknown" in listed.stdout, listed
    assert cli("claude-db", "status").code == 0  # untouched by all that
    assert cli("claude-session", "delete", name, "--yes").code == 0


def test_the_cli_does_not_import_the_docker_sdk_to_check_availability() -> None:
    # ~150 ms of imports: only commands that work on a docker session may pay for them
    program = (
        "import sys\n"
        "from claude_db.app import get_app\n"
        "runtime = get_app().runtime('docker')\n"
        "runtime.available()\n"
        "print(sorted(m for m in ('docker', 'requests') if m in sys.modules))\n"
    )
    for host in (NOBODY, "unix:///nonexistent/docker.sock"):
        out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                             env={"DOCKER_HOST": host, "PATH": "/usr/bin:/bin"}, check=True)
        assert out.stdout.strip() == "[]", out


@pytest.fixture
def hung_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A unix socket that accepts connections and never answers: a Docker engine that hangs."""
    path = tmp_path_factory.mktemp("hung") / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)  # the kernel accepts up to the backlog; nobody ever reads or writes
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"unix://{path}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.mark.docker
def test_a_daemon_that_hangs_fails_commands_with_one_line_not_minutes(
    cli: Cli, new_name: Callable[[], str], hung_daemon: str
) -> None:
    name = new_name()
    assert cli("claude-session", "start", name).code == 0
    hung = {"DOCKER_HOST": hung_daemon}
    # each of these waited 120 s per Docker call before (cli's own timeout is 180 s)
    for command in (("claude-db", "status"), ("claude-db", "query", "SELECT 1"),
                    ("claude-db", "import", "-"), ("claude-session", "stop", name)):
        result = cli(*command, env=hung, input="SELECT 1;\n")
        assert_one_line_error(result, 7)
        assert f"the Docker engine at {hung_daemon} does not answer (2 s)" in result.stderr
    listed = cli("claude-session", "list", env=hung)
    assert listed.code == 0 and "does not answer" in listed.stdout, listed
    started = cli("claude-session", "start", "hung", "--runtime", "docker", env=hung)
    assert_one_line_error(started, 7)
    assert "does not answer (2 s)" in started.stderr
    assert cli("claude-db", "status").code == 0  # untouched by all that


def test_a_remote_tunnel_without_a_docker_cli_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A remote engine's databases are reached through `docker exec`: without the CLI,
    a clear error before anything listens (review: each connection hung instead)."""
    from claude_db.errors import DockerUnavailableError
    from claude_db.runtimes.docker.client import tunnel

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DockerUnavailableError, match="no docker CLI"):
        tunnel("some-db", 5432)


@pytest.mark.docker
@pytest.mark.xdist_group("private-dockerd")  # one private daemon, on one worker
@pytest.mark.slow  # a daemon of its own: `./dev test --all` (CI) runs it
def test_an_engine_out_of_network_addresses_is_one_line_that_says_what_to_do(
    cli: Cli, new_name: Callable[[], str], remote_engine: PrivateEngine
) -> None:
    """Each docker session takes a network from the engine's address pools (~30 by Docker's
    default): with none left, `start` says why and what to do, and leaves nothing."""
    blocker = f"{new_name()}-whole-pool"  # one network that holds every address of the pool
    remote_engine.docker("network", "create", "--subnet", remote_engine.values["POOL"], blocker)
    try:
        name = new_name()
        engine = {"DOCKER_HOST": remote_engine.socket}
        result = cli("claude-session", "start", name, "--runtime", "docker", env=engine)
        assert_one_line_error(result, 1)
        assert "address pools" in result.stderr and "daemon.json" in result.stderr, result
        for kind in ("container", "network", "volume"):
            held = remote_engine.docker(kind, "ls", "-q", *(("-a",) if kind == "container" else ()),
                                        "--filter", f"label=claude-db.session={name}")
            assert held.stdout == "", (kind, held)
        listed = json.loads(cli("claude-session", "list", "--json", env=engine).stdout)
        assert name not in [s["name"] for s in listed]
    finally:
        remote_engine.docker("network", "rm", blocker)
