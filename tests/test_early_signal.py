"""SIGTERM and ``claude-session start``, as README "Exit codes" tells it: while it is still
loading, before its handlers are set and before it has made anything, the signal ends it
as SIGTERM does. (Once the command runs it is an interrupt, exit 130:
tests/test_faults.py::test_interrupt_during_start_while_waiting_for_the_session_lock.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from claude_db.testing.safety import cli_env, wait_for

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

