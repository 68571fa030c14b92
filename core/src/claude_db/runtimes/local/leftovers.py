"""What the local runtime leaves behind when a session goes wrong: server processes still
running in the directory of a session that is gone, and its socket directory in ``/tmp``.

Found only from records no other user could have made: pid files (``postmaster.pid``,
``mariadbd.pid``) in the server's data and socket directories, trusted for processes of
the file's owner that started before it was written (a pid used again later started
after). Never from a process's arguments: anyone can write those.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
from functools import partial
from pathlib import Path

from claude_db.processes import is_running, process_identity, process_owner, process_started_at
from claude_db.readiness import wait_until
from claude_db.runtime import Orphan
from claude_db.session import SessionStore
from claude_db.statedir import unsafe

STOP_WAIT = 5.0  # seconds a stray server gets to exit after SIGTERM before SIGKILL
SOCKET_DIR_PREFIX = "claude-db-"  # socket directories in /tmp (long state paths)


def session_leftovers(state_dir: Path) -> dict[str, list[Orphan]]:
    """Each session directory's live servers (by session name), and its socket directory
    in ``/tmp`` (removed once they stopped)."""
    root = SessionStore(state_dir).root
    if not root.is_dir():
        return {}
    found: dict[str, list[Orphan]] = {}
    for directory in sorted(root.iterdir()):
        if directory.name.startswith(".") or unsafe(directory) is not None:
            continue  # never a link: what it leads to is not ours to judge
        name, server = directory.name, directory / "server"
        running = list(servers(server).items())
        orphans = [Orphan("process", str(pid), f"server of gone session {name}",
                          remove=partial(_stop_server, pid, identity, server,
                                         last=(pid, identity) == running[-1]))
                   for pid, identity in running]
        if not running and (sockets := socket_dirs(server)):
            orphans.append(Orphan("directory", str(sockets[0]),
                                  f"socket directory of gone session {name}",
                                  remove=partial(remove_socket_dir, server)))
        if orphans:
            found[name] = orphans
    return found


def servers(server: Path) -> dict[int, str]:
    """The live server processes with pid files in the session's ``server`` directory, with
    their process identities."""
    found: dict[int, str] = {}
    for pid_file in _pid_files(server):
        try:
            info = pid_file.lstat()
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        identity, started = process_identity(pid), process_started_at(pid)
        if (pid > 1 and pid != os.getpid() and identity and started is not None
                and started <= info.st_mtime + 1 and process_owner(pid) == info.st_uid
                and _session_leader(pid)):
            found[pid] = identity
    return found


def _pid_files(server: Path) -> list[Path]:
    """``*.pid`` files in ``server/data`` and ``server/run``, following no link."""
    found: list[Path] = []
    for directory in (server, server / "data", server / "run"):
        if not _real_dir(directory):
            return found
        if directory != server:
            with contextlib.suppress(OSError):
                found += [p for p in directory.glob("*.pid")
                          if stat.S_ISREG(p.lstat().st_mode)]
    return found


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _session_leader(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def _stop_server(pid: int, identity: str, server: Path, *, last: bool) -> None:
    """Stop a stray server; after the last one, its socket directory goes too."""
    stop_process(pid, identity)
    if last:
        remove_socket_dir(server)


def stop_process(pid: int, identity: str) -> None:
    """SIGTERM, then SIGKILL to the whole process group (a server and its workers); each
    signal only while ``pid`` is still the process found (``identity``)."""

    def alive() -> bool:
        return is_running(pid) and process_identity(pid) == identity

    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not alive(), timeout=STOP_WAIT, interval=0.05):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not alive(), timeout=None)


def remove_socket_dir(server_dir: Path, recorded: str | None = None) -> None:
    """Remove a session's socket directory outside ``server_dir`` (see ``runtime._socket_dir``):
    the one ``recorded`` in its runtime state and the one ``server/run`` links to.

    The link and the directory are the server user's to change, so a path is only removed
    if it is what we made: a real directory ``/tmp/claude-db-*`` of ``server_dir``'s owner
    (nothing that user could not remove itself)."""
    for path in socket_dirs(server_dir, recorded):
        shutil.rmtree(path, ignore_errors=True)  # never follows a link


def socket_dirs(server_dir: Path, recorded: str | None = None) -> list[Path]:
    """The socket directories of ``server_dir`` that :func:`remove_socket_dir` removes."""
    found = {recorded} if recorded else set()
    with contextlib.suppress(OSError):
        found.add(os.readlink(server_dir / "run"))
    try:
        owner = server_dir.lstat().st_uid
    except OSError:
        return []
    mine = []
    for path in map(Path, sorted(found)):
        if path.parent == Path("/tmp") and path.name.startswith(SOCKET_DIR_PREFIX):
            with contextlib.suppress(OSError):
                info = path.lstat()
                if stat.S_ISDIR(info.st_mode) and info.st_uid == owner:
                    mine.append(path)
    return mine
