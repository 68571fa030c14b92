"""File locks: the one implementation of every lock claude-db takes.

``flock`` needs only a read descriptor, so a lock file anyone may open is a lock anyone
may hold forever. Ours live in a private (0700) ``.locks`` directory beside what they
guard and are made 0600: no other user can even open them. The holder writes its pid
into the file, so that a command kept waiting can say whom it waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from claude_db.statedir import make_private_dir

LOCKS_DIR = ".locks"
WAIT_NOTICE = 3.0  # seconds of waiting before a command says what it waits for


def lock_for(directory: Path) -> Path:
    """The lock file guarding ``directory`` (which need not exist):
    ``<its parent>/.locks/<its name>.lock``, that private directory made if need be.
    Links are resolved first, so that every path to a directory (a state directory's
    linked template cache) finds the same lock."""
    real = directory.resolve()
    make_private_dir(real.parent / LOCKS_DIR)
    return real.parent / LOCKS_DIR / f"{real.name}.lock"


@contextlib.contextmanager
def hold(path: Path, what: str) -> Iterator[None]:
    """Hold the lock ``path``, waiting while another process holds it; a wait longer
    than :data:`WAIT_NOTICE` is announced once on stderr, naming ``what`` we wait for."""
    while True:
        fd = _open(path)
        try:
            if not _take(fd):
                _wait(fd, what)
            if _still_at(path, fd):
                with _holding(fd):
                    yield
                return
            # its holder removed the file (a session deleted, gc): it locks nothing any
            # more; take the one made after it
        finally:
            os.close(fd)


@contextlib.contextmanager
def try_hold(path: Path, *, create: bool = True) -> Iterator[bool]:
    """Hold the lock ``path`` if it is free right now; yield whether we hold it.

    A missing lock file counts as free without ``create``: a session's lock exists
    before anything of the session does (``start`` locks, then makes things).
    """
    if not create and not path.exists():
        yield True
        return
    try:
        fd = _open(path)
    except OSError:
        yield False
        return
    try:
        if not (_take(fd) and _still_at(path, fd)):
            yield False
            return
        with _holding(fd):
            yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_hold_for_child(path: Path) -> Iterator[int | None]:
    """Take the lock ``path`` if it is free right now, for a detached child to keep: yield
    a descriptor to pass to it (``pass_fds``), or None when another process holds the lock.

    A lock belongs to the open file, not to a process: the child holds it until it exits,
    however long after we do.
    """
    fd = _open(path)
    try:
        yield fd if _take(fd) and _still_at(path, fd) else None
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_file(file: IO[Any]) -> Iterator[None]:
    """Hold a lock on an open file that others open to change it too (``.git/info/exclude``,
    which worktrees share): what was written is flushed before the lock is released."""
    fcntl.flock(file, fcntl.LOCK_EX)
    try:
        yield
    finally:
        file.flush()
        fcntl.flock(file, fcntl.LOCK_UN)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _take(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_at(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file we locked (gc and ``delete`` remove the lock
    files of gone sessions while holding them)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _holding(fd: int) -> Iterator[None]:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # released: no pid that may belong to another process later


def _wait(fd: int, what: str) -> None:
    notice = threading.Timer(WAIT_NOTICE, _announce, (fd, what))
    notice.daemon = True
    notice.start()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        notice.cancel()


def _announce(fd: int, what: str) -> None:
    # empty: another program's lock, or one a command takes or releases right now
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(os.pread(fd, 32, 0).split()[0])
        print(f"waiting for {what}: another claude-db command (pid {pid}) holds it",
              file=sys.stderr, flush=True)
        return
    print(f"waiting for {what}: another process holds it", file=sys.stderr, flush=True)
