"""The work directory's ``.env``: write and remove only our keys, keep it out of git."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from dotenv import dotenv_values, set_key, unset_key

MARKER = "CLAUDE_SESSION"  # names the session a directory belongs to


def write_env(workdir: Path, values: Mapping[str, str]) -> list[str]:
    """Set ``values`` in ``workdir/.env`` (mode 0600); return notes for the user."""
    path = workdir / ".env"
    if not path.exists():
        path.touch(mode=0o600)
    os.chmod(path, 0o600)  # it holds a password
    for key, value in values.items():
        set_key(path, key, value, quote_mode="always")
    notes = [f"wrote {len(values)} variables (DATABASE_URL...) to {path}"] if values else []
    excluded = _exclude_from_git(workdir)
    if excluded:
        notes.append(f"added .env to {excluded} so git ignores it")
    return notes


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
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _exclude_from_git(workdir: Path) -> str | None:
    """If ``.env`` is in a git work tree and not ignored, add it to ``.git/info/exclude``.

    Never edits the user's ``.gitignore``. Returns the file changed, or None.
    """

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(workdir), *args], capture_output=True, text=True, check=False
        )

    try:
        if git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
            return None
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
    return str(exclude)


def _toplevel(workdir: Path) -> Path:
    out = subprocess.run(
        ["git", "-C", str(workdir), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    return Path(out.stdout.strip() or workdir)
