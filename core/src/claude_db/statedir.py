"""Trust in the state directory: we act only on what no other user could have written.

``gc`` and an interrupted ``start``'s clean-up delete directories and stop processes that
the state directory names. If another user could write it (a ``CLAUDE_DB_STATE_DIR``
under ``/tmp``, a shared relative path), they could name any directory or process for us
to remove, so such a state directory is refused, with the reason and the fix.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import uuid
from pathlib import Path

from claude_db.errors import UsageError

OWN_DIR = "set CLAUDE_DB_STATE_DIR to a directory of your own"


class UnsafeStateError(UsageError):
    """A state directory, or something in it, that another user may have changed."""


def check_state_dir(path: Path) -> None:
    """Refuse ``path`` as a state directory unless it and every directory above it
    are safe from other users (as ``ssh`` treats ``~/.ssh``). ``path`` need not exist."""
    problem = unsafe(path, follow=True)
    if problem:
        yours = path.stat().st_uid == os.geteuid()
        fix = f"run chmod go-w {path}, or {OWN_DIR}" if yours else OWN_DIR
        raise UnsafeStateError(f"state directory {path} {problem}: {fix}")
    for where in (path.absolute(), path.resolve()):  # the way given, and where it leads
        for parent in [p for p in where.parents if p.exists()]:
            problem = _unsafe_parent(parent)
            if problem:
                raise UnsafeStateError(
                    f"state directory {path} is inside {parent}, which {problem}: "
                    f"{OWN_DIR} outside it"
                )


def check_owned(path: Path, what: str) -> None:
    """Refuse ``path`` (in the state directory) unless it is ours, not a link, and no one
    else may write it."""
    problem = unsafe(path)
    if problem:
        raise UnsafeStateError(f"{what} {path} {problem}: claude-db trusts nothing another "
                               "user may have written; remove it if it is not yours")


def unsafe(path: Path, *, follow: bool = False) -> str | None:
    """Why ``path`` is not ours alone to trust, or None if it is (or does not exist);
    ``follow``: if ``path`` is a link, its target counts."""
    try:
        info = path.stat() if follow else path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link: claude-db follows none inside its state directory"
    if info.st_uid != os.geteuid():
        return f"belongs to {user_name(info.st_uid)}, not to you ({user_name(os.geteuid())})"
    if _writable_by_others(info):
        return f"may be changed by other users (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


ID_FILE = "id"


def state_id(state_dir: Path) -> str:
    """A random id of this state directory, made once (``<state>/id``): what marks the
    resources it made on a shared engine. Its path is no such mark: the same path
    (``/root/.local/state/claude-db``) is another machine's state directory too."""
    path = state_dir / ID_FILE
    if not path.exists():
        make_dirs(state_dir)
        draft = state_dir / f".{ID_FILE}.{os.getpid()}.{uuid.uuid4().hex}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(uuid.uuid4().hex + "\n")
        try:
            os.link(draft, path)  # never replaces one made meanwhile: every command agrees
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    check_owned(path, "the state directory's id file")
    value = path.read_text().strip()
    if len(value) != 32 or not all(c in "0123456789abcdef" for c in value):
        raise UnsafeStateError(f"{path} is not a claude-db state id: remove it (the next "
                               "command makes another; its old Docker resources are then "
                               "left to you)")
    return value


def make_dirs(path: Path, mode: int = 0o711) -> None:
    """Create ``path`` and its missing parents with ``mode`` whatever the umask
    (0711: a server running as another user must get through to its data directory)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for part in reversed(missing):
        try:
            part.mkdir(mode=mode)
        except FileExistsError:
            continue  # made meanwhile by another command
        os.chmod(part, mode)  # mkdir's mode is filtered by the umask


def make_private_dir(path: Path) -> None:
    """``path`` as a directory (0700) nobody else may enter: made, or checked if it exists."""
    make_dirs(path.parent)
    try:
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)
    except FileExistsError:
        info = path.lstat()
        if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
                or stat.S_IMODE(info.st_mode) & 0o077):
            raise UnsafeStateError(
                f"{path} must be a directory of yours that nobody else may enter (mode 0700): "
                "remove it (the next command makes it again)"
            ) from None


def _unsafe_parent(path: Path) -> str | None:
    info = path.stat()
    if info.st_uid not in (0, os.geteuid()):
        return f"belongs to {user_name(info.st_uid)}"
    if _writable_by_others(info) and not info.st_mode & stat.S_ISVTX:  # /tmp is sticky: fine
        return f"other users may change (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def _writable_by_others(info: os.stat_result) -> bool:
    """Whether a user other than the owner may write: the world, or a group that is not
    the owner's private group (a group of their own name and nobody else, which is
    what ``umask 002`` systems give every user)."""
    if info.st_mode & stat.S_IWOTH:
        return True
    return bool(info.st_mode & stat.S_IWGRP) and not _private_group(info.st_gid, info.st_uid)


def _private_group(gid: int, uid: int) -> bool:
    try:
        group, user = grp.getgrgid(gid), pwd.getpwuid(uid)
    except KeyError:
        return False
    return group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
