"""A state directory's side of snapshots an engine keeps with its server (MySQL, MongoDB).

Their files live on the server, so the host and a session container share one history.
A snapshot's directory holds a record file naming its id on the server (``mysql.json``:
``{"key": ...}``), its files once fetched, and core's ``snapshot.json``.

The server is not trusted with this machine's files: anyone with rights on it may plant a
row, so a name it gives is taken only if it is one plain name (never a path), and a fetched
file is created anew, never through a link, readable by its owner only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_db.errors import ClaudeDbError
from claude_db.snapshots import META

#: files travel in pieces of this size: never a whole dump in memory
CHUNK = 1 << 20
#: a file name the server may give: one plain name (a name like "../../x" would write
#: outside the snapshot)
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


@dataclass(frozen=True)
class KeptSnapshots:
    """The snapshots one engine keeps with its server, each directory naming its id in
    ``record`` (the engine's own file name, so two engines never read each other's)."""

    record: str

    def key(self, directory: Path) -> str | None:
        """The snapshot's id on the server, if it is kept there (a valid id only: it is
        put into the server's queries)."""
        try:
            key = json.loads((directory / self.record).read_text())["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return key if isinstance(key, str) and len(key) == 24 and key.isalnum() else None

    def files(self, key: str) -> dict[str, str]:
        """The files naming the snapshot ``key`` in its directory (a catalog entry's)."""
        return {self.record: json.dumps({"key": key})}

    def valid_names(self, names: list[Any]) -> list[str]:
        """The file names the server gives, if every one is a plain name claude-db wrote
        (never core's record, nor this one: those are written here, not fetched)."""
        bad = [name for name in names if not isinstance(name, str)
               or not FILE_NAME.fullmatch(name) or name in (META, self.record)]
        if bad:
            raise ClaudeDbError("the snapshot's files on the server are not valid: "
                                f"{str(bad[0])[:80]!r} is not a file name claude-db writes")
        return names

    def data_files(self, directory: Path, local_suffixes: tuple[str, ...] = ()) -> list[Path]:
        """The snapshot's files in ``directory`` that the server keeps, by name: only the
        names :meth:`valid_names` takes back (a hidden leftover such as a killed fetch's
        ``.dump.fetching`` sent would make every later fetch refuse the snapshot), less
        those ending in one of ``local_suffixes`` (files kept in this directory only)."""
        return [path for path in sorted(directory.iterdir())
                if path.is_file() and FILE_NAME.fullmatch(path.name)
                and path.name not in (META, self.record)
                and not path.name.endswith(local_suffixes)]

    def holds_data(self, directory: Path) -> bool:
        """Whether ``directory`` holds a snapshot's data, not only its records (a listing)."""
        return bool(self.data_files(directory))


def chunks(path: Path) -> Iterator[bytes]:
    """The file at ``path``, :data:`CHUNK` bytes at a time."""
    with path.open("rb") as data:
        yield from iter(lambda: data.read(CHUNK), b"")


def write_fetched(path: Path, data: Iterable[bytes]) -> None:
    """Write ``data`` (a fetched file's chunks) to ``path``, whole or not at all: into a
    hidden sibling first, created anew (never through a link someone planted), 0600, on
    disk before it takes the name (a crash must not leave a cut file that looks whole)."""
    partial = path.with_name(f".{path.name}.fetching")
    partial.unlink(missing_ok=True)  # a fetch killed (kill -9) before
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    descriptor = os.open(partial, flags, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as out:
            for chunk in data:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        partial.rename(path)
    except BaseException:  # no half file left behind (nor counted in sizes)
        partial.unlink(missing_ok=True)
        raise
