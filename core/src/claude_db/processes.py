"""The one place that spawns processes (client tools, servers, shells) and tells them
apart.

Processes are inspected through psutil. Only :func:`process_identity` reads Linux's
``/proc`` itself: psutil's start times are wall-clock times that move when the clock is
set, and an identity must never change (it is recorded and compared much later). So the
local runtime, which relies on identities, is Linux only; nothing else here is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

from claude_db.engine import Endpoint, RunAs, Tools
from claude_db.errors import ClaudeDbError, ToolMissingError


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    run_as: RunAs | None = None,
    cwd: Path | None = None,
    input: str | None = None,
) -> str:
    """Run a short command to completion; raise with its last output lines if it fails."""
    proc: subprocess.CompletedProcess[str] = subprocess.run(
        list(argv),
        env=child_env(env or {}),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        cwd=cwd,
        **_identity(run_as),
    )
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ClaudeDbError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout + proc.stderr


def spawn_daemon(
    argv: Sequence[str], *, log: Path | None, run_as: RunAs | None, cwd: Path,
    env: Mapping[str, str], pass_fds: Sequence[int] = (),
) -> int:
    """Start a long-running server detached from this process; return its pid.

    The child gets its own session so it outlives the CLI and ignores our
    terminal's signals; its output goes to ``log`` (None: nowhere). ``env`` is its whole
    environment: nothing of ours (tokens, passwords) is passed on unless named there, and
    no open file but ``pass_fds``.
    """
    with open_log(log) if log else open(os.devnull, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
            **_identity(run_as),
        )
    return proc.pid


def open_log(path: Path) -> IO[bytes]:
    """``path`` opened to append, never through a link and only if it is a plain file: it
    lies in a directory the server's user owns, and we may be root (that user could put a
    link to ``/etc/...`` there, or a FIFO that would block us)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                 | os.O_NONBLOCK, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ClaudeDbError(f"{path} is not a plain file: refusing to write the server log")
    return os.fdopen(fd, "ab")


def read_log_tail(path: Path, size: int = 64 * 1024) -> str | None:
    """The last ``size`` bytes of a log in a directory the server's user owns (no link, no
    FIFO: see :func:`open_log`); None when there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as log:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        log.seek(max(info.st_size - size, 0))
        return log.read().decode(errors="replace")


def _identity(run_as: RunAs | None) -> dict[str, Any]:
    if run_as is None or run_as.uid == os.geteuid():
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def run_shell(workdir: str, env: Mapping[str, str]) -> int:
    """An interactive shell in ``workdir`` with the session's environment."""
    shell = os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh"
    return run_foreground([shell], cwd=workdir, env=child_env(env))


def run_foreground(argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None) -> int:
    """Run an interactive program to its end and return its status.

    Ctrl-C reaches the whole foreground process group: it is the program's to handle
    (psql cancels the running query), never a reason for us to stop waiting and kill it.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        # a Python handler, not SIG_IGN: the child must not inherit ignoring SIGINT
        previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        return subprocess.call(list(argv), env=env, cwd=cwd)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class HostTools(Tools):
    """Client tools from this machine: a given bin directory, else ``PATH``."""

    def __init__(self, endpoint: Endpoint, bindir: Path | None = None, *,
                 admin_endpoint: Endpoint | None = None) -> None:
        self.endpoint = endpoint  # the same from claude-db's process: no client_endpoint
        self.bindir = bindir
        self.admin_endpoint = admin_endpoint

    def _resolve(self, tool: str) -> str:
        if self.bindir is not None and (self.bindir / tool).exists():
            return str(self.bindir / tool)
        found = shutil.which(tool)
        if found is None:
            raise ToolMissingError(f"{tool} is not installed here (needed for this command)")
        return found

    def has(self, tool: str) -> bool:
        try:
            self._resolve(tool)
        except ToolMissingError:
            return False
        return True

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        command = [self._resolve(argv[0]), *argv[1:]]
        return subprocess.Popen(
            command, env=child_env(env), stdin=stdin, stdout=stdout, stderr=stderr,
            cwd=self.workdir,
        )

    def run_interactive(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        command = [self._resolve(argv[0]), *argv[1:]]
        return run_foreground(command, env=child_env(env))


def is_running(pid: int) -> bool:
    """Whether ``pid`` is alive and not a zombie; our own exited children are reaped first.

    A process we may not inspect counts as alive.
    """
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.AccessDenied:
        return True
    except psutil.Error:
        return False


def process_exists(pid: int) -> bool:
    """Whether ``pid`` names a process, a zombie included (it still holds the pid)."""
    return psutil.pid_exists(pid)


def process_owner(pid: int) -> int | None:
    """The user ``pid`` runs as, or None if it is gone or runs with two identities (a
    real user other than its effective one: a set-user-ID program someone else started)."""
    try:
        uids = psutil.Process(pid).uids()
    except psutil.Error:
        return None
    return uids.real if uids.real == uids.effective else None


def process_cmdline(pid: int) -> str | None:
    """The arguments of ``pid`` joined by spaces, or None if it is gone or hidden."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes other than this one whose arguments contain ``text``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if text in cmdline and proc.pid != os.getpid() and is_running(proc.pid):
            found.append((proc.pid, cmdline))
    return found


def process_identity(pid: int) -> str | None:
    """What tells process ``pid`` from any other that had or will have its pid (the
    boot, and when in it the process started), or None if there is no such process.
    Record it with a pid: a pid alone may name another program later.

    Linux only (see the module's docstring): the boot's id and the start in clock ticks
    since boot, both from ``/proc``, neither moved by setting the clock.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # field 22 (proc(5)); the command name (field 2) may hold spaces and parentheses:
    # split after its end
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[22 - 3]}"


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, to about a second)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP in the block (a second Ctrl-C, or the terminal closing,
    must not cut a cleanup short)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and receives the signals)
        return
    # a handler, not SIG_IGN: programs started meanwhile must not inherit deafness
    previous = {sig: signal.signal(sig, lambda *_: None)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
