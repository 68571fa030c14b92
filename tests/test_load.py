"""Load: many start/delete cycles on each runtime, then nothing left: no process, port,
directory or file (and on docker no container, network or volume).

Workers run the cycles side by side: they also race each other's cheap gc on every start,
which must never take a live session.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from claude_db.testing import BIN
from claude_db.testing.docker import (
    NOTHING_IN_DOCKER,
    docker_cli_env,
    docker_daemon,  # noqa: F401 - a fixture
    docker_leftovers,
    remove_everything,
)
from claude_db.testing.safety import NOTHING_LEFT, cli_env, session_json, state_leftovers

CYCLES = 50
WORKERS = {"local": 2, "docker": 5}  # docker's work is mostly the daemon's waiting: overlap it
QUERY_EVERY = 10  # a query now and then: start's readiness check already queried each one
# Where the local sessions' sockets were: /tmp/claude-db-* for long state paths. Only these
# are checked afterwards: other tests (other xdist workers) make such directories meanwhile.
SOCKET_DIRS: list[Path] = []


def cycles(state: Path, runtime: str, home: Path, names: list[str]) -> list[int]:
    """start → a query → delete, for each name; the ports the sessions had. A local
    session's socket directory outside the state directory (see ``SOCKET_DIRS``) is noted."""
    ports = []
    env = docker_cli_env(state) if runtime == "docker" else cli_env(state)

    def run(*argv: str) -> str:
        done = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=home, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=300)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done.stdout

    for n, name in enumerate(names):
        started = json.loads(run("claude-session", "start", name, "--json"))
        ports.append(int(started["env"]["DB_PORT"]))
        if runtime == "local":
            SOCKET_DIRS.append(Path(session_json(state, name)["runtime_state"]["socket_dir"]))
        if n % QUERY_EVERY == 0:
            assert run("claude-db", "query", "SELECT 40 + 2 AS x", "--csv").split() == ["x", "42"]
        run("claude-session", "delete", name, "--yes")
        assert not (home / ".env").exists()
    return ports


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_fifty_start_delete_cycles_leak_nothing(
    state: Path, tmp_path: Path, runtime: str, request: pytest.FixtureRequest
) -> None:
    if runtime == "docker":
        request.getfixturevalue("docker_daemon")  # fails loudly without Docker or images
    workers = WORKERS[runtime]
    homes = [tmp_path / f"home-{n}" for n in range(workers)]
    for home in homes:
        home.mkdir()
    tag = uuid.uuid4().hex[:6]  # Docker names are global
    batches = [[f"load{tag}-{w}-{i}" for i in range(CYCLES // workers)] for w in range(workers)]
    names = [name for batch in batches for name in batch]
    SOCKET_DIRS.clear()
    try:
        with ThreadPoolExecutor(workers) as pool:
            ports = [p for batch in pool.map(cycles, [state] * workers, [runtime] * workers,
                                             homes, batches) for p in batch]
        assert len(ports) == CYCLES
        assert state_leftovers(state, ports if runtime == "local" else []) == NOTHING_LEFT
        if runtime == "docker":
            assert [docker_leftovers(n) for n in names] == [NOTHING_IN_DOCKER] * CYCLES
    finally:
        if runtime == "docker":
            for name in names:
                remove_everything(name)
    # nor a socket directory outside it (the local runtime makes them in /tmp for long paths)
    assert len(SOCKET_DIRS) == (CYCLES if runtime == "local" else 0)
    assert [path for path in SOCKET_DIRS if os.path.lexists(path)] == []
