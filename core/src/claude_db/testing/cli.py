"""Running the installed ``claude-db``/``claude-session`` as real processes, and the
one-line user error every command owes a bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: environment variables of claude-db and of database clients: never inherited by test CLIs
OUR_VARIABLES = ("CLAUDE_", "DATABASE_URL", "DB_", "PG", "MYSQL", "MARIADB", "MONGO", "DOCKER_HOST")
#: variables that would make a CLI import modules from somewhere else than its environment
FOREIGN_PYTHON = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")
#: where this Python's ``claude-db``/``claude-session`` are installed
BIN = Path(sys.executable).parent
#: what test CLIs wait for a server to be ready (``CLAUDE_DB_READY_TIMEOUT``): the default 60 s
#: is too short for a loaded test machine (a docker start once took longer); the wait
#: guards against a hang only
TEST_ENV = {"CLAUDE_DB_READY_TIMEOUT": "600"}


@dataclass
class CliResult:
    """What one CLI run did."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str
    #: stdout as it came (``stdout`` is decoded text): binary dumps (e.g. MongoDB's) need it
    raw_stdout: bytes = field(default=b"", repr=False)

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.code}\n--- stdout\n{self.stdout}"
            f"--- stderr\n{self.stderr}"
        )


#: what runs a CLI and tells what it did: ``cli("claude-db", "status") -> CliResult``
#: (a :class:`ClaudeCli`, or a test suite's own runner)
Cli = Callable[..., CliResult]


@dataclass
class ClaudeCli:
    """Runs ``claude-db``/``claude-session`` from ``bin_dir`` as real processes.

    The environment is the caller's without any claude-db or database-client variable,
    plus ``CLAUDE_DB_STATE_DIR=state_dir`` and ``env``; ``bin_dir`` leads ``PATH``.
    """

    state_dir: Path
    workdir: Path
    bin_dir: Path = BIN
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(OUR_VARIABLES) and key not in FOREIGN_PYTHON
        }
        base["PATH"] = os.pathsep.join([str(self.bin_dir), base.get("PATH", os.defpath)])
        base["CLAUDE_DB_STATE_DIR"] = str(self.state_dir)
        return {**base, **TEST_ENV, **self.env, **(extra or {})}

    def __call__(
        self,
        *argv: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        input: bytes | str | None = None,
        timeout: float = 300,
    ) -> CliResult:
        program = self.bin_dir / argv[0]
        if not program.exists():
            raise FileNotFoundError(f"{argv[0]} is not installed in {self.bin_dir}")
        proc = subprocess.run(
            [str(program), *argv[1:]],
            cwd=cwd or self.workdir,
            env=self.environment(env),
            input=input.encode() if isinstance(input, str) else input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        return CliResult(
            list(argv), proc.returncode, proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"), raw_stdout=proc.stdout,
        )

    def db(self, *argv: str, **kwargs: Any) -> CliResult:
        return self("claude-db", *argv, **kwargs)

    def session(self, *argv: str, **kwargs: Any) -> CliResult:
        return self("claude-session", *argv, **kwargs)

    def ok(self, *argv: str, **kwargs: Any) -> CliResult:
        """Run and insist on exit 0."""
        result = self(*argv, **kwargs)
        assert result.code == 0, result
        return result


def assert_one_line_error(result: CliResult | Any, code: int) -> None:
    """A user error: exit ``code``, exactly one ``error: `` line on stderr, no traceback."""
    assert result.code == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result
    assert lines[0].startswith("error: "), result
    assert "Traceback" not in result.stderr + result.stdout, result


def read_dotenv(workdir: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v or "" for k, v in dotenv_values(workdir / ".env").items()}


def run_on_terminal(argv: list[str], *, cwd: Path, wait_for: bytes = b"",
                    lines: tuple[str, ...] = (), timeout: float = 180) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdin, stdout and stderr, as a person would.

    Once the output shows ``wait_for``, ``lines`` are typed. Returns the exit code and
    everything the terminal showed (``\\r`` removed).
    """
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    shown, typed = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not typed and wait_for in shown:
                os.write(master, "".join(f"{line}\n" for line in lines).encode())
                typed = True
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every process let go of the terminal
                break
            if not data:
                break
            shown += data
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, shown.decode(errors="replace").replace("\r", "")
