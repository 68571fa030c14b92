"""MongoDB snapshots kept with the server: one history for the host and a session container.

The server's database ``claude_db_snapshots`` holds each snapshot's dump in 1 MiB chunks
(collection ``files``) and its record (``snapshots``: core's ``snapshot.json``); a
snapshot's directory in a state directory holds ``mongo.json`` naming it, and the dump once
fetched. The record is written last, in one document (a standalone server has no
multi-document transactions): a snapshot is listed whole or not at all, and the chunks of
a save killed before its record are swept a day later (:func:`sweep`; a save running
elsewhere meanwhile is never touched). So the host and a session container list, restore
and undo the same snapshots, and a re-created container finds them all.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from claude_db.errors import ClaudeDbError
from claude_db.snapshots import META

DATABASE = "claude_db_snapshots"
RECORD = "mongo.json"  # in the snapshot's directory: {"key": <its id on the server>}
CHUNK = 1 << 20
#: chunks without a record older than this are a killed save's: swept
ORPHAN_AGE = timedelta(days=1)
UNSNAPSHOTTED = "unsnapshotted"


def catalog(client: Any) -> list[dict[str, Any]]:
    """The snapshots the server keeps (``Engine.snapshot_catalog``)."""
    found = []
    for document in client[DATABASE].snapshots.find({}, {"record": 1}):
        try:
            record = json.loads(document["record"])
        except (KeyError, TypeError, ValueError):
            record = None  # listed as unrecorded, to delete
        found.append({"record": record, "key": f"mongo-{document['_id']}",
                      "files": _files(str(document["_id"]))})
    return found


def keep(client: Any, directory: Path) -> None:
    """Keep the snapshot saved in ``directory`` with the server: its files, then its record,
    then ``mongo.json``."""
    key = secrets.token_hex(12)
    db = client[DATABASE]
    started = datetime.now(UTC)
    for path in sorted(directory.iterdir()):
        if path.name in (META, RECORD) or not path.is_file():
            continue
        with path.open("rb") as data:
            for seq, chunk in enumerate(iter(lambda: data.read(CHUNK), b"")):
                db.files.insert_one({"snapshot": key, "name": path.name, "seq": seq,
                                     "data": chunk, "started": started})
    record = json.loads((directory / META).read_text())
    db.snapshots.insert_one({"_id": key, "record": json.dumps(record)})
    for name, text in _files(key).items():
        (directory / name).write_text(text)


def fetch(client: Any, directory: Path) -> None:
    """Bring the snapshot's files from the server into ``directory`` (a state directory
    that did not save it)."""
    key = kept_key(directory)
    if key is None:
        return  # kept in this directory only
    db = client[DATABASE]
    if db.snapshots.find_one({"_id": key}) is None:
        raise ClaudeDbError("the snapshot is gone from the server")
    for name in db.files.distinct("name", {"snapshot": key}):
        if (directory / name).exists():
            continue
        partial = directory / f".{name}.fetching"
        with partial.open("wb") as out:
            for chunk in db.files.find({"snapshot": key, "name": name}).sort("seq", 1):
                out.write(chunk["data"])
        partial.rename(directory / name)


def delete(client: Any, directory: Path) -> None:
    key = kept_key(directory)
    if key is not None:  # the record first: never listed without its files
        client[DATABASE].snapshots.delete_one({"_id": key})
        client[DATABASE].files.delete_many({"snapshot": key})


def size(client: Any, directory: Path) -> int:
    key = kept_key(directory)
    if key is None:
        return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return sum(len(chunk["data"]) for chunk in
               client[DATABASE].files.find({"snapshot": key}, {"data": 1}))


def sweep(client: Any) -> list[str]:
    """Remove the chunks of saves killed before their record (older than a day)."""
    db = client[DATABASE]
    recorded = {document["_id"] for document in db.snapshots.find({}, {"_id": 1})}
    old = datetime.now(UTC) - ORPHAN_AGE
    doomed = [key for key in db.files.distinct("snapshot", {"started": {"$lt": old}})
              if key not in recorded]
    for key in doomed:
        db.files.delete_many({"snapshot": key})
    return [f"removed the chunks of an unfinished snapshot ({key})" for key in doomed]


def note(client: Any, value: dict[str, str]) -> None:
    client[DATABASE].notes.replace_one({"_id": UNSNAPSHOTTED},
                                       {"_id": UNSNAPSHOTTED, **value}, upsert=True)


def noted(client: Any) -> dict[str, str] | None:
    found = client[DATABASE].notes.find_one({"_id": UNSNAPSHOTTED})
    if found and all(isinstance(found.get(k), str) for k in ("reason", "at")):
        return {"reason": found["reason"], "at": found["at"]}
    return None


def kept_key(directory: Path) -> str | None:
    """The snapshot's id on the server, if it is kept there."""
    try:
        key = json.loads((directory / RECORD).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return key if isinstance(key, str) and len(key) == 24 and key.isalnum() else None


def _files(key: str) -> dict[str, str]:
    return {RECORD: json.dumps({"key": key})}
