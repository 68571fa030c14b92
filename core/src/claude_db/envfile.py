"""The work directory's ``.env``: our keys in one marked block, the user's lines kept.

What ``start`` writes::

    # >>> claude-db session NAME (STATE_DIR) >>>
    CLAUDE_SESSION=NAME
    DATABASE_URL=postgresql://...
    # <<< claude-db session NAME <<<

The block names its owner (session and state directory), so a second session never takes
a live session's ``.env`` over and one state directory's ``delete`` never strips another's
keys. A line of the user's that sets one of our keys is kept as a comment,
``#[claude-db saved] DATABASE_URL=...``, and put back by ``delete``. The file is never
written through a symlink, always replaced atomically (0600), and values are quoted only
when they need it, so python-dotenv, ``set -a; . ./.env`` and ``docker run --env-file``
read the same values.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from claude_db.errors import UsageError
from claude_db.locks import hold_file
from claude_db.statedir import user_name

MARKER = "CLAUDE_SESSION"  # names the session a directory belongs to
SAVED = "#[claude-db saved] "
_BEGIN = re.compile(r"^# >>> claude-db session ([a-z0-9-]+) \((.*)\) >>>\s*$")
_END = re.compile(r"^# <<< claude-db session ")
#: characters a value may hold and still be written bare: the same for python-dotenv,
#: a POSIX shell and docker's --env-file (no quotes, no $, ~, #, spaces or glob magic)
_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")

# Lines python-dotenv cannot parse are the user's own: they are kept as they are, and a
# warning for each, on every read, would bury our output.
logging.getLogger("dotenv.main").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Owner:
    """Who wrote a ``.env``'s block: a session of a state directory (``None``: a
    claude-db from before blocks, which did not say)."""

    name: str
    state_dir: str | None

    def describe(self) -> str:
        where = f" of state directory {self.state_dir}" if self.state_dir else ""
        return f"session {self.name!r}{where}"


def format_value(value: str) -> str:
    """``value`` as a ``.env`` line holds it: bare when it can be, else single-quoted."""
    if _BARE.fullmatch(value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"


def owner(workdir: Path) -> Owner | None:
    """The session whose variables ``workdir/.env`` holds, if any."""
    return _Parsed(_read_text(workdir / ".env", follow=True) or "").owner


def write_env(workdir: Path, values: Mapping[str, str], me: Owner) -> list[str]:
    """Put ``values`` into ``workdir/.env`` as ``me``'s block (replacing a block already
    there); a line of the user's setting one of these keys is kept as a comment. Returns
    notes for the user."""
    path = workdir / ".env"
    parsed = _Parsed(_read_text(path) or "")
    saved = parsed.save_user_lines(set(values), me)
    _replace(path, parsed.render(_block(values, me)))
    names = list(values)
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    notes = [f"wrote {len(names)} variable{'s' * (len(names) != 1)} ({shown}) to {path}"]
    if saved:
        notes.append(f"note: your {', '.join(saved)} in .env {'is' if len(saved) == 1 else 'are'} "
                     "kept as a comment; claude-session delete puts "
                     f"{'it' if len(saved) == 1 else 'them'} back")
    kept_out = _keep_out_of_git(workdir)
    return [*notes, kept_out] if kept_out else notes


def refresh_env(workdir: Path, values: Mapping[str, str], me: Owner) -> list[str]:
    """Bring ``me``'s block in ``workdir/.env`` up to date, or write it if ``.env`` has no
    block (it was removed); another session's ``.env`` is left alone. Returns notes."""
    path = workdir / ".env"
    if not workdir.is_dir():
        return [f"note: the work directory {workdir} is gone; no .env written"]
    try:
        parsed = _Parsed(_read_text(path) or "")
    except UsageError as exc:  # a symlink: the database runs all the same
        return [f"warning: {exc}"]
    if parsed.owner is not None and not _same(parsed.owner, me):
        return [f"note: {path} belongs to {parsed.owner.describe()}; left alone"]
    if parsed.owner is None:
        return write_env(workdir, values, me)
    written = parsed.block_values()
    changed = [key for key, value in values.items() if written.get(key) != value]
    if changed or set(written) != set(values):
        _replace(path, parsed.render(_block(values, me)))
        return [f"updated {', '.join(changed) or 'the variables'} in {path}"]
    return []


def remove_env(workdir: Path, me: Owner) -> bool:
    """Remove ``me``'s block from ``workdir/.env`` and put the user's saved lines back;
    nothing if the block is someone else's. The file goes if nothing else is left."""
    path = workdir / ".env"
    try:
        text = _read_text(path)
    except UsageError:  # a symlinked .env is not ours to change
        return False
    if text is None:
        return False
    parsed = _Parsed(text)
    if parsed.owner is None or not _same(parsed.owner, me):
        return False
    remaining = parsed.render(None, restore=True)
    if remaining.strip():
        _replace(path, remaining)
    else:
        path.unlink()
    return True


def refuse_symlink(workdir: Path) -> None:
    """Fail (one line) if ``workdir/.env`` is a symlink: we never write through one."""
    path = workdir / ".env"
    if path.is_symlink():
        raise _symlink(path)


def dotenv_text(workdir: Path) -> str | None:
    """``workdir/.env`` as it is (``None``: there is none), to :func:`put_back` later."""
    return _read_text(workdir / ".env")


def put_back(workdir: Path, text: str | None) -> None:
    """Make ``workdir/.env`` what :func:`dotenv_text` returned (an interrupted start)."""
    path = workdir / ".env"
    if text is not None:
        _replace(path, text)
    elif not path.is_symlink():
        path.unlink(missing_ok=True)


def read_env(workdir: Path) -> dict[str, str]:
    """The values python-dotenv reads from ``workdir/.env`` (as written: never expanded)."""
    return _values(workdir / ".env")


def find_env(start: Path) -> tuple[Path, dict[str, str], str | None] | None:
    """The first ``.env`` naming a session in ``start`` or above it, as git finds its
    repository (a ``.env`` of the user's own further down, without ``CLAUDE_SESSION``, is
    passed by), but never above the top of a linked git worktree: one nested in another
    checkout (Claude Code's ``.claude/worktrees/NAME``) is a checkout of its own. With it,
    its values and the state directory that wrote its block (None: a claude-db from
    before blocks)."""
    for directory in (start, *start.parents):
        path = directory / ".env"
        if _trusted(path):
            with contextlib.suppress(OSError, ValueError):  # unreadable, or not text
                text = _read_text(path, follow=True) or ""
                values = {key: value for key, value in dotenv_values(
                    stream=io.StringIO(text), interpolate=False).items() if value is not None}
                if values.get(MARKER):
                    writer = _Parsed(text).owner
                    return path, values, writer.state_dir if writer else None
        if _linked_worktree_top(directory):
            return None
    return None


def worktree_top(start: Path) -> Path | None:
    """The top of the linked git worktree ``start`` is in, if it is in one."""
    return next((d for d in (start, *start.parents) if _linked_worktree_top(d)), None)


def _linked_worktree_top(directory: Path) -> bool:
    """Whether ``directory`` is a linked worktree's top: its ``.git`` is a file naming
    ``<repository>/worktrees/<id>`` (a submodule's names ``.../modules/...``; a clone's
    ``.git`` is a directory)."""
    try:
        with open(directory / ".git", encoding="utf-8", errors="replace") as git:
            first = git.readline()
    except OSError:  # none, or a directory
        return False
    return first.startswith("gitdir:") and Path(first[7:].strip()).parent.name == "worktrees"


def _trusted(path: Path) -> bool:
    """Whether ``path`` is a ``.env`` to take a session from: a file (not a link) of ours,
    root's, or its directory's owner's when nobody else may write that directory (a
    ``.env`` another user planted in ``/tmp`` above the work directory names nothing)."""
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            return False
        if info.st_uid in (os.geteuid(), 0):
            return True
        parent = path.parent.stat()
    except OSError:
        return False
    return info.st_uid == parent.st_uid and not parent.st_mode & 0o022


# -- the file ------------------------------------------------------------------------------


class _Parsed:
    """A ``.env`` as pieces of text, each a line or a binding (a value may span lines)."""

    def __init__(self, text: str) -> None:
        self.pieces: list[tuple[str, str | None, bool]] = []  # (text, key, in our block)
        self.owner: Owner | None = None
        legacy: str | None = None
        in_block = False
        for binding in parse_stream(io.StringIO(text)):
            if binding.key is not None and not binding.error:
                self.pieces.append((binding.original.string, binding.key, in_block))
                if binding.key == MARKER and not in_block and binding.value:
                    legacy = binding.value
                continue
            for line in binding.original.string.splitlines(keepends=True):
                if begin := _BEGIN.match(line):
                    in_block = True
                    self.owner = self.owner or Owner(begin.group(1), begin.group(2))
                    self.pieces.append((line, None, True))
                elif in_block and _END.match(line):
                    self.pieces.append((line, None, True))
                    in_block = False
                else:
                    self.pieces.append((line, None, in_block))
        if self.owner is None and legacy:  # written by a claude-db from before blocks
            self.owner = Owner(legacy, None)

    def block_values(self) -> dict[str, str]:
        text = "".join(piece for piece, key, ours in self.pieces if ours and key)
        return {k: v for k, v in dotenv_values(stream=io.StringIO(text),
                                               interpolate=False).items() if v is not None}

    def save_user_lines(self, keys: set[str], me: Owner) -> list[str]:
        """Comment out the user's lines that set ``keys``; returns their keys. Lines of a
        block-less (older) claude-db are not the user's: they go."""
        legacy = self.owner is not None and self.owner.state_dir is None
        saved: list[str] = []
        pieces: list[tuple[str, str | None, bool]] = []
        for text, key, ours in self.pieces:
            if ours or key not in keys:
                pieces.append((text, key, ours))
            elif not legacy:
                saved.append(key)
                commented = "".join(SAVED + line for line in text.splitlines(keepends=True))
                pieces.append((commented if commented.endswith("\n") else commented + "\n",
                               None, False))
        self.pieces = pieces
        return [key for key in saved if key != MARKER]

    def render(self, block: str | None, *, restore: bool = False) -> str:
        """The file with our block replaced by ``block`` (``None``: removed), in place or
        at the end; ``restore``: the saved lines uncommented."""
        out: list[str] = []
        placed = block is None
        for text, _, ours in self.pieces:
            if ours:
                if not placed:
                    out.append(block or "")
                    placed = True
                continue
            if restore and text.startswith(SAVED):
                text = text[len(SAVED):]
            out.append(text)
        body = "".join(out)
        if not placed:
            body += ("" if not body or body.endswith("\n") else "\n") + (block or "")
        return body


def _block(values: Mapping[str, str], me: Owner) -> str:
    lines = [f"# >>> claude-db session {me.name} ({me.state_dir}) >>>\n"]
    lines += [f"{key}={format_value(value)}\n" for key, value in values.items()]
    lines.append(f"# <<< claude-db session {me.name} <<<\n")
    return "".join(lines)


def _same(found: Owner, me: Owner) -> bool:
    return found.name == me.name and found.state_dir in (None, me.state_dir)


def _values(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    values = dotenv_values(path, interpolate=False)  # as written: ours are never expanded
    return {k: v for k, v in values.items() if v is not None}


def _read_text(path: Path, *, follow: bool = False) -> str | None:
    """The file's text (``None``: no file). Unless ``follow``, a symlink is refused: what
    we read we rewrite, and never through a link that may lead out of the work directory."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not follow and path.is_symlink():  # dangling: still a link
            raise _symlink(path) from None
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory opens too, then fails to read
        os.close(fd)
        raise UsageError(f"{os.path.abspath(path)} is not a file: move it away for claude-db "
                         "to write .env there")
    with os.fdopen(fd, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()


def _symlink(path: Path) -> UsageError:
    return UsageError(
        f"{path} is a symlink (to {os.readlink(path)}); claude-db does not write through it: "
        "replace it with a file, or use another work directory"
    )


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a 0600 file beside it, renamed over it (a
    rename replaces a link itself, never what it points to)."""
    if path.is_symlink():
        raise _symlink(path)
    try:
        previous: os.stat_result | None = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        previous = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".env.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(text)
            out.flush()
            if os.geteuid() == 0:  # root keeps the owner's file theirs (a new one: the
                owner = previous or path.parent.stat()  # work directory's owner's)
                os.fchown(out.fileno(), owner.st_uid, owner.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- git ------------------------------------------------------------------------------------


def _keep_out_of_git(workdir: Path) -> str | None:
    """If ``.env`` is in a git work tree and not ignored, add it to ``.git/info/exclude``
    and check that git now ignores it; if git already tracks it, no ignore rule helps:
    warn. Returns a note for the user. Never edits the user's ``.gitignore``."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(workdir), *args], capture_output=True, text=True, check=False
        )

    try:
        if git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
            return None
        if git("ls-files", "--error-unmatch", ".env").returncode == 0:
            return ("warning: git tracks .env, so the password in it would be committed: "
                    "git rm --cached .env")
        if git("check-ignore", "-q", ".env").returncode == 0:
            return None
        exclude = Path(os.path.abspath(
            workdir / git("rev-parse", "--git-path", "info/exclude").stdout.strip()))
        dotenv = os.path.abspath(workdir / ".env")
        relative = os.path.relpath(dotenv, _toplevel(workdir))
        pattern = f"/{_ignore_pattern(relative)}"
        refused = _add_line(exclude, pattern)
        if refused:
            return (f"warning: git does not ignore {dotenv}, and claude-db adds "
                    f"nothing to info/exclude: {refused}; do not commit .env (it holds a "
                    "password)")
        if git("check-ignore", "-q", ".env").returncode != 0:
            return (f"warning: git does not ignore {dotenv} even after adding it to "
                    f"{exclude}: do not commit it (it holds a password)")
    except FileNotFoundError:  # no git on this machine: nothing to protect from
        return None
    return f"added .env to {exclude} so git ignores it"


def _add_line(exclude: Path, line: str) -> str | None:
    """Add ``line`` to the repository's ``info/exclude`` once; returns why nothing was
    written instead (``_open_exclude`` says what is written)."""
    try:
        fd = _open_exclude(exclude)
    except _NotWritten as why:
        return str(why)
    # worktrees share this file: starts in several at once add the line once
    with os.fdopen(fd, "a+") as out, hold_file(out):
        out.seek(0)
        text = out.read()
        if line not in text.splitlines():
            prefix = "" if not text or text.endswith("\n") else "\n"
            out.write(f"{prefix}{line}\n")
    return None


class _NotWritten(Exception):
    """Why ``info/exclude`` is left alone."""


def _open_exclude(exclude: Path) -> int:
    """``info/exclude`` of the git directory (made if missing), open for appending: only a
    regular file with no other link, reached from the git directory through no symlink,
    owned by us, root or the git directory's owner. Root in another user's repository would
    otherwise append to wherever that user's link leads (to root's .bashrc: a line there
    is a command). What root makes in a user's repository is given to that user."""
    info_path = exclude.parent
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO: opened, then refused
    try:  # the git directory as git names it: .git may be a link, or a gitfile's target
        git_dir = os.open(info_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _NotWritten(_why(info_path.parent, exc)) from None
    try:
        repo = os.fstat(git_dir)
        made = _made(info_path, lambda: os.mkdir("info", 0o755, dir_fd=git_dir))
        info = _opened(info_path, os.O_RDONLY | os.O_DIRECTORY | nofollow, git_dir)
    finally:
        os.close(git_dir)
    try:
        _trust(info_path, info, repo, made)
        flags = os.O_RDWR | os.O_APPEND | nofollow
        made = _made(exclude, lambda: os.close(
            os.open("exclude", flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=info)))
        fd = _opened(exclude, flags, info)
    finally:
        os.close(info)
    try:
        _trust(exclude, fd, repo, made)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _made(path: Path, make: Callable[[], None]) -> bool:
    """Whether ``make`` made ``path`` (``False``: it was there)."""
    try:
        make()
    except FileExistsError:
        return False
    except OSError as exc:
        raise _NotWritten(_why(path, exc)) from None
    return True


def _opened(path: Path, flags: int, dir_fd: int) -> int:
    try:
        return os.open(path.name, flags, dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise _NotWritten(f"{path} is a symlink") from None
        raise _NotWritten(_why(path, exc)) from None


def _why(path: Path, exc: OSError) -> str:
    return f"{path}: {exc.strerror}"


def _trust(path: Path, fd: int, repo: os.stat_result, made: bool) -> None:
    """Refuse what ``_open_exclude`` does not write; give what root made to the repository's
    owner."""
    found = os.fstat(fd)
    directory = path.name == "info"
    if not (stat.S_ISDIR(found.st_mode) if directory else stat.S_ISREG(found.st_mode)):
        raise _NotWritten(f"{path} is not a {'directory' if directory else 'regular file'}")
    if found.st_uid not in (os.geteuid(), 0, repo.st_uid):
        raise _NotWritten(f"{path} belongs to {user_name(found.st_uid)}")
    if not directory and found.st_nlink != 1:  # a hard link to a file elsewhere
        raise _NotWritten(f"{path} has other hard links")
    if made and os.geteuid() == 0 and repo.st_uid != 0:
        os.fchown(fd, repo.st_uid, repo.st_gid)


def _ignore_pattern(relative: str) -> str:
    """A path as a gitignore pattern matching only itself: ``app[1]`` holds a glob."""
    return re.sub(r"([\\*?\[\]!# ])", r"\\\1", relative)


def _toplevel(workdir: Path) -> Path:
    out = subprocess.run(
        ["git", "-C", str(workdir), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    return Path(out.stdout.strip() or workdir)
