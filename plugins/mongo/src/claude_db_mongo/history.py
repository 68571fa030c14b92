"""MongoDB snapshots kept with the server: one history for the host and a session container.

The server's database ``claude_db_snapshots`` holds each snapshot's dump in 1 MiB chunks
(collection ``files``) and its record (``snapshots``: core's ``snapshot.json``); a
snapshot's directory in a state directory holds ``mongo.json`` naming it, and the dump once
fetched. The record is written last, in one document (a standalone server has no
multi-document transactions): a snapshot is listed whole or not at all, and the chunks of
a save killed before its record are swept a day later (:func:`sweep`; a save running
elsewhere meanwhile is never touched). So the host and a session container list, restore
and undo the same snapshots, and a re-created container finds them all.

Each user of the server sees only its own snapshots and note (``owner``: the URL's user,
the same from the host and a container), as PostgreSQL lists only the role's own. A user
without rights on that database (``Unauthorized``) keeps snapshots in the state directory
of whoever took them, as MySQL's does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_db.errors import ClaudeDbError
from claude_db.kept_snapshots import KeptSnapshots, chunks, write_fetched
from claude_db.snapshots import META

if TYPE_CHECKING:
    from pymongo import MongoClient

DATABASE = "claude_db_snapshots"
RECORD = "mongo.json"  # in the snapshot's directory: {"key": <its id on the server>}
KEPT = KeptSnapshots(RECORD)
#: chunks without a record older than this are a killed save's: swept
ORPHAN_AGE = timedelta(days=1)
UNSNAPSHOTTED = "unsnapshotted"
#: the server's code for a user without the rights an operation needs
UNAUTHORIZED = 13


def catalog(client: MongoClient[Any], owner: str) -> list[dict[str, Any]] | None:
    """The user's snapshots the server keeps (``Engine.snapshot_catalog``); None where the
    user may not keep any there (then the state directories are the history)."""
    if not allowed(client):
        return None
    found = []
    for document in client[DATABASE].snapshots.find({"owner": owner}, {"record": 1}):
        try:
            record = json.loads(document["record"])
        except (KeyError, TypeError, ValueError):
            record = None  # listed as unrecorded, to delete
        found.append({"record": record, "key": f"mongo-{document['_id']}",
                      "files": KEPT.files(str(document["_id"]))})
    return found


def allowed(client: MongoClient[Any]) -> bool:
    """Whether the user may read the history's database (reading creates nothing)."""
    from pymongo.errors import OperationFailure

    try:
        client[DATABASE].snapshots.find_one({}, {"_id": 1})
    except OperationFailure as exc:
        if exc.code == UNAUTHORIZED:
            return False
        raise
    return True


def keep(client: MongoClient[Any], directory: Path, owner: str) -> None:
    """Keep the snapshot saved in ``directory`` with the server: its files, then its record,
    then ``mongo.json``. A directory that names its id already is kept again under it if
    the server lost it (neither kept nor deleted, and its data is here). Nothing where the
    user may not."""
    if not allowed(client):
        return
    db = client[DATABASE]
    key = KEPT.key(directory)
    if key is not None:
        known = (db.snapshots.find_one({"_id": key}, {"_id": 1}) is not None
                 or db.deleted.find_one({"_id": key}, {"_id": 1}) is not None)
        if known or not KEPT.holds_data(directory):
            return
        db.files.delete_many({"snapshot": key, "owner": owner})  # a killed keep's chunks
    import secrets  # late: secrets loads hashlib (OpenSSL), a cost every command would pay
    key = key or secrets.token_hex(12)
    started = datetime.now(UTC)
    for path in KEPT.data_files(directory):
        for seq, chunk in enumerate(chunks(path)):
            db.files.insert_one({"snapshot": key, "owner": owner, "name": path.name,
                                 "seq": seq, "data": chunk, "started": started})
    record = json.loads((directory / META).read_text())
    db.snapshots.insert_one({"_id": key, "owner": owner, "record": json.dumps(record)})
    for name, text in KEPT.files(key).items():
        (directory / name).write_text(text)


def fetch(client: MongoClient[Any], directory: Path, owner: str) -> None:
    """Bring the snapshot's files from the server into ``directory`` (a state directory
    that did not save it)."""
    key = KEPT.key(directory)
    if key is None:
        return  # kept in this directory only
    db = client[DATABASE]
    if db.snapshots.find_one({"_id": key, "owner": owner}) is None:
        raise ClaudeDbError("the snapshot is gone from the server")
    for name in KEPT.valid_names(db.files.distinct("name", {"snapshot": key})):
        if not (directory / name).exists():
            found = db.files.find({"snapshot": key, "name": name}).sort("seq", 1)
            write_fetched(directory / name, (chunk["data"] for chunk in found))


def delete(client: MongoClient[Any], directory: Path, owner: str) -> None:
    key = KEPT.key(directory)
    if key is None:
        return
    db = client[DATABASE]
    # the tombstone first: only a snapshot the server says was deleted goes from other
    # state directories (a history lost with its database is kept again from theirs)
    if db.deleted.find_one({"_id": key}, {"_id": 1}) is None:
        db.deleted.insert_one({"_id": key, "owner": owner})
    # then the record: never listed without its files
    if db.snapshots.delete_one({"_id": key, "owner": owner}).deleted_count:
        db.files.delete_many({"snapshot": key, "owner": owner})


def deleted(client: MongoClient[Any], directory: Path) -> bool:
    """Whether the snapshot in ``directory`` (which the server does not list) may go from
    it: the server says it was deleted, or the directory holds none of its data."""
    key = KEPT.key(directory)
    if not KEPT.holds_data(directory):
        return True
    if key is None or not allowed(client):
        return False
    return client[DATABASE].deleted.find_one({"_id": key}, {"_id": 1}) is not None


def size(client: MongoClient[Any], directory: Path, owner: str) -> int:
    key = KEPT.key(directory)
    if key is None:
        return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return sum(len(chunk["data"]) for chunk in
               client[DATABASE].files.find({"snapshot": key, "owner": owner}, {"data": 1}))


def sweep(client: MongoClient[Any], owner: str) -> list[str]:
    """Remove the user's chunks of saves killed before their record (older than a day)."""
    if not allowed(client):
        return []
    db = client[DATABASE]
    recorded = {document["_id"] for document in db.snapshots.find({}, {"_id": 1})}
    old = datetime.now(UTC) - ORPHAN_AGE
    doomed = [key for key in db.files.distinct("snapshot", {"owner": owner,
                                                            "started": {"$lt": old}})
              if key not in recorded]
    for key in doomed:
        db.files.delete_many({"snapshot": key, "owner": owner})
    return [f"removed the chunks of an unfinished snapshot ({key})" for key in doomed]


def note(client: MongoClient[Any], value: dict[str, str], owner: str) -> None:
    """Keep core's note with the server (where the user may keep snapshots there)."""
    if allowed(client):
        which = {"owner": owner, "name": UNSNAPSHOTTED}
        client[DATABASE].notes.replace_one(which, {**which, **value}, upsert=True)


def noted(client: MongoClient[Any], owner: str) -> dict[str, str] | None:
    if not allowed(client):
        return None
    found = client[DATABASE].notes.find_one({"owner": owner, "name": UNSNAPSHOTTED})
    if found and all(isinstance(found.get(k), str) for k in ("reason", "at")):
        return {"reason": found["reason"], "at": found["at"]}
    return None
