"""Load: many start/delete cycles, then not one process, port, directory or file left.

Two workers run the cycles side by side (the machine has two cores): they also race each
other's cheap gc on every start, which must never take a live session.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import BIN
from safety_support import NOTHING_LEFT, cleanup, cli_env, fresh_state, leftovers

CYCLES = 50
WORKERS = 2


@pytest.fixture
def state(tmp_path: Path, state_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = fresh_state(tmp_path, state_root)
    monkeypatch.setenv("CLAUDE_DB_STATE_DIR", str(path))
    yield path
    cleanup(path)


def cycles(state: Path, home: Path, names: list[str]) -> list[int]:
    """start → a query → delete, for each name; the ports the sessions had."""
    ports = []
    env = cli_env(state)

    def run(*argv: str) -> str:
        done = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=home, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=300)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done.stdout

    for name in names:
        started = json.loads(run("claude-session", "start", name, "--json"))
        ports.append(int(started["env"]["DB_PORT"]))
        assert run("claude-db", "query", "SELECT 40 + 2 AS x", "--csv").split() == ["x", "42"]
        run("claude-session", "delete", name, "--yes")
        assert not (home / ".env").exists()
    return ports


@pytest.mark.slow
def test_fifty_start_delete_cycles_leak_nothing(state: Path, tmp_path: Path) -> None:
    homes = [tmp_path / f"home-{n}" for n in range(WORKERS)]
    for home in homes:
        home.mkdir()
    batches = [[f"load-{w}-{i}" for i in range(CYCLES // WORKERS)] for w in range(WORKERS)]
    with ThreadPoolExecutor(WORKERS) as pool:
        ports = [p for batch in pool.map(cycles, [state] * WORKERS, homes, batches) for p in batch]
    assert len(ports) == CYCLES
    assert leftovers(state, ports) == NOTHING_LEFT
    # nor a socket directory outside it (the local runtime puts them in /tmp for long paths)
    names = [name for batch in batches for name in batch]
    assert [d for d in map(lambda n: socket_dir(state, n), names) if d.exists()] == []


def socket_dir(state: Path, name: str) -> Path:
    server_dir = state / "sessions" / name / "server"
    return Path("/tmp") / f"claude-db-{hashlib.sha256(str(server_dir).encode()).hexdigest()[:12]}"
