"""How claude-db tells processes apart (psutil; identities from ``/proc``) and hands a
file lock to a detached child: real processes, real locks."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_db.locks import lock_for, try_hold, try_hold_for_child
from claude_db.processes import (
    is_running,
    process_cmdline,
    process_exists,
    process_identity,
    process_owner,
    process_started_at,
    processes_mentioning,
    spawn_daemon,
)
from claude_db.readiness import wait_until


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "600"])  # Popen returns once the child exec'd
    yield child
    child.kill()
    child.wait()


def test_a_live_process_is_known_by_owner_arguments_identity_and_start(
    sleeper: subprocess.Popen[bytes],
) -> None:
    pid = sleeper.pid
    assert is_running(pid) and process_exists(pid)
    assert process_owner(pid) == os.getuid()
    mine = process_started_at(os.getpid())
    started = process_started_at(pid)
    assert mine is not None and started is not None and started >= mine - 1
    identity = process_identity(pid)
    assert identity is not None and identity == process_identity(pid)
    assert identity != process_identity(os.getpid())
    cmdline = process_cmdline(pid)
    assert cmdline == "sleep 600"


def test_a_gone_process_is_known_to_be_gone(sleeper: subprocess.Popen[bytes]) -> None:
    pid = sleeper.pid
    sleeper.kill()
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert process_exists(pid)  # a zombie still holds its pid
    assert not is_running(pid)  # is_running reaps our own exited child first
    assert not process_exists(pid)
    assert (process_identity(pid), process_started_at(pid), process_owner(pid),
            process_cmdline(pid)) == (None, None, None, None)


def test_processes_are_found_by_their_arguments(tmp_path: Path) -> None:
    marker = str(tmp_path / secrets.token_hex(4))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
    try:
        [(pid, cmdline)] = processes_mentioning(marker)
        assert pid == child.pid and cmdline.endswith(marker)
    finally:
        child.kill()
        child.wait()
    assert processes_mentioning(marker) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a set-user-ID-like process")
def test_a_process_with_two_users_has_no_owner_to_trust() -> None:
    """A set-user-ID program another user started: neither of its users may vouch for it."""
    child = subprocess.Popen(["setpriv", "--ruid", "65534", "--euid", "0", "sleep", "600"])
    try:
        while child.poll() is None and process_cmdline(child.pid) != "sleep 600":
            os.sched_yield()  # until setpriv has exec'd
        assert child.poll() is None, "setpriv failed"
        assert process_owner(child.pid) is None
    finally:
        child.kill()
        child.wait()


def test_a_lock_handed_to_a_detached_child_is_held_until_the_child_exits(
    tmp_path: Path,
) -> None:
    lock = lock_for(tmp_path / "guarded")
    with try_hold_for_child(lock) as fd:
        assert fd is not None
        child = spawn_daemon(["sleep", "600"], log=None, run_as=None, cwd=tmp_path,
                             env={"PATH": os.environ["PATH"]}, pass_fds=[fd])
    try:
        with try_hold(lock) as free:
            assert not free  # we closed ours: the child holds the lock
        with try_hold_for_child(lock) as taken:
            assert taken is None
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    with try_hold(lock) as free:
        assert free


def test_wait_until_says_whether_the_condition_came_true() -> None:
    answers = iter([False, False, True])
    assert wait_until(lambda: next(answers), timeout=None, interval=0)
    assert next(answers, "asked no more") == "asked no more"
    assert not wait_until(lambda: False, timeout=0)  # asked once, then time is up
