"""SIGTERM and ``claude-session start``, as README "Exit codes" tells it: 130 once the
command runs (what it made is removed); while it is still loading, before its handlers
are set and before it has made anything, the signal ends it as SIGTERM does."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

from claude_db.locks import lock_for
from claude_db.testing import BIN
from claude_db.testing.safety import cli_env, locks_waited_for_by, wait_for

#: ``claude-session start early``, held (reading the FIFO argv[1]) after claude-db's
#: modules are loaded and before its command runs
LOADED_THEN_START = """
import sys
from claude_db.cli.session import main
with open(sys.argv[1]) as fifo:
    fifo.read()
sys.argv = ["claude-session", "start", "early"]
main()
"""


def test_sigterm_while_loading_ends_start_as_sigterm_does_having_made_nothing(
    state: Path, workdir: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-c", LOADED_THEN_START, str(fifo)], cwd=workdir,
                            env=cli_env(state), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer: list[int] = []

    def held() -> bool:  # the process opened the FIFO: it is held there
        assert proc.poll() is None, proc.communicate()
        with contextlib.suppress(OSError):  # ENXIO: not open for reading yet
            writer.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        return bool(writer)

    try:
        wait_for("claude-session to load", held)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # only if the test failed before: it ended already
        proc.wait()
        for fd in writer:
            os.close(fd)
    assert proc.returncode == -signal.SIGTERM, err
    assert not (workdir / ".env").exists()
    assert not (state / "sessions" / "early").exists()


def test_sigterm_once_start_runs_is_an_interrupt(state: Path, workdir: Path) -> None:
    sessions = state / "sessions"
    sessions.mkdir()
    with open(lock_for(sessions / "term-wait"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another command on this session would
        proc = subprocess.Popen(
            [str(BIN / "claude-session"), "start", "term-wait"], cwd=workdir,
            env=cli_env(state), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        wait_for("start to wait for the lock", lambda: locks_waited_for_by(proc.pid))
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == "error: interrupted", err
    assert not (sessions / "term-wait").exists()
    assert not (workdir / ".env").exists()
