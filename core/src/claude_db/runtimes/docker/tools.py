r"""Running a session's client tools: in a short-lived tools container when they may touch
the user's files, else with ``docker exec`` in the database container.

``psql -f q.sql``, ``\copy ... to 'out.csv'`` and an imported script's ``\i``, ``\ir`` and
``\copy ... from`` name files on the user's machine. The tools container runs the database
container's own image (the client matches the server) on the session's network, as the
user (files it writes are theirs), with the current directory, the imported file's
directory and the directories of files named in the arguments bind-mounted at the same
paths. Dumps and restores that touch no file of the user's (snapshots) use ``docker exec``,
which starts faster.

On a remote engine (``DOCKER_HOST`` names another machine) the user's files are not
there to mount: everything runs with ``docker exec`` in the database container, files
travel on stdin/stdout only (an import's ``\i`` of a relative file, ``psql -f FILE``
cannot see them).

The docker CLI, not the SDK: it streams stdin/stdout as a plain process does (dumps,
imports) and handles the terminal for interactive clients. Secrets never go on the
command line: ``-e NAME`` without a value makes the CLI take it from its environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from claude_db.engine import Endpoint, Tools
from claude_db.errors import ToolMissingError, UsageError
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
    cli: Sequence[str] = (),
) -> list[str]:
    """``docker exec`` of ``argv`` in ``container``; ``env``'s values come from our environment.

    ``cli``: the client's argv when not ``docker`` (see :meth:`DockerTools.cli`)."""
    command = [*(cli or [docker_cli()]), "exec"]
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


#: directories of the image a same-path bind mount must not hide (the tools live there)
SYSTEM_DIRS = ("/bin", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys",
               "/usr")


class DockerTools(Tools):
    """The engine's client tools for a session's database (see the module's docstring)."""

    def __init__(self, container: str, image: str, network: str, endpoint: Endpoint,
                 labels: Mapping[str, str], *, remote: bool = False,
                 client_endpoint: Endpoint | None = None) -> None:
        self.container = container  # the database container's id: docker exec
        self.image = image  # its image's id: the tools container
        self.network = network  # the session network's id
        self.endpoint = endpoint  # the database by its name on the session's network
        self.client_endpoint = client_endpoint  # the database as claude-db's process reaches it
        self.labels = labels  # the session's: delete and gc remove a tools container left over
        self.remote = remote  # the engine is on another machine: no bind mounts
        self._has: dict[str, bool] = {}

    # Another Docker-compatible engine (the podman plugin) overrides these two.
    @classmethod
    def cli(cls) -> list[str]:
        """The command-line client's argv (it takes docker's ``exec`` and ``run`` options)."""
        return [docker_cli()]

    def run_options(self) -> list[str]:
        """Options of the tools container beyond the common ones."""
        if os.getuid() == 0:
            return []
        # as the user: what it writes is theirs; a HOME it may write
        return ["--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp",
                *(f"--group-add={group}" for group in os.getgroups())]

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        if self.workdir is not None and not self.remote:  # the user's files: an import
            command = self._run_argv(argv, env, self.workdir, stdin=stdin is not None,
                                     tty=False)
        else:
            command = exec_argv(self.container, argv, env, stdin=stdin is not None, tty=False,
                                cli=self.cli())
        return subprocess.Popen(
            command,
            env=child_env(env),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )

    def run_interactive(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        if self.remote:
            command = exec_argv(self.container, argv, env, stdin=True, tty=terminal())
        else:
            command = self._run_argv(argv, env, self.workdir or Path.cwd(), stdin=True,
                                     tty=terminal())
        return run_foreground(command, env=child_env(env))

    def _run_argv(self, argv: Sequence[str], env: Mapping[str, str], workdir: Path, *,
                  stdin: bool, tty: bool) -> list[str]:
        """``docker run`` of ``argv`` in a tools container working in ``workdir``."""
        command = [*self.cli(), "run", "--rm", "--pull", "never", "--log-driver", "none",
                   "--network", self.network, "--entrypoint", argv[0], "-w", str(workdir)]
        if stdin:
            command.append("-i")
        if tty:
            command.append("-t")
        command += self.run_options()
        for name, value in self.labels.items():
            command += ["--label", f"{name}={value}"]
        for directory in _directories(workdir, argv[1:]):
            command += ["--mount", ",".join(["type=bind", _csv(f"source={directory}"),
                                             _csv(f"target={directory}")])]
        for name in env:
            command += ["-e", name]
        return [*command, self.image, *argv[1:]]

    def has(self, tool: str) -> bool:
        if tool not in self._has:
            probe = exec_argv(self.container, ["sh", "-c", 'command -v "$1"', "sh", tool], {},
                              stdin=False, tty=False, cli=self.cli())
            self._has[tool] = subprocess.run(
                probe, stdin=subprocess.DEVNULL, capture_output=True
            ).returncode == 0
        return self._has[tool]


def _csv(field: str) -> str:
    """One field of ``--mount``'s value, which Docker reads as CSV (a path may hold ``,``)."""
    return '"' + field.replace('"', '""') + '"' if any(c in field for c in ',"') else field


def _directories(workdir: Path, args: Sequence[str]) -> list[Path]:
    """What the tools container mounts: the current and the working directory, and the
    directories of existing files (or of new files in existing directories) that
    ``args`` name outside them; none inside another."""
    wanted = [Path.cwd(), workdir]
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if "/" not in value or "\0" in value:
            continue
        path = (workdir / value).resolve()  # what the tool would open (or write)
        directory = path if path.is_dir() else path.parent
        if directory.is_dir():
            wanted.append(directory)
    chosen: list[Path] = []
    for directory in sorted({d.resolve() for d in wanted}, key=lambda d: len(d.parts)):
        if not any(directory.is_relative_to(outer) for outer in chosen):
            _require_mountable(directory)
            chosen.append(directory)
    return chosen


def _require_mountable(directory: Path) -> None:
    hidden = [d for d in SYSTEM_DIRS if Path(d).is_relative_to(directory)
              or directory.is_relative_to(d)]
    if hidden or directory == Path("/"):
        raise UsageError(
            f"on the docker runtime the client sees your files by mounting {directory} into "
            f"its container, where it would hide the image's {hidden[0] if hidden else '/'}; "
            "run it from (and name files in) a project directory"
        )
