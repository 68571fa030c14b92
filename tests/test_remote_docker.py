"""The docker runtime on a remote engine: a dockerd in its own network namespace, reached
over TCP with TLS and over ssh (tests/private_docker.py). Every command works from here,
and the database is published on none of that machine's interfaces."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from claude_db.testing import Cli
from claude_db.testing.docker import DB_IMAGE

if TYPE_CHECKING:
    from private_docker import PrivateEngine

pytest_plugins = ["private_docker"]

# one private daemon on one worker; remote engines are another runtime: slow (CI runs them)
pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("private-dockerd"), pytest.mark.slow]


def _env(remote_engine: PrivateEngine, transport: str) -> dict[str, str]:
    reach = remote_engine.tls_env() if transport == "tls" else remote_engine.ssh_env()
    return {**reach, "CLAUDE_DB_RUNTIME": "docker", "CLAUDE_DB_IMAGE": DB_IMAGE}


def _held(remote_engine: PrivateEngine, label: str) -> list[str]:
    """Containers, networks and volumes the remote engine holds with ``label``."""
    found = []
    for kind in ("container", "network", "volume"):
        listed = remote_engine.docker(kind, "ls", *(["-a"] if kind == "container" else []),
                                      "-q", "--filter", f"label={label}")
        found += [f"{kind} {line}" for line in listed.stdout.split()]
    return found


def _delete_leaves_nothing(
    cli: Cli, remote_engine: PrivateEngine, name: str, env: dict[str, str]
) -> None:
    """``delete`` the session: nothing of it is left on the remote engine."""
    deleted = cli("claude-session", "delete", name, "--yes", env=env)
    assert deleted.code == 0, deleted
    assert _held(remote_engine, f"claude-db.session={name}") == []


def _published(remote_engine: PrivateEngine, name: str) -> list[object]:
    """Every host port the remote engine binds for the session's containers."""
    bound: list[object] = []
    ids = remote_engine.docker("ps", "-aq", "--filter", f"label=claude-db.session={name}")
    for container in ids.stdout.split():
        attrs = json.loads(remote_engine.docker("inspect", container).stdout)[0]
        bound += [b for b in (attrs["HostConfig"].get("PortBindings") or {}).values() if b]
        bound += [b for b in (attrs["NetworkSettings"].get("Ports") or {}).values() if b]
    return bound


@pytest.mark.parametrize("transport", ["tls", "ssh"])
def test_every_command_works_on_a_remote_engine_without_publishing(
    cli: Cli, remote_engine: PrivateEngine, workdir: Path, transport: str
) -> None:
    env = _env(remote_engine, transport)
    name = f"r{transport}{uuid.uuid4().hex[:8]}"
    try:
        # --publish too: a remote engine's ports are that machine's, so it publishes none
        started = cli("claude-session", "start", name, "--publish", env=env)
        assert started.code == 0 and "docker runtime" in started.stdout, started
        assert _published(remote_engine, name) == []
        with pytest.raises(OSError):  # nothing of it listens on the remote's address
            socket.create_connection((remote_engine.address, 5432), timeout=5).close()
        dotenv = (workdir / ".env").read_text()
        assert f"@{name}-db:5432/" in dotenv  # where the session's programs reach it

        status = cli("claude-db", "status", env=env)
        assert status.code == 0 and status.stdout.startswith("ready: postgres"), status
        assert " at 127.0.0.1:" in status.stdout, status  # through our tunnel
        assert cli("claude-db", "query", "CREATE TABLE kept (n int)", env=env).code == 0
        (workdir / "rows.sql").write_text("INSERT INTO kept VALUES (1), (2), (3);\n")
        imported = cli("claude-db", "import", "rows.sql", env=env)
        assert imported.code == 0, imported
        exported = cli("claude-db", "export", "dump.sql", env=env)
        assert exported.code == 0, exported
        assert re.search(r'CREATE TABLE "?public"?\."?kept', (workdir / "dump.sql").read_text())
        psql = cli("claude-db", "psql", "-XAtc", "SELECT sum(n) FROM kept", env=env)
        assert psql.stdout == "6\n", psql

        assert cli("claude-db", "snapshot", "save", "three", env=env).code == 0
        assert cli("claude-db", "reset", "--yes", env=env).code == 0
        gone = cli("claude-db", "query", "SELECT 1 FROM kept", env=env)
        assert gone.code != 0 and "does not exist" in gone.stderr, gone
        assert cli("claude-db", "undo", env=env).code == 0
        assert cli("claude-db", "query", "DELETE FROM kept", env=env).code == 0
        restored = cli("claude-db", "snapshot", "restore", "three", "--yes", env=env)
        assert restored.code == 0, restored
        counted = cli("claude-db", "psql", "-XAtc", "SELECT count(*) FROM kept", env=env)
        assert counted.stdout == "3\n", counted

        listed = json.loads(cli("claude-session", "list", "--json", env=env).stdout)
        assert [s["status"] for s in listed if s["name"] == name] == ["running"]
        assert _published(remote_engine, name) == []
        _delete_leaves_nothing(cli, remote_engine, name, env)
    finally:
        cli("claude-session", "delete", name, "--yes", env=env)


def test_gc_sweeps_what_the_remote_engine_holds(
    cli: Cli, remote_engine: PrivateEngine, tmp_path: Path
) -> None:
    """A session whose record is gone (its state lost): gc, run here, removes its
    containers, network and volume from the remote engine, and only those."""
    state = tmp_path / "state"  # this test's own: gc sweeps a whole state directory
    env = {**_env(remote_engine, "tls"), "CLAUDE_DB_STATE_DIR": str(state)}
    name = f"rgc{uuid.uuid4().hex[:8]}"
    label = f"claude-db.state={state}"
    started = cli("claude-session", "start", name, env=env)
    assert started.code == 0, started
    try:
        assert _held(remote_engine, label) != []
        record = state / "sessions" / name
        assert record.is_dir(), sorted(p.name for p in state.rglob("*"))[:20]
        for path in sorted(record.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        record.rmdir()
        swept = cli("claude-session", "gc", env=env)
        assert swept.code == 0, swept
        assert _held(remote_engine, label) == []
    finally:
        for container in remote_engine.docker("ps", "-aq", "--filter", f"label={label}",
                                              check=False).stdout.split():
            remote_engine.docker("rm", "-f", "-v", container, check=False)


def test_the_current_docker_context_is_honoured(
    cli: Cli, remote_engine: PrivateEngine, tmp_path: Path
) -> None:
    """``docker context use`` names the engine without ``DOCKER_HOST``: claude-db goes
    there as the docker CLI does (the context's TLS material too); ``DOCKER_HOST`` and
    ``DOCKER_CONTEXT`` take precedence, as for the CLI."""
    config = tmp_path / "docker-config"  # the user's ~/.docker is not ours to change
    certs = Path(remote_engine.values["CERTS"])
    reach = {"DOCKER_CONFIG": str(config)}
    for argv in (["context", "create", "big-host", "--docker",
                  f"host=tcp://{remote_engine.address}:2376,ca={certs / 'ca.pem'},"
                  f"cert={certs / 'cert.pem'},key={certs / 'key.pem'}"],
                 ["context", "use", "big-host"]):
        made = subprocess.run(["docker", *argv], capture_output=True, text=True,
                              env={**os.environ, **reach}, timeout=60)
        assert made.returncode == 0, made
    env = {**reach, "CLAUDE_DB_RUNTIME": "docker", "CLAUDE_DB_IMAGE": DB_IMAGE}
    name = f"rctx{uuid.uuid4().hex[:8]}"
    try:
        started = cli("claude-session", "start", name, env=env)
        assert started.code == 0 and "docker runtime" in started.stdout, started
        assert _held(remote_engine, f"claude-db.session={name}") != []
        status = cli("claude-db", "status", env=env)
        assert status.code == 0 and " at 127.0.0.1:" in status.stdout, status  # tunnel
        psql = cli("claude-db", "psql", "-XAtc", "SELECT 6", env=env)  # the CLI: same engine
        assert psql.stdout == "6\n", psql

        nobody = "unix:///nonexistent/docker.sock"
        overridden = cli("claude-db", "status", env={**env, "DOCKER_HOST": nobody})
        assert overridden.code == 7 and nobody in overridden.stderr, overridden
        missing = cli("claude-db", "status", env={**env, "DOCKER_CONTEXT": "no-such"})
        assert missing.code == 7, missing
        assert "the docker context 'no-such'" in missing.stderr, missing

        _delete_leaves_nothing(cli, remote_engine, name, env)
    finally:
        cli("claude-session", "delete", name, "--yes", env=env)


def test_commands_on_an_ssh_engine_share_one_login(
    cli: Cli, remote_engine: PrivateEngine, state: Path
) -> None:
    """Every docker SDK connection and ``docker exec`` (each connection through the tunnel
    is one) would be an ssh login of its own: claude-db's commands share one connection,
    kept in a private directory of the state."""
    env = _env(remote_engine, "ssh")
    logins = remote_engine.directory / "ssh" / "sshd.log"

    def count() -> int:
        return logins.read_text().count("Accepted publickey")

    name = f"rshare{uuid.uuid4().hex[:8]}"
    try:
        started = cli("claude-session", "start", name, env=env)
        assert started.code == 0, started
        before = count()
        for command in (("claude-db", "status"), ("claude-db", "query", "SELECT 1"),
                        ("claude-db", "psql", "-XAtc", "SELECT 2"),
                        ("claude-session", "list")):
            assert cli(*command, env=env).code == 0, command
        # unshared: several logins per command; shared: none (one, had the connection
        # idled out between two commands)
        assert count() - before <= 1, logins.read_text()[-2000:]
        ours = state / "ssh"
        assert ours.stat().st_mode & 0o777 == 0o700 and (ours / "ssh").is_file()
    finally:
        cli("claude-session", "delete", name, "--yes", env=env)
