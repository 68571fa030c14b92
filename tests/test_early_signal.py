"""A signal at the edges of ``claude-session start``, as README "Exit codes" tells it: while
it is still loading, before its handlers are set and before it has made anything, Ctrl-C
(SIGINT) and SIGTERM end it as the signal does, with no traceback; once it is done and has
said so, a signal comes too late to change its outcome. (While the command runs, an
interrupt is exit 130: tests/test_faults.py::test_interrupt_during_start_while_waiting_for_
the_session_lock.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from claude_db.testing import Cli
from claude_db.testing.safety import cli_env, wait_for

#: ``claude-session start early`` as its console script runs it (the entry point from the
#: installed distribution's metadata), held (reading the FIFO argv[1]) as it loads the
#: command's modules
HELD_WHILE_LOADING = """
import sys
from importlib.metadata import entry_points

FIFO = sys.argv[1]

class Hold:
    def find_spec(self, name, path=None, target=None):
        if name == "claude_db.cli.session":
            with open(FIFO) as fifo:
                fifo.read()

sys.meta_path.insert(0, Hold())
(script,) = entry_points(group="console_scripts", name="claude-session")
sys.argv = ["claude-session", "start", "early"]
script.load()()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_loading_ends_start_as_the_signal_does_having_made_nothing(
    state: Path, workdir: Path, tmp_path: Path, sig: int
) -> None:
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-c", HELD_WHILE_LOADING, str(fifo)], cwd=workdir,
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
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # only if the test failed before: it ended already
        proc.wait()
        for fd in writer:
            os.close(fd)
    assert proc.returncode == -sig, err
    assert (out, err) == (b"", b"")  # Python's KeyboardInterrupt traceback was here
    assert not (workdir / ".env").exists()
    assert not (state / "sessions" / "early").exists()


#: ``claude-session start late``, which gets a Ctrl-C as it exits (from its sys.exit)
INTERRUPTED_AS_IT_EXITS = """
import os, signal, sys, time
from claude_db.cli import claude_session

exit_now = sys.exit

def exit_interrupted(code=0):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # Python runs a handler between these lines
    exit_now(code)

sys.exit = exit_interrupted
sys.argv = ["claude-session", "start", "late"]
claude_session()
"""


def test_a_signal_once_start_is_done_does_not_undo_its_success(
    state: Path, workdir: Path, cli: Cli
) -> None:
    """First-time user: "session started", then exit 130 (interrupted), the session kept."""
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_AS_IT_EXITS], cwd=workdir,
                          env=cli_env(state), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    try:
        assert done.returncode == 0, done
        assert done.stdout.startswith("session late started"), done
        assert "error" not in done.stderr, done
    finally:
        assert cli("claude-session", "delete", "late", "--yes").code == 0
