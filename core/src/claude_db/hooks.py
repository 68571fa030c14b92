"""Agent hooks: Claude Code's project settings and git's ``post-checkout``, beside the user's.

``claude-session hooks install`` adds to ``<project>/.claude/settings.json`` (JSON merged:
every key of the user's stays) one command hook per event, each ``claude-session hooks
run ACTION``:

- ``SessionStart`` → ``session-start``: the session of the project's directory (worktree)
  is started or made to run; stdout, which Claude Code adds to the agent's context, says
  which database and how to reach it (and that ``claude-db undo`` exists); with
  ``CLAUDE_ENV_FILE`` set its variables are exported there for the agent's shell commands.
- ``Stop`` (the end of each agent turn) → ``stop``: ``claude-db checkpoint``.
- ``WorktreeRemove`` → ``worktree-remove``: the session of that worktree is removed, its
  data kept for the grace period (as gc reclaims a removed worktree's session).

``WorktreeCreate`` is left alone: a hook for it *replaces* Claude Code's own ``git
worktree add``; the new worktree's ``SessionStart`` (and git's ``post-checkout``) start its
session instead.

git: ``<hooks dir>/post-checkout`` starts a session when the previous HEAD is all zeros
(a new worktree, or a clone). A hook of the user's there is moved aside to
``post-checkout.claude-db-chained`` and run first, with the same arguments; its exit
status is the hook's.

Every ``hooks run`` action prints one line and exits 0 whatever happens: a database that
cannot start is no reason to stop the agent's work (Claude Code: exit 2 from ``Stop``
would keep the agent working, from the others it only shows stderr to the user), and a
failing ``post-checkout`` would make ``git worktree add`` report a failure for a worktree
it made. ``uninstall`` removes exactly what ``install`` added.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_db.app import get_app
from claude_db.envfile import find_env
from claude_db.errors import UsageError
from claude_db.lifecycle import ALREADY_HERE, session_env, start_here
from claude_db.session import Session
from claude_db.worktrees import plain_git_env, reclaim

#: Claude Code event → our action, and the seconds Claude Code gives it
CLAUDE_EVENTS = {"SessionStart": ("session-start", 180), "Stop": ("stop", 60),
                 "WorktreeRemove": ("worktree-remove", 120)}
ACTIONS = ("session-start", "stop", "worktree-remove", "git-post-checkout")
GIT_HOOK = "post-checkout"
CHAINED = "post-checkout.claude-db-chained"
GIT_MARK = "# claude-db: starts a session in a new git worktree"
CHECKPOINT_LABEL = "end of agent turn"
_OURS = re.compile(r"claude-session'? hooks run (session-start|stop|worktree-remove)$")


@dataclass
class Change:
    """A file ``install``/``uninstall`` writes (``text``), removes (``text`` None) or
    renames to ``rename_to``."""

    path: Path
    text: str | None
    rename_to: Path | None = None
    mode: int = 0o644

    def describe(self, *, done: bool = False) -> str:
        """What it would do (with the text it would write), or, ``done``, what it did."""
        if self.rename_to is not None:
            return f"{'moved' if done else 'move'} {self.path} to {self.rename_to}"
        if self.text is None:
            return f"{'removed' if done else 'remove'} {self.path}"
        return f"wrote {self.path}" if done else f"write {self.path}:\n{self.text}"


# -- where -----------------------------------------------------------------------------------


def project_dir(start: Path) -> Path:
    """The top of the git work tree ``start`` is in, else ``start`` itself."""
    out = _git(start, "rev-parse", "--show-toplevel")
    return Path(out) if out else start.resolve()


def git_hooks_dir(project: Path) -> Path | None:
    """Where git runs this repository's hooks from (``core.hooksPath`` honoured)."""
    out = _git(project, "rev-parse", "--path-format=absolute", "--git-path", "hooks")
    return Path(out) if out else None


def _git(cwd: Path, *args: str) -> str | None:

    try:
        proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                              check=False, env=plain_git_env())
    except FileNotFoundError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def our_command() -> str:
    """How the hooks call this claude-session: by name if ``PATH`` finds this very one,
    else by its absolute path."""
    me = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    found = shutil.which("claude-session")
    if me is None or me.name != "claude-session" or (found and Path(found).resolve() == me):
        return "claude-session"
    return shlex.quote(str(me))


# -- install / uninstall ---------------------------------------------------------------------


def plan(project: Path, *, install: bool, claude: bool = True, git: bool = True) -> list[Change]:
    """What ``install`` (or ``uninstall``) would change; raises before anything is changed
    when a file of the user's is not what we can merge with."""
    changes: list[Change] = []
    if claude:
        changes += _plan_settings(project / ".claude" / "settings.json", install)
    if git:
        hooks = git_hooks_dir(project)
        if hooks is None:
            if install:
                raise UsageError(f"{project} is not in a git repository: no git hook to "
                                 "install (--no-git installs the Claude Code hooks only)")
        else:
            changes += _plan_git(hooks, install)
    return changes


def apply(changes: list[Change]) -> None:
    for change in changes:
        if change.rename_to is not None:
            os.rename(change.path, change.rename_to)
        elif change.text is None:
            change.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # .claude/ if we made it and left it empty
                if change.path.name == "settings.json":
                    change.path.parent.rmdir()
        else:
            change.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = change.path.with_name(f".{change.path.name}.claude-db.tmp")
            tmp.write_text(change.text)
            os.chmod(tmp, change.mode)
            os.replace(tmp, change.path)


def _plan_settings(path: Path, install: bool) -> list[Change]:
    settings = _read_settings(path)
    if settings is None and not install:
        return []
    merged = _without_ours(settings or {})
    if install:
        hooks = merged.setdefault("hooks", {})
        for event, (action, timeout) in CLAUDE_EVENTS.items():
            hooks.setdefault(event, []).append({"hooks": [{
                "type": "command", "command": f"{our_command()} hooks run {action}",
                "timeout": timeout}]})
    if merged == (settings or {}) and (settings is not None or not install):
        return []
    if not merged:
        return [Change(path, None)]
    return [Change(path, json.dumps(merged, indent=2) + "\n")]


def _read_settings(path: Path) -> dict[str, Any] | None:
    if path.is_symlink():  # writing would replace the link with a file
        raise UsageError(f"{path} is a symlink: claude-db does not write through it; "
                         "nothing was changed")
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        settings: dict[str, Any] = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}): fix it first; nothing was "
                         "changed") from None
    hooks = settings.get("hooks", {}) if isinstance(settings, dict) else None
    if not isinstance(hooks, dict) or not all(isinstance(v, list) for v in hooks.values()):
        raise UsageError(f"{path} is not Claude Code settings (an object whose \"hooks\" maps "
                         "events to lists): nothing was changed")
    return settings


def _without_ours(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without our hooks, and without what held only ours (a matcher group,
    an event, ``hooks``): the user's content exactly as it was."""
    settings = json.loads(json.dumps(settings))  # a deep copy
    hooks = settings.get("hooks")
    if not isinstance(hooks, dict):
        return settings
    for event in list(hooks):
        groups = []
        for group in hooks[event]:
            inner = group.get("hooks") if isinstance(group, dict) else None
            if isinstance(inner, list):
                kept = [h for h in inner if not _is_ours(h)]
                if not kept and inner:
                    continue
                group["hooks"] = kept
            groups.append(group)
        if groups or not hooks[event]:
            hooks[event] = groups
        else:
            del hooks[event]
    if not hooks:
        del settings["hooks"]
    return settings


def _is_ours(hook: Any) -> bool:
    return (isinstance(hook, dict) and hook.get("type") == "command"
            and isinstance(hook.get("command"), str) and bool(_OURS.search(hook["command"])))


def _git_script() -> str:
    return f"""#!/bin/sh
{GIT_MARK} (claude-session hooks uninstall removes it)
status=0
chained="$(dirname "$0")/{CHAINED}"
if [ -x "$chained" ]; then "$chained" "$@" || status=$?; fi
case "$1" in
    *[!0]*) ;;  # an earlier HEAD: a checkout in an existing work tree
    *) {our_command()} hooks run git-post-checkout || : ;;  # all zeros: a new worktree
esac
exit $status
"""


def _plan_git(hooks: Path, install: bool) -> list[Change]:
    hook, chained = hooks / GIT_HOOK, hooks / CHAINED
    ours = _is_our_git_hook(hook)
    if not install:
        if not ours:
            return []
        if chained.exists():
            return [Change(chained, None, rename_to=hook)]
        return [Change(hook, None)]
    changes = []
    if hook.exists() or hook.is_symlink():
        if not ours:
            if chained.exists() or chained.is_symlink():
                raise UsageError(f"{hook} is not ours and {chained} exists already: move one "
                                 "of them away first; nothing was changed")
            changes.append(Change(hook, None, rename_to=chained))
        elif hook.read_text() == _git_script():
            return []
    return [*changes, Change(hook, _git_script(), mode=0o755)]


def _is_our_git_hook(hook: Path) -> bool:
    try:
        return not hook.is_symlink() and GIT_MARK in hook.read_text(errors="replace")[:500]
    except OSError:
        return False


# -- the hooks themselves ----------------------------------------------------------------------


def run_hook(action: str, payload: dict[str, Any] | None) -> str:
    """Do ``action`` for a hook (``payload``: what Claude Code sent on stdin; None: input
    that is no JSON object) and return the one line to print. Raises nothing but usage
    errors: a failure is that line."""
    if action not in ACTIONS:
        raise UsageError(f"unknown hook action {action!r} (one of {', '.join(ACTIONS)})")
    if payload is None:  # not what an agent sends: nothing is done on a guess
        return f"claude-db: {action} hook failed: its input is not a JSON object"
    try:
        return {"session-start": _session_start, "stop": _stop,
                "worktree-remove": _worktree_remove,
                "git-post-checkout": _git_post_checkout}[action](payload)
    except Exception as exc:  # never a traceback, never a failed agent step
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"claude-db: {action} hook failed: {message}"


def read_payload(stream: Any) -> dict[str, Any] | None:
    """The hook's JSON input (none at all counts as ``{}``); None if it is not a JSON
    object."""
    with contextlib.suppress(ValueError, OSError):
        data = json.loads(stream.read().strip() or "{}")
        if isinstance(data, dict):
            return data
    return None


def _workdir(payload: dict[str, Any]) -> Path:
    """Where the agent works: the payload's ``cwd`` (Claude Code's), else
    ``CLAUDE_PROJECT_DIR``, else ours; the top of its git work tree."""
    raw = payload.get("cwd") or os.environ.get("CLAUDE_PROJECT_DIR") or os.getcwd()
    return project_dir(Path(str(raw)))


def _session_start(payload: dict[str, Any]) -> str:

    app = get_app()
    workdir = _workdir(payload)
    session, _ = start_here(app, workdir)
    env = session_env(app, session, for_dotenv=True)
    env_file = os.environ.get("CLAUDE_ENV_FILE")
    if env_file:  # Claude Code runs the agent's shell commands with what this exports
        with open(env_file, "a") as out:
            out.writelines(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())
    if not session.has_database:
        return f"claude-db: session {session.name} has no database (CLAUDE_DB_ENABLED=false)"
    url = env.get("DATABASE_URL", "")
    shown = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)  # the password stays in .env
    return (f"claude-db: this work tree has its own {session.engine} database, session "
            f"{session.name} ({session.runtime} runtime), running: DATABASE_URL={shown} (the "
            f"full URL is in {workdir / '.env'}; `claude-db psql`, `claude-db query SQL`, "
            "`claude-db status`). A checkpoint is taken at the end of each turn; `claude-db "
            "undo` takes back the last reset, import --replace or restore.")


def _stop(payload: dict[str, Any]) -> str:
    workdir = _workdir(payload)
    if find_env(workdir) is None:
        return f"claude-db: no session in {workdir}; no checkpoint taken"
    claude_db = Path(sys.argv[0]).resolve().with_name("claude-db") if sys.argv[0] else None
    program = str(claude_db) if claude_db and claude_db.exists() else "claude-db"
    proc = subprocess.run([program, "checkpoint", "--hook", "--label", CHECKPOINT_LABEL],
                          cwd=workdir, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False)
    said = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode == 0:
        return f"claude-db: {said[0] if said else 'checkpoint taken'}"
    return f"claude-db: no checkpoint taken: {said[-1] if said else f'exit {proc.returncode}'}"


def _worktree_remove(payload: dict[str, Any]) -> str:

    raw = payload.get("worktree_path")
    if not raw:
        return "claude-db: no worktree_path in the hook's input; nothing removed"
    path = os.path.realpath(str(raw))
    app = get_app()
    found = [s for s in app.store.all()
             if isinstance(s, Session) and s.worktree and s.workdir == path]
    if not found:
        return f"claude-db: no session of worktree {path}; nothing removed"
    return "claude-db: " + "; ".join(reclaim(app, s.name, removing=True) or "" for s in found)


def _git_post_checkout(payload: dict[str, Any]) -> str:
    workdir = project_dir(Path.cwd())
    session, notes = start_here(get_app(), workdir)
    existed = any(note.endswith(ALREADY_HERE) for note in notes)
    return (f"claude-db: session {session.name} {'runs' if existed else 'started'} for "
            f"{workdir} (DATABASE_URL in its .env)")
