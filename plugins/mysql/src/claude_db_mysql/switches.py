"""Where an import file writes: its ``USE`` and ``CREATE DATABASE`` lines.

``mysqldump --databases`` (and most sample databases) begin each database with
``CREATE DATABASE x; USE x;``; ``--all-databases`` adds the ``mysql`` system schema,
whose tables hold the server's accounts. Applied as they are, the first loads the
data outside the session's database (where export, snapshots and undo never look),
the second replaces the session's own account. So an import refuses both, before the
lines reach the server: a ``USE`` of any other database than the one imported into,
and any ``USE``/``CREATE DATABASE`` of a system schema.

Lines, not statements, are looked at: dumps write one statement per line and escape the
line breaks of their strings, and the ``mysql`` client takes ``use`` as its own command
at the start of a line only. A ``CREATE DATABASE`` of another database is let through
(tests make ``myapp_test``); only what moves the file's writes is refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from claude_db.errors import ClaudeDbError
from claude_db_mysql.history import SCHEMA as HISTORY_SCHEMA

#: schemas of the server itself: never dumped, never dropped, never imported into
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
_NAME = rb"(`(?:[^`\n]|``)+`|[^\s;`/]+)"
_CANDIDATE = re.compile(rb"^[ \t]*(?:use|\\u|create[ \t]+(?:database|schema))\b[^\n]*",
                        re.IGNORECASE | re.MULTILINE)
_USE = re.compile(rb"[ \t]*(?:use|\\u)[ \t]+" + _NAME + rb"[ \t]*;?[ \t]*\r?$", re.IGNORECASE)
_CREATE = re.compile(
    rb"[ \t]*create[ \t]+(?:database|schema)[ \t]+(?:/\*!\d+[ \t]+)?(?:if[ \t]+not[ \t]+exists"
    rb"[ \t]*)?(?:\*/[ \t]*)?" + _NAME,
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Refusal:
    """Why a line is refused; ``system``: it names a system schema."""

    reason: str
    system: bool = False


class ImportRefusedError(ClaudeDbError):
    """The file writes where an import must not (another database, a system schema)."""


def database_name(token: bytes) -> str:
    name = token.decode(errors="replace")
    if name.startswith("`"):
        name = name[1:-1].replace("``", "`")
    return name


def created_databases(text: bytes) -> set[str]:
    """The databases ``text`` (whole lines) creates."""
    found = set()
    for line in _CANDIDATE.finditer(text):
        if match := _CREATE.match(line.group()):
            found.add(database_name(match.group(1)))
    return found


class SwitchGuard:
    """Checks an import file's lines, chunk by chunk, for writes outside ``database``."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.lines = 0  # line breaks in what was checked before
        self.partial = b""  # the unchecked end of the last chunk (a line cut in two)

    def check(self, chunk: bytes, *, final: bool = False) -> None:
        """Raise :class:`ImportRefusedError` if a whole line of ``chunk`` is refused."""
        text = self.partial + chunk
        end = len(text) if final else text.rfind(b"\n") + 1
        whole, self.partial = text[:end], text[end:]
        refusals = [(refusal, found) for found in _CANDIDATE.finditer(whole)
                    if (refusal := self._refusal(found.group()))]
        if refusals:
            # a dump of all databases: name its system schema, not its first database
            refusal, found = min(refusals, key=lambda pair: not pair[0].system)
            line = self.lines + whole.count(b"\n", 0, found.start()) + 1
            statement = found.group().decode(errors="replace").strip()
            raise ImportRefusedError(
                f"import refused, nothing was applied: line {line} ({statement}) "
                f"{refusal.reason}"
            )
        self.lines += whole.count(b"\n")

    def checked(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks``, each checked before it is passed on."""
        for chunk in chunks:
            self.check(chunk)
            yield chunk
        self.check(b"", final=True)

    def _refusal(self, line: bytes) -> Refusal | None:
        use = _USE.match(line)
        match = use or _CREATE.match(line)
        if match is None:
            return None
        name = database_name(match.group(1))
        if name.lower() == HISTORY_SCHEMA:  # claude-db's own: refused like a system schema
            return Refusal(f"writes to {name!r}, where claude-db keeps the snapshots: imports "
                           "take user databases only", system=True)
        if name.lower() in SYSTEM_SCHEMAS:
            return Refusal(
                f"writes to {name!r}, a system schema of the server (accounts, grants, its "
                "own tables): imports take user databases only (from a dump of all "
                "databases, dump the ones you need: mysqldump --databases DB...)",
                system=True,
            )
        if use and name != self.database:
            return Refusal(
                f"switches to database {name!r}, outside {self.database!r} where the import "
                "goes (export, snapshot and undo would not see it): "
                f"claude-db import --database={shlex.quote(name)} FILE loads it into "
                f"{name!r}; without its CREATE DATABASE and USE lines it loads into "
                f"{self.database!r}"
            )
        return None
