"""All-or-nothing imports: load into staging collections, then swap them in.

An import first writes every collection of the dump under a staging prefix in the target
database (``__claude_db_restore_<token>.<name>``). Only when the whole dump has loaded are
the staged collections swapped in: an existing collection of the same name is renamed away
to a backup, the staged one renamed into place (``renameCollection`` within one database
is a metadata change), views are recreated. If any step fails, every step taken is undone
in reverse order and the staging collections are dropped: the database is as before.
Collections the dump does not name are left alone (``mongorestore --drop`` semantics).
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from claude_db import ClaudeDbError

if TYPE_CHECKING:
    from pymongo import MongoClient
    from pymongo.database import Database

PREFIX = "__claude_db_restore_"


class PartialImportError(ClaudeDbError):
    """An import failed while swapping in and could not be undone completely."""


@dataclass
class Staging:
    """The staging namespace of one import into database ``db``."""

    client: MongoClient[dict[str, Any]]
    db: str
    token: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def database(self) -> Database[dict[str, Any]]:
        return self.client[self.db]

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.token}."

    @property
    def backup_prefix(self) -> str:
        return f"{PREFIX}{self.token}_old."

    def staged_name(self, name: str) -> str:
        return self.prefix + name

    def swap_in(self) -> list[str]:
        """Replace the target collections with the staged ones; return the names swapped.

        Raise after undoing every step if any step fails.
        """
        staged = [info for info in self.database.list_collections()
                  if info["name"].startswith(self.prefix)]
        # collections before views: a view may read a collection of the dump
        staged.sort(key=lambda info: (info.get("type") == "view", info["name"]))
        targets = [info["name"][len(self.prefix):] for info in staged]
        wanted = set(targets)
        existing = {info["name"]: info for info in self.database.list_collections()
                    if info["name"] in wanted}
        undo: list[tuple[str, str, Any]] = []
        try:
            for info, target in zip(staged, targets, strict=True):
                old = existing.get(target)
                if old is not None and old.get("type") == "view":
                    self.database.drop_collection(target)
                    undo.append(("create_view", target, old.get("options", {})))
                elif old is not None:
                    self._rename(target, self.backup_prefix + target)
                    undo.append(("rename", self.backup_prefix + target, target))
                if info.get("type") == "view":
                    self.database.command({"create": target, **info.get("options", {})})
                    self.database.drop_collection(info["name"])
                else:
                    self._rename(info["name"], target)
                undo.append(("drop", target, None))
        except BaseException as exc:
            failed = self._undo(undo)
            if failed:
                raise PartialImportError(
                    f"import failed ({exc}) and could not be fully undone: {'; '.join(failed)}; "
                    f"the previous collections are kept as {self.backup_prefix}<name>"
                ) from None
            raise
        return targets

    def finish(self) -> None:
        """After a successful swap: drop the backups of the replaced collections."""
        self._drop_prefixed(self.prefix, self.backup_prefix)

    def abandon(self) -> None:
        """After a failure: drop the staged collections (best effort; backups are kept)."""
        self._drop_prefixed(self.prefix)

    def _drop_prefixed(self, *prefixes: str) -> None:
        with contextlib.suppress(Exception):
            for name in self.database.list_collection_names():
                if name.startswith(prefixes):
                    with contextlib.suppress(Exception):
                        self.database.drop_collection(name)

    def _rename(self, source: str, target: str) -> None:
        self.client.admin.command(
            "renameCollection", f"{self.db}.{source}", to=f"{self.db}.{target}"
        )

    def _undo(self, steps: list[tuple[str, str, Any]]) -> list[str]:
        failed: list[str] = []
        for action, name, argument in reversed(steps):
            try:
                if action == "drop":
                    self.database.drop_collection(name)
                elif action == "rename":
                    self._rename(name, argument)
                else:
                    self.database.command({"create": name, **argument})
            except Exception as exc:  # keep undoing the rest; report what could not be
                failed.append(f"{action} {name}: {exc}")
        return failed
