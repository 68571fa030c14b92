"""Loopback ports of local sessions: a stopped session's port stays its own (finding 10),
and a session that comes back on another port gets a new password (finding 8)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.testing import Cli, CliResult, assert_one_line_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")

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


def test_a_stopped_sessions_port_goes_to_no_new_session(
    cli: Cli, state: Path, tmp_path: Path
) -> None:
    """Before, a port was held for 5 minutes only: then a new session got the stopped one's
    port, and the stopped one's .env (with a shared CLAUDE_DB_PASSWORD) read its database."""
    with _two_port_namespace() as (namespace, ports):

        def run(*argv: str, workdir: Path) -> CliResult:
            workdir.mkdir(exist_ok=True)
            return cli("ip", "netns", "exec", namespace, str(BIN / argv[0]), *argv[1:],
                       cwd=workdir, env={"CLAUDE_DB_RUNTIME": "local",
                                         "CLAUDE_DB_PASSWORD": "shared"})

        a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
        try:
            assert run("claude-session", "start", "ports-a", workdir=a).code == 0
            assert run("claude-db", "query", "CREATE TABLE mine (x int); INSERT INTO mine "
                       "VALUES (1)", workdir=a).code == 0
            assert run("claude-session", "stop", "ports-a", workdir=a).code == 0
            # as if the 5 minutes a claim is held had passed
            registry = state / "ports.json"
            claims = json.loads(registry.read_text())
            registry.write_text(json.dumps({port: {**claim, "at": 0} if isinstance(claim, dict)
                                            else 0 for port, claim in claims.items()}))

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
