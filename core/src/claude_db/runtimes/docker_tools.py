"""Running programs inside a session's containers with ``docker exec``.

The docker CLI, not the SDK: it streams stdin/stdout as a plain process does (dumps,
imports) and handles the terminal for interactive clients. Secrets never go on the
command line: ``-e NAME`` without a value makes the CLI take it from its environment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from claude_db.engine import Endpoint, Tools
from claude_db.errors import ToolMissingError
from claude_db.processes import child_env, run_foreground


def docker_cli() -> str:
    found = shutil.which("docker")
    if found is None:
        raise ToolMissingError(
            "the docker command-line client is not installed here "
            "(needed to run commands inside the session's containers)"
        )
    return found


def exec_argv(
    container: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: bool,
    tty: bool,
    workdir: str | None = None,
) -> list[str]:
    """``docker exec`` of ``argv`` in ``container``; ``env``'s values come from our environment."""
    command = [docker_cli(), "exec"]
    if stdin:
        command.append("-i")
    if tty:
        command.append("-t")
    if workdir:
        command += ["-w", workdir]
    for name in env:
        command += ["-e", name]
    return [*command, container, *argv]


def terminal() -> bool:
    """Whether we talk to a person: a TTY only then, never on piped streams."""
    return sys.stdin.isatty() and sys.stdout.isatty()


class DockerExecTools(Tools):
    """The engine's client tools from the database container: their version always matches."""

    def __init__(self, container: str, endpoint: Endpoint) -> None:
        self.container = container
        self.endpoint = endpoint  # the database as seen from inside its own container
        self._has: dict[str, bool] = {}

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        command = exec_argv(self.container, argv, env, stdin=stdin is not None, tty=False)
        return subprocess.Popen(
            command,
            env=child_env(env),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )

    def run_interactive(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        command = exec_argv(self.container, argv, env, stdin=True, tty=terminal())
        return run_foreground(command, env=child_env(env))

    def has(self, tool: str) -> bool:
        if tool not in self._has:
            probe = exec_argv(self.container, ["sh", "-c", 'command -v "$1"', "sh", tool], {},
                              stdin=False, tty=False)
            self._has[tool] = subprocess.run(
                probe, stdin=subprocess.DEVNULL, capture_output=True
            ).returncode == 0
        return self._has[tool]
