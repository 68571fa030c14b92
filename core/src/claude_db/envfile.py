"""The work directory's ``.env``: write and remove only our keys, keep it out of git."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from dotenv import dotenv_values, set_key, unset_key

MARKER = "CLAUDE_SESSION"  # names the session a directory belongs to

# Lines python-dotenv cannot parse are the user's own: they are kept as they are, and a
# warning for each, on every read and every key written, would bury our output.
logging.getLogger("dotenv.main").setLevel(logging.ERROR)


def write_env(workdir: Path, values: Mapping[str, str]) -> list[str]:
    """Set ``values`` in ``workdir/.env`` (mode 0600); return notes for the user."""
    path = workdir / ".env"
    before = read_env(workdir)
    if not path.exists():
        path.touch(mode=0o600)
    os.chmod(path, 0o600)  # it holds a password
    for key, value in values.items():
        set_key(path, key, value, quote_mode="always")
    names = list(values)
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    notes = [f"wrote {len(names)} variable{'s' * (len(names) != 1)} ({shown}) to {path}"]
    replaced = [k for k in names if k != MARKER and before.get(k, values[k]) != values[k]]
    if before.get(MARKER, values.get(MARKER)) != values.get(MARKER):  # never silently
        notes.append(f"note: .env was session {before[MARKER]}'s; this session takes it over")
    elif replaced:
        notes.append(f"note: replaced the {', '.join(replaced)} .env already had "
                     "(claude-session delete removes it, it does not bring it back)")
    kept_out = _keep_out_of_git(workdir)
    return [*notes, kept_out] if kept_out else notes


def refresh_env(workdir: Path, values: Mapping[str, str], session_name: str) -> list[str]:
    """Bring our keys in ``workdir/.env`` up to date if it still belongs to ``session_name``
    (a re-created container may have a new address); return notes for the user."""
    path = workdir / ".env"
    current = read_env(workdir)
    if current.get(MARKER) != session_name:
        return []
    changed = [key for key, value in values.items() if current.get(key) != value]
    for key in changed:
        set_key(path, key, values[key], quote_mode="always")
    return [f"updated {', '.join(changed)} in {path}"] if changed else []


def remove_env(workdir: Path, keys: Iterable[str], session_name: str) -> bool:
    """Remove our keys from ``workdir/.env`` if it still belongs to ``session_name``."""
    path = workdir / ".env"
    if not path.exists() or read_env(workdir).get(MARKER) != session_name:
        return False
    for key in keys:
        with contextlib.suppress(Exception):
            unset_key(path, key, quote_mode="always")
    if not path.read_text().strip():
        path.unlink()
    return True


def read_env(workdir: Path) -> dict[str, str]:
    path = workdir / ".env"
    if not path.is_file():
        return {}
    values = dotenv_values(path, interpolate=False)  # as written: ours are never expanded
    return {k: v for k, v in values.items() if v is not None}


def _keep_out_of_git(workdir: Path) -> str | None:
    """If ``.env`` is in a git work tree and not ignored, add it to ``.git/info/exclude``;
    if git already tracks it, no ignore rule helps: warn. Returns a note for the user.

    Never edits the user's ``.gitignore``.
    """

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
        exclude = Path(git("rev-parse", "--git-path", "info/exclude").stdout.strip())
    except FileNotFoundError:  # no git on this machine: nothing to protect from
        return None
    if not exclude.is_absolute():
        exclude = workdir / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    text = exclude.read_text() if exclude.exists() else ""
    prefix = "" if not text or text.endswith("\n") else "\n"
    relative = os.path.relpath(workdir / ".env", _toplevel(workdir))
    with open(exclude, "a") as out:
        out.write(f"{prefix}/{relative}\n")
    return f"added .env to {os.path.normpath(exclude)} so git ignores it"


def _toplevel(workdir: Path) -> Path:
    out = subprocess.run(
        ["git", "-C", str(workdir), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    return Path(out.stdout.strip() or workdir)
