"""A test hook for the kill-at-every-step tests: the process dies at a named step.

With ``CLAUDE_DB_TEST_KILL_AT=<step>`` set, :func:`checkpoint` ``(step)`` kills the
process with SIGKILL, as the OOM killer or a cancelled CI job would, so that the tests
can check that every side effect of every command can be recovered from. With
``CLAUDE_DB_TEST_SIGNAL_AT=<step>``, it sends itself SIGINT there, as a Ctrl-C would
(``<step>:SIGHUP``, ``<step>:SIGTERM``: that signal).
"""

from __future__ import annotations

import os
import signal

KILL_AT = "CLAUDE_DB_TEST_KILL_AT"
SIGNAL_AT = "CLAUDE_DB_TEST_SIGNAL_AT"


def checkpoint(step: str) -> None:
    """Die here (SIGKILL), or be interrupted here (SIGINT), if the test hook names ``step``."""
    if os.environ.get(KILL_AT) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    at, _, name = os.environ.get(SIGNAL_AT, "").partition(":")
    if at == step:
        os.kill(os.getpid(), signal.Signals[name or "SIGINT"])
