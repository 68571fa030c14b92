"""Concurrency with real parallel processes: one name, one session; state never corrupt.

Every command that changes a session holds its file lock (``SessionStore.lock``) and
writes state atomically (a temporary file renamed); ``start`` takes the lock before the
session's directory exists, and ``gc`` only judges sessions whose lock it gets at once.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from claude_db.testing import BIN, Cli, CliResult
from claude_db.testing.safety import (
    NOTHING_LEFT,
    cli_env,
    session_json,
    session_leader_servers,
    state_leftovers,
)

pytestmark = pytest.mark.slow  # many commands at once: `./dev test --all` (CI) runs it


def spawn(state: Path, cwd: Path, *argv: str) -> subprocess.Popen[bytes]:
    program = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
    return subprocess.Popen([program, *argv[1:]], cwd=cwd, env=cli_env(state),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> CliResult:
    out, err = proc.communicate(timeout=300)
    assert isinstance(proc.args, list)  # spawn() passes an argument list
    return CliResult([str(arg) for arg in proc.args], proc.returncode, out.decode(), err.decode())


def in_parallel(state: Path, cwd: Path, commands: list[tuple[str, ...]]) -> list[CliResult]:
    """Start every command at once (all running together), then collect them all."""
    return [finish(p) for p in [spawn(state, cwd, *argv) for argv in commands]]


def assert_clean_outcome(result: CliResult) -> None:
    """Success, or one documented error line: never a traceback, never a half message."""
    assert "Traceback" not in result.stderr + result.stdout, result
    if result.code != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result
        assert result.code in (1, 4), result


def test_two_starts_of_one_name_make_one_session(cli: Cli, state: Path, workdir: Path) -> None:
    results = in_parallel(state, workdir, [("claude-session", "start", "race")] * 4)
    # one creates it; the others, in the same directory, find it and make sure it runs
    assert all(r.code == 0 for r in results), results
    outcomes = sorted(r.stdout.split()[2] for r in results)
    assert outcomes == ["runs", "runs", "runs", "started"], results
    listed = json.loads(cli("claude-session", "list", "--json").stdout)
    assert [s["name"] for s in listed] == ["race"]
    assert listed[0]["status"] == "running"
    assert len(session_leader_servers(state, "race")) == 1  # one server, not four
    assert cli("claude-db", "status", "--session", "race").code == 0
    port = session_json(state, "race")["runtime_state"]["port"]
    assert cli("claude-session", "delete", "race", "--yes").code == 0
    assert state_leftovers(state, [port]) == NOTHING_LEFT


def test_concurrent_commands_never_corrupt_a_session(cli: Cli, state: Path, workdir: Path) -> None:
    assert cli("claude-session", "start", "busy").code == 0
    assert cli("claude-db", "query", "CREATE TABLE hits (n int)", "--session", "busy").code == 0
    s = ("--session", "busy")
    rounds = [
        [("claude-session", "stop", "busy"), ("claude-session", "attach", "busy", "--no-shell"),
         ("claude-db", "snapshot", "save", *s),
         ("claude-db", "query", "INSERT INTO hits VALUES (1)",
                                                 *s),
         ("claude-session", "list", "--json"), ("claude-db", "status", *s)],
        [("claude-session", "attach", "busy", "--no-shell"), ("claude-db", "snapshot", "save", *s),
         ("claude-db", "snapshot", "save", *s), ("claude-session", "stop", "busy"),
         ("claude-db", "snapshot", "list", "--json", *s), ("claude-session", "gc")],
    ] * 3
    for commands in rounds:
        for result in in_parallel(state, workdir, commands):
            assert_clean_outcome(result)

    assert cli("claude-session", "attach", "busy", "--no-shell").code == 0
    # the state is whole: it parses, names one live server, and nothing half-written is left
    recorded = session_json(state, "busy")
    assert session_leader_servers(state, "busy") == [recorded["runtime_state"]["pid"]]
    directory = state / "sessions" / "busy"
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []
    listed = json.loads(cli("claude-db", "snapshot", "list", "--json", *s).stdout)
    # (every save may have lost its race with a stop: then no snapshot directory was made)
    snapshots = directory / "snapshots"
    on_disk = sorted(p.name for p in snapshots.iterdir()) if snapshots.exists() else []
    assert sorted(x["name"] for x in listed) == on_disk  # none half made, none half deleted
    assert len(listed) == len({x["name"] for x in listed})
    for name in on_disk[-2:]:  # the snapshots work
        assert cli("claude-db", "snapshot", "restore", name, *s).code == 0


def test_parallel_snapshots_get_their_own_names(cli: Cli, state: Path, workdir: Path) -> None:
    assert cli("claude-session", "start", "snaps").code == 0
    results = in_parallel(state, workdir, [("claude-db", "snapshot", "save", "-s", "snaps")] * 4)
    assert all(r.code == 0 for r in results), results
    names = [r.stdout.strip() for r in results]
    assert len(set(names)) == 4, names
    listed = json.loads(cli("claude-db", "snapshot", "list", "--json", "-s", "snaps").stdout)
    assert sorted(x["name"] for x in listed) == sorted(names)


def test_list_and_gc_while_sessions_come_and_go(cli: Cli, state: Path, workdir: Path) -> None:
    """Readers never fail on a session being deleted; gc never takes a session being made."""
    homes = [workdir / f"home-{n}" for n in (1, 2)]
    for home in homes:
        home.mkdir()
    churn = [spawn(state, home, "sh", "-c",
                   f"for i in 1 2 3 4; do {BIN}/claude-session start {home.name}-$i "
                   f"|| exit 1; {BIN}/claude-session delete {home.name}-$i --yes || exit 1; done")
             for home in homes]
    watchers = []
    while any(p.poll() is None for p in churn):
        watchers += [spawn(state, workdir, "claude-session", "list", "--json"),
                     spawn(state, workdir, "claude-session", "gc")]
        for proc in watchers[-2:]:
            proc.wait(timeout=120)
    for proc in churn:
        result = finish(proc)
        assert result.code == 0, result  # no start was swept from under it
    for proc in watchers:
        result = finish(proc)
        assert result.code == 0, result
        assert "Traceback" not in result.stderr
    assert state_leftovers(state, []) == NOTHING_LEFT
