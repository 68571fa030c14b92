"""Sessions of git worktrees: their names, and reclaiming those whose worktree is gone.

A session started in a linked worktree of a repository is named ``<repo>-<worktree>``
(directory names, sanitised to :data:`~claude_db.session.NAME_PATTERN`); where that name
is another directory's session, a short hash of the path is added, so the name is the same
on every start. A session records its worktree (:class:`Worktree`): when git itself
would call it gone (``git worktree remove``, ``rm -rf``: its repository is there, and its
own git directory is gone or names a checkout that is missing) while the filesystem that
held it is still mounted where it was, ``gc`` and the cheap sweep of every ``start``
reclaim it: stopped and removed, its data kept (as ``delete --keep-data``) for
:func:`grace_seconds`, then removed too. A directory that merely cannot be seen (its
filesystem or a bind mount above it unmounted, a permission) is never taken for a
removed one: in doubt, a session stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from claude_db.envfile import Owner, owner, remove_env
from claude_db.errors import ClaudeDbError, SessionExistsError, UsageError
from claude_db.faults import checkpoint
from claude_db.locks import try_hold
from claude_db.runtime import Orphan
from claude_db.session import NAME_PATTERN, Session, name_from_directory, slug
from claude_db.target import parts

if TYPE_CHECKING:
    from claude_db.app import App
GRACE_VARIABLE = "CLAUDE_DB_WORKTREE_GRACE_DAYS"
GRACE_DAYS = 7.0
KEPT_DIR = "kept"
RECLAIMED_SUFFIX = ".reclaimed.json"  # beside kept data: when gc may remove it
HASH_LENGTH = 6


@dataclass(frozen=True)
class Worktree:
    """Where a session's work directory is: a git worktree (``repository``: the common
    git directory), and the device and mount point its directory was on (to tell removed
    from unmounted)."""

    repository: str
    toplevel: str
    linked: bool
    device: int
    admin: str = ""  # a linked worktree's own git directory (.git/worktrees/<id>)
    mount: str = ""  # the mount point it was under (a bind mount's own, not its source's)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find_worktree(workdir: Path) -> Worktree | None:
    """The git worktree ``workdir`` is in, or None (no git, not in a repository)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(workdir), "rev-parse", "--path-format=absolute",
             "--show-toplevel", "--git-common-dir", "--git-dir"],
            capture_output=True, text=True, check=False, env=plain_git_env(),
        )
    except FileNotFoundError:
        return None
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != 3:
        return None
    toplevel, common, git_dir = (os.path.realpath(line) for line in lines)
    linked = git_dir != common
    if not linked:  # a main checkout is never reclaimed: nothing more to record
        return Worktree(common, toplevel, linked, os.stat(workdir).st_dev)
    return Worktree(common, toplevel, linked, os.stat(workdir).st_dev, git_dir,
                    mount_point(workdir.resolve()))


def mount_point(path: Path) -> str:
    """The mount point ``path`` is under, as this process sees the mounts now: the longest
    one above it (bind mounts included; of one mounted over another, the later)."""
    found = ""
    for partition in psutil.disk_partitions(all=True):
        point = partition.mountpoint
        if path.is_relative_to(point) and len(point) >= len(found):
            found = point
    return found


def plain_git_env() -> dict[str, str]:
    """Our environment without what a git hook is given (``GIT_DIR``...): we ask about the
    directory we name, whatever repository the hook's git was working on."""
    return {key: value for key, value in os.environ.items()
            if key not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")}


def readable_name(workdir: Path, worktree: Worktree | None) -> str:
    """``<repo>-<worktree>`` in a linked worktree (``-<subdir>`` below its top), else the
    directory's own name, as ever."""
    if worktree is None or not worktree.linked:
        return name_from_directory(workdir)
    common = Path(worktree.repository)
    repo = common.parent.name if common.name == ".git" else common.name.removesuffix(".git")
    parts = [slug(repo)[:20].strip("-") or "repo", slug(Path(worktree.toplevel).name)]
    relative = os.path.relpath(workdir.resolve(), worktree.toplevel)
    if relative != ".":
        parts.append(slug(relative))
    return "-".join(part for part in parts if part)[:48].strip("-")


def disambiguated(name: str, workdir: Path) -> str:
    """``name`` with a short hash of ``workdir``'s path: the same on every start."""
    import hashlib  # late: hashlib loads OpenSSL, a cost every command would pay

    digest = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:HASH_LENGTH]
    return f"{name[:48 - HASH_LENGTH - 1].rstrip('-')}-{digest}"


def session_name(app: App, workdir: Path, worktree: Worktree | None) -> str:
    """The session name of ``workdir`` when none is given (see :func:`name_here`)."""
    return name_here(app, workdir, worktree)[0]


def name_here(app: App, workdir: Path, worktree: Worktree | None) -> tuple[str, list[str]]:
    """The session name of ``workdir`` when none is given, and notes: the session of this
    directory (the one its ``.env`` names, of this directory or of one that is gone: it
    moved here; else the one whose record has it as work
    directory: ``.env`` was lost, e.g. to ``git clean -fdx``), else its readable name,
    made unique where another directory's session has that name (only in a git work
    tree: elsewhere that stays an error, as before)."""
    workdir = workdir.resolve()
    found = owner(workdir)
    if (found is not None and found.state_dir == str(app.settings.state_dir)
            and NAME_PATTERN.fullmatch(found.name)):
        home = _workdir_of(app, found.name)
        if home == workdir or (home is not None and not home.exists()):  # or moved here
            return found.name, []
    mine = [session.name for session in app.store.all()
            if isinstance(session, Session) and Path(session.workdir) == workdir]
    if len(mine) > 1:
        raise SessionExistsError(
            f"sessions {', '.join(mine)} all have {workdir} as their work directory and its "
            ".env names none of them: name one, claude-session start NAME")
    if mine:
        return mine[0], [f"note: {workdir / '.env'} was gone or named another session; "
                         f"session {mine[0]} has this work directory: it is started, and its "
                         ".env written again"]
    name = readable_name(workdir, worktree)
    if worktree is None:
        return name, []
    if _workdir_of(app, name) not in (None, workdir):
        return disambiguated(name, workdir), []
    return name, []


def _workdir_of(app: App, name: str) -> Path | None:
    """The work directory of session ``name`` (resolved), None when there is no such
    session; an unreadable one counts as another directory's."""
    if not app.store.exists(name):
        return None
    try:
        return Path(app.store.load(name).workdir)
    except ClaudeDbError:
        return Path("/")


# -- reclaiming removed worktrees ----------------------------------------------------------


def grace_seconds() -> float:
    raw = os.environ.get(GRACE_VARIABLE, "").strip() or str(GRACE_DAYS)
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not 0 <= days < float("inf"):
        raise UsageError(f"{GRACE_VARIABLE} must be a number of days (0 or more)")
    return days * 86400


def removed(session: Session) -> bool:
    """Whether ``session`` is of a worktree that was removed: its directory is missing, the
    filesystem it was on is still mounted where it was (the mount above the directory's
    path is the recorded one, on the recorded device), and git would call it gone (its
    repository is there; its own git directory is gone, or names a missing checkout).
    Anything we cannot see for sure (a permission, a record without the mount) counts as
    there."""
    recorded = session.worktree
    if not recorded or not isinstance(recorded.get("device"), int):
        return False
    path = Path(session.workdir)
    try:
        path.lstat()
        return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return _mounted_as_recorded(path, recorded) and _gone_to_git(recorded)


def _mounted_as_recorded(path: Path, recorded: dict[str, Any]) -> bool:
    """Whether ``path`` is looked for on the filesystem it was on: unmount a bind mount and
    what shows there is the directory below it, on the same device, where the worktree is
    not (so the device alone cannot tell)."""
    mount = recorded.get("mount")
    if not isinstance(mount, str) or not mount or mount_point(path) != mount:
        return False
    try:
        return bool(os.stat(mount).st_dev == recorded["device"])
    except OSError:
        return False


def _gone_to_git(recorded: dict[str, Any]) -> bool:
    """Whether git would call the worktree gone (``git worktree list``: removed, or
    "prunable"): its repository is there, and its own git directory is gone or names a
    checkout that is missing. A worktree git knows elsewhere (``git worktree move``) is
    not gone; without its repository, nothing says what happened to it."""
    admin = recorded.get("admin")
    if not (isinstance(admin, str) and admin and Path(str(recorded["repository"])).is_dir()):
        return False
    try:
        checkout = Path((Path(admin) / "gitdir").read_text().strip())
    except FileNotFoundError:
        return True  # git worktree remove, or prune, took it
    except OSError:
        return False
    try:
        checkout.lstat()
        return False
    except FileNotFoundError:
        return True
    except OSError:
        return False


def orphans(app: App, *, engines: bool) -> list[Orphan]:
    """Sessions of removed worktrees, and reclaimed data whose grace period ended (data a
    runtime keeps in an engine, e.g. a Docker volume, only when ``engines``: the cheap
    sweep probes no engine it need not)."""
    found: list[Orphan] = []
    for session in app.store.all():
        if isinstance(session, Session) and removed(session):
            with try_hold(app.store.lock_file(session.name), create=False) as free:
                if free:  # else a command works on it right now: the next sweep decides
                    found.append(Orphan(
                        "session", session.name,
                        f"its worktree {session.workdir} was removed; data kept for "
                        f"{_days(grace_seconds())}", remove=partial(_reclaim, app, session.name)))
    kept = app.settings.state_dir / KEPT_DIR
    now = time.time()
    for record in sorted(kept.glob(f"*{RECLAIMED_SUFFIX}")) if kept.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(record.read_text())
            if now - float(data["reclaimed_at"]) < grace_seconds():
                continue
            detail = (f"data of session {data['session']} whose worktree was removed, past "
                      "its grace period")
            try:
                runtime = app.plugins.runtime_class(str(data["runtime"]))
            except ClaudeDbError as exc:  # its plugin is gone: say so, sweep the rest
                found.append(Orphan("kept data", str(data["shown"]), detail,
                                    remove=partial(_cannot, str(exc))))
                continue
            if not (engines or runtime.cheap_leftovers):
                continue
            found.append(Orphan("kept data", str(data["shown"]), detail,
                                remove=partial(_remove_kept, app, record, data)))
    return found


def reclaim(app: App, name: str, *, removing: bool = False) -> str | None:
    """Stop and remove session ``name`` of a removed worktree, keeping its data for the
    grace period; nothing if its directory is back, unless ``removing`` (its worktree is
    being removed: Claude Code's ``WorktreeRemove``). Returns a note, if it did."""
    store = app.store
    with try_hold(store.lock_file(name), create=False) as free:
        if not free:
            raise ClaudeDbError(f"session {name} is busy; the next sweep reclaims it")
        session = store.load(name)
        if not (removing or removed(session)):
            return None
        kept: dict[str, Any] | None = None
        if session.has_database:
            engine, runtime = parts(app, session)
            runtime.delete(session, engine, keep_data=True)
            record = runtime.kept_record(session)
            if record is not None:
                kept = {"session": name, "workdir": session.workdir, "reclaimed_at": time.time(),
                        "runtime": runtime.name, "kept": record,
                        "shown": str(session.runtime_state.get("kept_data") or record)}
                # on record before the session goes: a kill after this leaves kept data
                # that gc finds, never data no record names (the same record again on retry)
                _write_record(app, name, kept)
        checkpoint("reclaim-kept")
        remove_env(Path(session.workdir), Owner(name, str(app.settings.state_dir)))  # if there
        store.release(name)
    app.plugins.hook.session_deleted(session=session)
    return (f"removed session {name} of worktree {session.workdir}"
            + (f"; its data is kept in {kept['shown']} for {_days(grace_seconds())}"
               if kept else ""))


def _reclaim(app: App, name: str) -> None:
    reclaim(app, name)


def _write_record(app: App, name: str, kept: dict[str, Any]) -> None:
    import hashlib  # late, as above

    directory = app.settings.state_dir / KEPT_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    what = hashlib.sha256(json.dumps(kept["kept"], sort_keys=True).encode()).hexdigest()[:12]
    record = directory / f"{name}-{what}{RECLAIMED_SUFFIX}"  # one per kept data, retried or not
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(kept, out)


def _cannot(reason: str) -> None:
    raise ClaudeDbError(reason)


def _remove_kept(app: App, record: Path, data: dict[str, Any]) -> None:
    """Remove reclaimed data: the runtime that kept it checks it still is what it kept."""
    app.runtime(str(data["runtime"])).remove_kept(data["kept"])
    record.unlink(missing_ok=True)


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:g} day{'s' * (days != 1)}"
