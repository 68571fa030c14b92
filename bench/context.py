"""What every case gets: the options of this run, the workspace, and shared helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from bench import pg
from bench.harness import Measurement
from bench.system import Workspace, as_user, processes_under, run

PEERS = Path(__file__).resolve().parent / "peers"


@dataclass
class Options:
    quick: bool = False
    rounds: int | None = None  # overrides every case's default
    warmup: int = 1
    dump_mb: int | None = None  # size of the export/import database
    sessions: int = 20  # density
    reset_tables: int = 50
    reset_rows: int = 100_000


@dataclass
class Context:
    ws: Workspace
    options: Options
    notes: list[str] = field(default_factory=list)

    def rounds(self, full: int, quick: int) -> int:
        if self.options.rounds is not None:
            return self.options.rounds
        return quick if self.options.quick else full

    def start_session(self, name: str, *extra: str) -> tuple[Path, dict[str, str]]:
        """``claude-session start`` (untimed helper); the work directory and its ``.env``."""
        workdir = self.ws.dir(f"work-{name}")
        self.ws.cli("claude-session", "start", name, *extra, cwd=workdir)
        self.settle()
        return workdir, read_dotenv(workdir)

    def settle(self, timeout: float = 120) -> None:
        """Wait for the product's background work (the spare cluster copy) to end.

        Called in the product's untimed teardown: work the product defers is then not
        counted in its start, but it cannot slow down the baseline's next run either.
        """
        templates = self.ws.state / "templates"
        deadline = time.monotonic() + timeout
        while processes_under(templates) and time.monotonic() < deadline:
            time.sleep(0.02)


def read_dotenv(workdir: Path) -> dict[str, str]:
    return {k: v for k, v in dotenv_values(workdir / ".env").items() if v is not None}


def answer_work(answer: dict[str, Any]) -> dict[str, Any]:
    """What a start case compares: the first query's answer and the server that gave it."""
    return {
        "answer": [answer["user"], answer["database"], answer["version"]],
        "server": pg.server_of(answer),
    }


# -- peers: run as their own processes, timed until they print READY ----------------------


def peer_python(user: str | None) -> tuple[list[str], dict[str, str]] | str:
    """An interpreter ``user`` can run with our site-packages; or why there is none.

    Our interpreter may live where the service user cannot read it (a pyenv under
    /root); a system python of the same version with our site-packages on PYTHONPATH
    runs the same libraries.
    """
    if not as_user(user):
        return [sys.executable], {}
    try:
        probe = subprocess.run([sys.executable, "-c", "pass"], capture_output=True, **as_user(user))
        if probe.returncode == 0:
            return [sys.executable], {}
    except OSError:
        pass  # not even executable for that user
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if Path(candidate).is_file():
            paths = sysconfig.get_paths()
            site = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))
            return [candidate], {"PYTHONPATH": site}
    return f"no python{version} that the {user} user can run (ours is not readable by it)"


def missing_module(module: str, package: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{package} is not installed (.venv/bin/pip install {package})"
    return None


def run_peer(script: str, args: dict[str, Any], *, user: str | None = None,
             env: dict[str, str] | None = None, timeout: float = 300,
             describe: Callable[[dict[str, Any]], dict[str, Any]] = answer_work) -> Measurement:
    """Run ``bench/peers/<script>``; the time is from launch until it prints ``READY``.

    The peer then waits for a line on stdin before tearing down (untimed), so the
    server that answered can still be inspected.
    """
    python = peer_python(user)
    if isinstance(python, str):
        raise RuntimeError(python)
    argv, extra = python
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*argv, str(PEERS / script), json.dumps(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
            env={**os.environ, **(env or {}), **extra}, cwd=args.get("cwd"), **as_user(user),
        )
        assert proc.stdin is not None and proc.stdout is not None
        line = proc.stdout.readline()
        seconds = time.perf_counter() - started
        try:
            if not line.startswith(b"READY "):
                proc.wait(timeout=timeout)
                errors.seek(0)
                tail = errors.read().decode(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"peer {script} failed: {' | '.join(tail) or line!r}")
            answer = json.loads(line[len(b"READY "):])
            work = describe(answer)
        finally:
            if proc.poll() is None:
                proc.stdin.write(b"done\n")
                proc.stdin.close()
                proc.wait(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"peer {script} exited {proc.returncode} while tearing down")
    return Measurement(seconds, work)


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


__all__ = ["Context", "Options", "answer_work", "read_dotenv", "run", "run_peer"]
