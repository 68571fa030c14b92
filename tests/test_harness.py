"""The test harness's own checks of shared machine state: a port is ours only when a
server of our state directory listens on it (pytest-xdist workers run side by side, and a
port a deleted session freed may be taken at once by another worker's server)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_db.testing import leftovers
from claude_db.testing.leaks import port_listeners
from claude_db.testing.safety import listening

SERVE = ("import socket, sys, time\n"
         "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
         "print(s.getsockname()[1], flush=True); time.sleep(600)\n")


@pytest.fixture
def serve() -> Iterator[Callable[[Path], int]]:
    """``serve(path) -> port``: a listening process whose command line names ``path``."""
    procs: list[subprocess.Popen[str]] = []

    def start(path: Path) -> int:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(path)], text=True,
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        procs.append(proc)
        assert proc.stdout is not None
        return int(proc.stdout.readline())

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_port_is_ours_only_when_a_server_of_our_state_listens(
    tmp_path: Path, serve: Callable[[Path], int]
) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    our_port = serve(ours)
    their_port = serve(theirs / "sessions" / "s1" / "data")
    assert [cmd for _, cmd in port_listeners(our_port)] == [f"{sys.executable} -c {SERVE} {ours}"]
    assert listening(our_port, ours)
    assert not listening(their_port, ours)  # it answers, but another state's server took it
    assert listening(their_port, theirs)


def test_a_deleted_sessions_port_taken_by_another_sessions_server_is_no_leftover(
    tmp_path: Path, serve: Callable[[Path], int]
) -> None:
    state = tmp_path / "state"
    (state / "sessions").mkdir(parents=True)
    env = {"DB_HOST": "127.0.0.1"}
    their_port = serve(tmp_path / "other" / "sessions" / "s1" / "data")
    assert leftovers(state, "gone", {**env, "DB_PORT": str(their_port)}, {}) == []
    # a listener that names no other session may be what the deleted one left: reported
    unknown_port = serve(tmp_path / "somewhere")
    assert leftovers(state, "gone", {**env, "DB_PORT": str(unknown_port)}, {}) == [
        f"port 127.0.0.1:{unknown_port} still answers"]
