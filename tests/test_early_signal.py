"""A signal while ``claude-session start`` is still loading, as README "Exit codes" tells it:
before its handlers are set and before it has made anything, Ctrl-C (SIGINT) and SIGTERM end
it as the signal does, with no traceback. (Once the command runs, an interrupt is exit 130:
tests/test_faults.py::test_interrupt_during_start_while_waiting_for_the_session_lock.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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
