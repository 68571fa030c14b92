"""The MongoDB engine's driver-level operations against a real MongoDB-wire-protocol server.

No ``mongod`` can be installed on these machines, so a stand-in runs in its place:
SecantusDB (PyPI, root pyproject's ``dev`` extra), a separate server process speaking
OP_MSG on a TCP port, with SCRAM-SHA-256 authentication switched on. It is provisioned
the way the official image is: a first run without ``--auth`` creates the root user in
``admin``, then the server is restarted with ``--auth``. Everything here goes through
pymongo, over TCP, as claude-db does with a real server: through the CLI with only
``DATABASE_URL`` (no session), and through the Python API.

What this cannot show (a real ``mongod``'s behaviour, ``mongodump``/``mongorestore``) is
listed in plugins/mongo/README.md.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from claude_db import ClaudeDbError, Credentials, Endpoint
from claude_db.errors import ExitCode, NotRunningError, UsageError
from claude_db.processes import HostTools
from claude_db.readiness import wait_until_ready
from claude_db.runtimes.local.runtime import free_port
from claude_db.testing import BIN, CONTRACT_PASSWORD, Cli, assert_one_line_error
from claude_db_mongo import MongoEngine, history
from claude_db_mongo.archive import MAGIC, ByteReader
from claude_db_mongo.driver_archive import load_archive
from claude_db_mongo.staging import PREFIX, Staging

USER = "root"
BIG = 10_000
SERVER = "secantusd-py"
MONGOSH_PACKAGE = "mongosh@2.12"  # the version tested (newer ones may want a newer Node.js)
# the driver-level archive whatever tools this machine has: these tests are about it
DRIVER = {"CLAUDE_DB_MONGO_DUMP_FORMAT": "driver", "CLAUDE_DB_AUTO_SNAPSHOTS": "0",
          "CLAUDE_DB_ALLOW_URL_DESTRUCTIVE": "true"}  # a bare URL no session owns


@dataclass
class StandIn:
    """A running stand-in server and how to reach it."""

    endpoint: Endpoint
    log: Path

    @property
    def url(self) -> str:
        return MongoEngine().url(self.endpoint)

    def env(self, database: str | None = None, **extra: str) -> dict[str, str]:
        url = MongoEngine().url(self.endpoint.with_database(database))
        return {"DATABASE_URL": url, **DRIVER, **extra}

    def client(self) -> MongoClient[dict[str, Any]]:
        return MongoClient(self.url, directConnection=True, serverSelectionTimeoutMS=10_000)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    server = shutil.which(SERVER, path=str(BIN))
    if server is None:
        pytest.fail(f"{SERVER} is not installed in {BIN}: ./dev setup installs it (SecantusDB)")
    root = tmp_path_factory.mktemp("standin")
    storage, log = root / "data", root / "server.log"
    base = [server, "--host", "127.0.0.1", "--storage-path", str(storage), "--standalone",
            "--log-level", "WARNING", "--cache-size", "256M"]
    credentials = Credentials(USER, CONTRACT_PASSWORD, "appdb")

    def exited(proc: subprocess.Popen[bytes]) -> str | None:
        return (f"{SERVER} exited: {log.read_text(errors='replace')[-2000:]}"
                if proc.poll() is not None else None)

    def serve(*extra: str, user: Credentials) -> tuple[subprocess.Popen[bytes], Endpoint]:
        """The server on a free port; on another one if a server another test started
        meanwhile took that port first (tests run side by side)."""
        attempts = 0
        while True:
            attempts += 1
            endpoint = Endpoint("127.0.0.1", free_port(), credentials)
            logged = log.stat().st_size if log.exists() else 0
            proc = _start([*base, "--port", str(endpoint.port), *extra], log)
            try:
                wait_until_ready(MongoEngine(), Endpoint(endpoint.host, endpoint.port, user),
                                 timeout=120, failure=partial(exited, proc), what=SERVER)
            except ClaudeDbError:
                _stop(proc)
                taken = b"address already in use" in log.read_bytes()[logged:].lower()
                if not taken or attempts == 3:
                    raise
                continue
            return proc, endpoint

    # 1. like the official image's init: no auth, create the root user in admin, stop
    first, endpoint = serve(user=Credentials("", "", "admin"))
    try:
        with MongoClient(host=endpoint.host, port=endpoint.port, directConnection=True) as c:
            c.admin.command("createUser", USER, pwd=CONTRACT_PASSWORD, roles=["root"])
    finally:
        _stop(first)

    # 2. the server as sessions see it: authentication required
    proc, endpoint = serve("--auth", user=credentials)
    try:
        yield StandIn(endpoint, log)
    finally:
        _stop(proc)


@pytest.fixture
def db(standin: StandIn) -> Iterator[Any]:
    """The app database, emptied before the test."""
    with standin.client() as client:
        client.drop_database("appdb")
        yield client["appdb"]


def raw_documents(database: Any, name: str) -> list[bytes]:
    """Every stored document of a collection, byte for byte, in _id order."""
    raw = CodecOptions(document_class=RawBSONDocument)
    return [doc.raw for doc in database.get_collection(name, codec_options=raw).find().sort("_id")]


def describe(database: Any) -> dict[str, Any]:
    """Collections with their type, options and indexes (what an archive must keep)."""
    out = {}
    for info in database.list_collections():
        if info["name"].startswith("system."):
            continue
        indexes = []
        if info.get("type", "collection") == "collection":
            indexes = sorted(
                (json.dumps({k: v for k, v in ix.items() if k != "ns"}, sort_keys=True,
                            default=str) for ix in database[info["name"]].list_indexes()),
            )
        out[info["name"]] = (info.get("type", "collection"), info.get("options", {}), indexes)
    return out


def without_collection_options(shape: dict[str, Any]) -> dict[str, Any]:
    return {name: (kind, options if kind == "view" else None, indexes)
            for name, (kind, options, indexes) in shape.items()}


def archive_collections(archive: bytes) -> dict[str, dict[str, Any]]:
    """The collection records of a driver-level archive, by name."""
    from claude_db_mongo.archive import COLLECTION, TRAILER, ByteReader, read_record

    reader = ByteReader([archive])
    assert reader.read(len(MAGIC)) == MAGIC
    found = {}
    while True:
        kind, data = read_record(reader)
        if kind == COLLECTION:
            meta = bson.decode(data)
            found[meta["name"]] = meta
        elif kind == TRAILER:
            return found


def seed_big(database: Any, count: int = BIG) -> None:
    """``count`` (10,000) documents of many BSON types, a unique and a partial index, a
    capped collection and a view."""
    import datetime
    import decimal
    import uuid

    from bson import Binary, Decimal128, Int64, ObjectId, Regex, Timestamp

    base = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    docs = []
    for i in range(count):
        doc: dict[str, Any] = {
            "_id": ObjectId(f"{i:024x}"),
            "i": i,
            "big": Int64(i * 10_000_000_000),
            "price": Decimal128(decimal.Decimal(i) / 100),
            "ratio": i / 7,
            "name": f"user {i} ünïcode ✓ \"q\" 'a' \\",
            "when": base + datetime.timedelta(minutes=i),
            "tags": [f"t{i % 5}", i % 3 == 0, None],
            "nested": {"depth": {"level": i % 10, "empty": {}}, "list": [[i], {"k": i}]},
            "blob": Binary(i.to_bytes(4, "big") * 3),
            "uuid": Binary.from_uuid(uuid.UUID(int=i)),
            "ts": Timestamp(1_700_000_000 + i, 1),
            "pattern": Regex(f"^u{i}", "i"),
        }
        if i % 11 == 0:
            doc["optional"] = None
        docs.append(doc)
    database.people.insert_many(docs)
    database.people.create_index("i", unique=True, name="i_unique")
    database.people.create_index([("name", 1), ("when", -1)], name="name_when",
                                 partialFilterExpression={"i": {"$gt": 100}})
    database.create_collection("recent", capped=True, size=1 << 20, max=1000)
    database.recent.insert_many([{"_id": n, "n": n} for n in range(50)])
    database.command({"create": "adults", "viewOn": "people",
                      "pipeline": [{"$match": {"i": {"$gte": count - 10}}}]})


# -- status, query ------------------------------------------------------------------------


def test_status_with_database_url_only(cli: Cli, standin: StandIn) -> None:
    result = cli("claude-db", "status", "--json", env=standin.env())
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["ready"] is True and report["engine"] == "mongo"
    assert report["version"] and report["database"] == "appdb"
    assert (report["host"], report["port"]) == ("127.0.0.1", standin.endpoint.port)


def test_info_masks_the_password(cli: Cli, standin: StandIn) -> None:
    result = cli("claude-db", "info", "--json", env=standin.env())
    assert result.code == 0, result
    assert CONTRACT_PASSWORD not in result.stdout
    shown = cli("claude-db", "info", "--json", "--show-password", env=standin.env())
    assert json.loads(shown.stdout)["MONGODB_URI"] == standin.url


def test_query_commands_and_cursors(cli: Cli, standin: StandIn, db: Any) -> None:
    env = standin.env()
    inserted = cli("claude-db", "query", json.dumps({"insert": "users", "documents": [
        {"name": "ann", "age": 31, "born": {"$date": "1993-04-01T00:00:00Z"}},
        {"name": "bob", "age": 25},
        {"name": "cy", "age": 42, "id": {"$oid": "65f000000000000000000001"}},
    ]}), env=env)
    assert inserted.code == 0, inserted
    assert json.loads(inserted.stdout) == [{"n": 3, "ok": 1.0}]

    found = cli("claude-db", "query", "--json",
                '{"find": "users", "filter": {"age": {"$gt": 30}}, "sort": {"age": 1},'
                ' "projection": {"_id": 0}}', env=env)
    assert found.code == 0, found
    assert json.loads(found.stdout) == [
        {"name": "ann", "age": 31, "born": {"$date": "1993-04-01T00:00:00Z"}},
        {"name": "cy", "age": 42, "id": {"$oid": "65f000000000000000000001"}},
    ]
    # a cursor is drained whatever its batch size
    db.many.insert_many([{"n": n} for n in range(25)])
    batched = cli("claude-db", "query", '{"find": "many", "batchSize": 2, "sort": {"n": 1}}',
                  env=env)
    assert [d["n"] for d in json.loads(batched.stdout)] == list(range(25))
    aggregated = cli("claude-db", "query", json.dumps({
        "aggregate": "users", "pipeline": [{"$group": {"_id": None, "total": {"$sum": "$age"}}}],
        "cursor": {},
    }), env=env)
    assert json.loads(aggregated.stdout) == [{"_id": None, "total": 98}]
    names = cli("claude-db", "query", '{"listCollections": 1, "nameOnly": true}', env=env)
    assert sorted(d["name"] for d in json.loads(names.stdout)) == ["many", "users"]
    csv = cli("claude-db", "query", "--csv",
              '{"find": "users", "sort": {"age": 1}, "projection": {"_id": 0}}', env=env)
    assert csv.stdout.splitlines() == [
        "name,age,born,id", "bob,25,,", 'ann,31,"{""$date"": ""1993-04-01T00:00:00Z""}",',
        'cy,42,,"{""$oid"": ""65f000000000000000000001""}"',
    ]
    other = cli("claude-db", "query", "--database", "otherdb", '{"insert": "x", "documents": [{}]}',
                env=env)
    assert other.code == 0, other
    assert db.client["otherdb"].x.count_documents({}) == 1
    db.client.drop_database("otherdb")


def test_query_errors_are_one_line(cli: Cli, standin: StandIn, db: Any) -> None:
    env = standin.env()
    unknown = cli("claude-db", "query", '{"noSuchCommand": 1}', env=env)
    assert_one_line_error(unknown, ExitCode.FAILED)
    assert "no such command" in unknown.stderr
    assert_one_line_error(cli("claude-db", "query", "{nope", env=env), ExitCode.USAGE)
    wrong = dict(env, DATABASE_URL=standin.url.replace("%40ss", "%40sS"))
    denied = cli("claude-db", "query", '{"ping": 1}', env=wrong)
    assert_one_line_error(denied, ExitCode.FAILED)
    assert "authentication failed" in denied.stderr
    assert_one_line_error(cli("claude-db", "status", env=wrong), ExitCode.FAILED)  # it answered


# -- export, reset, import ----------------------------------------------------------------


def test_ten_thousand_documents_survive_export_reset_import(
    cli: Cli, standin: StandIn, db: Any, tmp_path: Path
) -> None:
    seed_big(db)
    before = {name: raw_documents(db, name) for name in ("people", "recent")}
    shape = describe(db)
    assert len(before["people"]) == BIG
    env = standin.env()

    dump = tmp_path / "appdb.archive.gz"
    exported = cli("claude-db", "export", str(dump), env=env)
    assert exported.code == 0, exported
    assert gzip.decompress(dump.read_bytes()).startswith(MAGIC)

    assert cli("claude-db", "reset", "--yes", env=env).code == 0
    assert db.list_collection_names() == []

    imported = cli("claude-db", "import", str(dump), env=env)
    assert imported.code == 0, imported
    after = {name: raw_documents(db, name) for name in ("people", "recent")}
    for name, documents in before.items():
        assert len(after[name]) == len(documents)
        mismatched = [i for i, (a, b) in enumerate(zip(documents, after[name], strict=True))
                      if a != b]
        assert mismatched == [], f"{name}: documents differ at {mismatched[:5]}"
    # Types, view definitions and indexes as before. Collection options (capped) are in the
    # archive and on the staged collection (test_python_api_round_trip), but the stand-in's
    # renameCollection forgets a collection's options (mongod keeps them): not compared here.
    assert without_collection_options(describe(db)) == without_collection_options(shape)
    archived = archive_collections(gzip.decompress(dump.read_bytes()))
    assert archived["recent"]["options"] == {"capped": True, "size": 1 << 20, "max": 1000}
    view = cli("claude-db", "query", '{"find": "adults", "projection": {"i": 1, "_id": 0}}',
               env=env)
    assert [d["i"] for d in json.loads(view.stdout)] == list(range(9990, BIG))
    assert not [n for n in db.list_collection_names() if n.startswith(PREFIX)]


def test_one_snapshot_history_for_every_state_directory(
    cli: Cli, standin: StandIn, db: Any, tmp_path: Path
) -> None:
    """12.7/12.8: snapshots live with the server, so the host and a session container (a
    state directory each: the container's is its own filesystem) see one history, which a
    re-created container finds; a reset that took none is noted there too."""
    with standin.client() as client:
        client.drop_database(history.DATABASE)
    db.items.insert_many([{"n": n} for n in range(300)])

    def where(name: str, snapshots: str = "5") -> dict[str, Any]:
        return {"env": standin.env(CLAUDE_DB_STATE_DIR=str(tmp_path / name),
                                   CLAUDE_DB_AUTO_SNAPSHOTS=snapshots)}

    def reasons(**kwargs: Any) -> list[str]:
        shown = cli("claude-db", "snapshot", "list", "--json", **kwargs)
        assert shown.code == 0, shown
        return [s["reason"] for s in json.loads(shown.stdout)]

    host, inside, again = where("host"), where("container"), where("re-created")
    assert cli("claude-db", "snapshot", "save", "s1", **inside).code == 0
    reset = cli("claude-db", "reset", "--yes", **inside)
    assert reset.code == 0, reset
    assert db.items.count_documents({}) == 0
    assert reasons(**host) == ["", "reset"]
    undone = cli("claude-db", "undo", **again)
    assert undone.code == 0, undone
    assert db.items.count_documents({}) == 300
    assert reasons(**host) == ["", "reset", "undo"]
    # a reset that took no snapshot: undo anywhere says so, and restores nothing older
    reset = cli("claude-db", "reset", "--yes", **where("container", snapshots="0"))
    assert reset.code == 0, reset
    for elsewhere in (host, again):
        refused = cli("claude-db", "undo", **elsewhere)
        assert_one_line_error(refused, ExitCode.FAILED)
        assert "nothing to undo for the last reset" in refused.stderr, refused
        assert db.items.count_documents({}) == 0
    assert cli("claude-db", "snapshot", "delete", "s1", **host).code == 0
    assert reasons(**again) == ["reset", "undo"]
    with standin.client() as client:
        client.drop_database(history.DATABASE)


def test_a_history_lost_on_the_server_is_kept_again_from_the_state_directory(
    cli: Cli, standin: StandIn, db: Any, tmp_path: Path
) -> None:
    """The history database dropped (by hand, an agent, a new volume): the snapshots a
    state directory holds are kept again from it, never deleted; one deleted elsewhere
    before stays deleted."""
    with standin.client() as client:
        client.drop_database(history.DATABASE)
    db.items.insert_many([{"n": n} for n in range(50)])

    def where(name: str) -> dict[str, Any]:
        return {"env": standin.env(CLAUDE_DB_STATE_DIR=str(tmp_path / name))}

    def names(**kwargs: Any) -> list[str]:
        shown = cli("claude-db", "snapshot", "list", "--json", **kwargs)
        assert shown.code == 0, shown
        return [s["name"] for s in json.loads(shown.stdout)]

    host, other = where("host"), where("other")
    try:
        for name in ("old", "gone"):
            assert cli("claude-db", "snapshot", "save", name, **host).code == 0
        assert names(**other) == ["old", "gone"]
        assert cli("claude-db", "snapshot", "delete", "gone", **other).code == 0
        assert names(**host) == ["old"]
        with standin.client() as client:
            client.drop_database(history.DATABASE)
        assert names(**host) == ["old"]  # before: [] (its directory was removed)
        assert names(**where("fresh")) == ["old"]
        db.items.delete_many({})
        assert cli("claude-db", "snapshot", "restore", "old", "--yes", **where("fresh")).code == 0
        assert db.items.count_documents({}) == 50
    finally:
        with standin.client() as client:
            client.drop_database(history.DATABASE)


def test_a_killed_fetchs_leftover_is_never_kept_with_the_server(
    cli: Cli, standin: StandIn, db: Any, tmp_path: Path
) -> None:
    """A hidden ``.<file>.fetching`` left in a snapshot's directory by a killed fetch is not
    one of its files: kept again from that directory, the snapshot still restores elsewhere
    (before, the leftover was sent, and every fetch refused the snapshot)."""
    with standin.client() as client:
        client.drop_database(history.DATABASE)
    db.items.insert_many([{"n": n} for n in range(20)])
    host = standin.env(CLAUDE_DB_STATE_DIR=str(tmp_path / "host"))
    try:
        assert cli("claude-db", "snapshot", "save", "s1", env=host).code == 0
        [record] = (tmp_path / "host").rglob(history.RECORD)
        [data] = [path for path in record.parent.iterdir()
                  if path.name not in ("snapshot.json", history.RECORD)]
        (record.parent / f".{data.name}.fetching").write_bytes(b"half")
        with standin.client() as client:
            client.drop_database(history.DATABASE)
        listed = cli("claude-db", "snapshot", "list", "--json", env=host)  # keeps it again
        assert listed.code == 0, listed
        with standin.client() as client:
            assert client[history.DATABASE].files.distinct("name") == [data.name]
        db.items.delete_many({})
        fresh = standin.env(CLAUDE_DB_STATE_DIR=str(tmp_path / "fresh"))
        restored = cli("claude-db", "snapshot", "restore", "s1", "--yes", env=fresh)
        assert restored.code == 0, restored
        assert db.items.count_documents({}) == 20
    finally:
        with standin.client() as client:
            client.drop_database(history.DATABASE)


def test_export_import_through_pipes(cli: Cli, standin: StandIn, db: Any) -> None:
    db.items.insert_many([{"_id": n, "label": f"item {n}"} for n in range(100)])
    env = standin.env()
    exported = subprocess.run([str(BIN / "claude-db"), "export", "-"], capture_output=True,
                              env={**os.environ, **env})
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith(MAGIC)
    assert cli("claude-db", "reset", "--yes", env=env).code == 0
    piped = cli("claude-db", "import", "-", input=gzip.compress(exported.stdout), env=env)
    assert piped.code == 0, piped
    assert [d["label"] for d in db.items.find().sort("_id")] == [f"item {n}" for n in range(100)]


def test_import_replaces_the_dumps_collections_and_keeps_the_others(
    cli: Cli, standin: StandIn, db: Any, tmp_path: Path
) -> None:
    db.items.insert_many([{"_id": 1, "v": "dumped"}])
    db.command({"create": "first_item", "viewOn": "items", "pipeline": [{"$limit": 1}]})
    env = standin.env()
    dump = tmp_path / "items.archive"
    assert cli("claude-db", "export", str(dump), env=env).code == 0
    db.items.insert_one({"_id": 2, "v": "added later"})
    db.drop_collection("first_item")
    db.create_collection("first_item")  # now a collection where the dump has a view
    db.unrelated.insert_one({"_id": "keep me"})

    assert cli("claude-db", "import", str(dump), env=env).code == 0
    assert list(db.items.find()) == [{"_id": 1, "v": "dumped"}]
    assert list(db.unrelated.find()) == [{"_id": "keep me"}]
    kinds = {i["name"]: i.get("type") for i in db.list_collections()}
    assert kinds["first_item"] == "view"
    assert not [n for n in kinds if n.startswith(PREFIX)]


def test_failed_import_applies_nothing(
    cli: Cli, standin: StandIn, db: Any, tmp_path: Path
) -> None:
    db.items.insert_many([{"_id": n, "v": n} for n in range(3000)])
    env = standin.env()
    dump = tmp_path / "items.archive"
    assert cli("claude-db", "export", str(dump), env=env).code == 0
    db.items.delete_many({"_id": {"$gte": 1000}})
    db.items.update_one({"_id": 1}, {"$set": {"v": "changed"}})
    state = raw_documents(db, "items")

    # truncated in the middle of the documents
    truncated = tmp_path / "truncated.archive"
    truncated.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    result = cli("claude-db", "import", str(truncated), env=env)
    assert_one_line_error(result, ExitCode.FAILED)
    assert "nothing was applied" in result.stderr and "truncated" in result.stderr

    # a document count that does not match (a corrupt archive): caught before the swap
    data = bytearray(dump.read_bytes())
    end = data.rindex(b"E")  # the last collection's end record: change its count
    count_at = data.index(b"count\x00", end) + len(b"count\x00")
    data[count_at:count_at + 4] = (2999).to_bytes(4, "little")
    corrupt = tmp_path / "corrupt.archive"
    corrupt.write_bytes(bytes(data))
    result = cli("claude-db", "import", str(corrupt), env=env)
    assert_one_line_error(result, ExitCode.FAILED)
    assert "should hold 2999 documents" in result.stderr

    # the server refuses a document (duplicate _id, i.e. a unique index violation)
    duplicate = duplicate_id_archive(tmp_path)
    result = cli("claude-db", "import", str(duplicate), env=env)
    assert_one_line_error(result, ExitCode.FAILED)
    assert "nothing was applied" in result.stderr and "duplicate" in result.stderr.lower()

    # not an archive at all
    (tmp_path / "notes.txt").write_text("db.items.drop()\n")
    result = cli("claude-db", "import", str(tmp_path / "notes.txt"), env=env)
    assert_one_line_error(result, ExitCode.FAILED)
    assert "not a MongoDB dump" in result.stderr

    assert raw_documents(db, "items") == state
    assert db.list_collection_names() == ["items"]


def duplicate_id_archive(tmp_path: Path) -> Path:
    """A well-formed archive whose collection holds two documents with one _id."""
    from claude_db_mongo.archive import COLLECTION, DOCUMENT, END, HEADER, TRAILER, record

    doc = bson.encode({"_id": 7, "v": "twice"})
    path = tmp_path / "duplicate.archive"
    path.write_bytes(b"".join([
        MAGIC,
        record(HEADER, {"format": 1, "database": "appdb", "server_version": "",
                        "created": None}),
        record(COLLECTION, {"name": "items", "type": "collection", "options": {},
                            "indexes": []}),
        DOCUMENT + doc, DOCUMENT + doc,
        record(END, {"name": "items", "count": 2}),
        record(TRAILER, {"collections": 1, "documents": 2}),
    ]))
    return path


def test_reset_drops_the_database_and_refuses_the_servers_own(
    cli: Cli, standin: StandIn, db: Any
) -> None:
    db.items.insert_one({"x": 1})
    env = standin.env()
    assert_one_line_error(cli("claude-db", "reset", env=env), ExitCode.CONFIRMATION_NEEDED)
    assert db.items.count_documents({}) == 1
    assert cli("claude-db", "reset", "--yes", env=env).code == 0
    assert "appdb" not in db.client.list_database_names()
    refused = cli("claude-db", "reset", "--yes", "--database", "admin", env=env)
    assert_one_line_error(refused, ExitCode.USAGE)
    assert USER in [u["user"] for u in db.client.admin.command("usersInfo")["users"]]


# -- mongosh -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mongosh_package() -> Path:
    """npm's ``mongosh`` package (MongoDB's shell is plain Node.js; Debian does not package
    it), installed once into the test cache; returns the directory holding node_modules."""
    cache = Path(os.environ.get("CLAUDE_DB_TEST_CACHE", "/var/cache/claude-db-test")) / "mongosh"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers install it once
        installed = cache / "node_modules" / "mongosh" / "package.json"
        wanted = MONGOSH_PACKAGE.split("@", 1)[1]
        if not installed.exists() or not json.loads(installed.read_text())["version"].startswith(
            wanted + "."
        ):
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail("npm is needed to install mongosh for the tests (apt-get install npm)")
            proc = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache),
                 MONGOSH_PACKAGE],
                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
            )
            if proc.returncode != 0:
                pytest.fail(f"npm install mongosh failed: {proc.stderr[-2000:]}")
    return cache


@pytest.fixture(scope="session")
def mongosh_dir(mongosh_package: Path) -> Path:
    """A directory holding ``mongosh``: PATH's if there is one, else the npm package's."""
    if found := shutil.which("mongosh"):
        return Path(found).parent
    return mongosh_package / "node_modules" / ".bin"


def test_mongosh_opens_on_the_database(
    cli: Cli, standin: StandIn, db: Any, mongosh_dir: Path, tmp_path: Path
) -> None:
    db.items.insert_one({"_id": 1, "label": "seen by mongosh"})
    env = standin.env(PATH=os.pathsep.join([str(mongosh_dir), os.environ["PATH"]]))
    evaluated = cli("claude-db", "mongosh", "--eval",
                    "print(db.getName(), db.items.findOne().label)", input="", env=env)
    assert evaluated.code == 0, evaluated
    assert "appdb seen by mongosh" in evaluated.stdout
    piped = cli("claude-db", "shell", input="db.items.countDocuments({})\n", env=env)
    assert piped.code == 0, piped
    assert "1" in piped.stdout.split()
    other = cli("claude-db", "mongosh", "--database", "otherdb", "--eval", "print(db.getName())",
                input="", env=env)
    assert other.code == 0 and "otherdb" in other.stdout, other

    without = cli("claude-db", "mongosh", input="", env=standin.env(PATH=str(tmp_path)))
    assert_one_line_error(without, ExitCode.FAILED)
    assert "mongosh is not installed" in without.stderr


# -- the Python API -----------------------------------------------------------------------


def test_python_api_round_trip(
    standin: StandIn, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine as a plugin author or core calls it: query, dump, reset, restore."""
    monkeypatch.setenv("CLAUDE_DB_MONGO_DUMP_FORMAT", "driver")
    engine = MongoEngine()
    endpoint = standin.endpoint
    assert documents(engine, endpoint, '{"insert": "api", "documents": [{"_id": 1}, '
                     '{"_id": 2}]}') == [{"n": 2, "ok": 1.0}]
    # a result streams batch by batch (getMore), in order
    inserted = documents(engine, endpoint, json.dumps(
        {"insert": "many", "documents": [{"_id": n} for n in range(250)]}))
    assert inserted == [{"n": 250, "ok": 1.0}]
    found = documents(engine, endpoint, '{"find": "many", "sort": {"_id": 1}, "batchSize": 7}')
    assert found == [{"_id": n} for n in range(250)]
    assert documents(engine, endpoint, '{"find": "api", "sort": {"_id": -1}}') == [
        {"_id": 2}, {"_id": 1}]
    seed_big(db, count=1000)  # (the 10,000-document round trip is the CLI test's)
    before = raw_documents(db, "people")
    shape = describe(db)
    archive = b"".join(engine.dump(HostTools(endpoint)))
    # loaded into staging collections, the archive has everything: options too
    with standin.client() as client:
        staging = Staging(client, "appdb")
        load_archive(ByteReader([archive]), staging)
        staged = {name[len(staging.prefix):]: value for name, value in describe(db).items()
                  if name.startswith(staging.prefix)}
        assert staged == shape
        staging.abandon()
    assert describe(db) == shape
    engine.reset(endpoint)
    assert db.list_collection_names() == []
    # restore takes any chunking of the archive
    pieces = [archive[i:i + 4093] for i in range(0, len(archive), 4093)]
    engine.restore(HostTools(endpoint), iter(pieces))
    assert raw_documents(db, "people") == before
    assert [d["_id"] for d in db.api.find().sort("_id")] == [1, 2]

    with pytest.raises(UsageError):
        documents(engine, endpoint, "not json")
    with pytest.raises(ClaudeDbError, match="no such command"):
        documents(engine, endpoint, '{"noSuchCommand": 1}')
    down = Endpoint("127.0.0.1", free_port(), endpoint.credentials)
    with pytest.raises(NotRunningError):
        documents(engine, down, '{"ping": 1}')
    with pytest.raises(ClaudeDbError, match="nothing was applied"):
        engine.restore(HostTools(endpoint), iter([archive[:-3]]))
    assert raw_documents(db, "people") == before


def documents(engine: MongoEngine, endpoint: Endpoint, text: str) -> list[Any]:
    """A query's documents, read while its context is open (they stream)."""
    with engine.query(endpoint, text) as result:
        assert result.documents is not None
        return list(result.documents)


def test_readiness_needs_the_right_password(standin: StandIn) -> None:
    engine = MongoEngine()
    assert engine.check_ready(standin.endpoint, timeout=120)
    wrong = Endpoint(standin.endpoint.host, standin.endpoint.port,
                     Credentials(USER, "not the password", "appdb"))
    with pytest.raises(ClaudeDbError, match="authentication failed"):
        engine.check_ready(wrong, timeout=120)
    anonymous = Endpoint(standin.endpoint.host, standin.endpoint.port, Credentials("", "", "appdb"))
    # unauthenticated, the server answers a ping but nothing that reads data
    with pytest.raises(ClaudeDbError, match="requires authentication"):
        documents(engine, anonymous, '{"listCollections": 1}')


def test_a_file_name_planted_on_the_server_never_writes_outside_the_snapshot(
    cli: Cli, standin: StandIn, db: Any, tmp_path: Path
) -> None:
    """A chunk of ``claude_db_snapshots.files`` whose name climbs out of the snapshot's
    directory (anyone with rights on the server may plant one) is refused before anything
    is written: restore fails with one error line, the file is never made."""
    with standin.client() as client:
        client.drop_database(history.DATABASE)
    db.items.insert_one({"n": 1})
    host = standin.env(CLAUDE_DB_STATE_DIR=str(tmp_path / "host"))
    assert cli("claude-db", "snapshot", "save", "s1", env=host).code == 0
    target = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    with standin.client() as client:
        kept = client[history.DATABASE]
        key = kept.snapshots.find_one({})["_id"]
        kept.files.insert_one({"snapshot": key, "owner": USER, "seq": 0, "data": b"x",
                               "name": "/" + "../" * 40 + str(target)[1:]})
    try:
        elsewhere = standin.env(CLAUDE_DB_STATE_DIR=str(tmp_path / "container"))
        restored = cli("claude-db", "snapshot", "restore", "s1", "--yes", env=elsewhere)
        assert_one_line_error(restored, ExitCode.FAILED)
        assert "the snapshot's files on the server are not valid" in restored.stderr, restored
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)
        with standin.client() as client:
            client.drop_database(history.DATABASE)


def test_each_user_of_a_shared_server_sees_only_its_own_snapshots(
    cli: Cli, standin: StandIn, db: Any, tmp_path: Path
) -> None:
    """Two users of one server (bare URLs, state directories of their own) keep separate
    histories: one's listing and undo never see the other's snapshot."""
    other = f"b{uuid.uuid4().hex[:8]}"
    with standin.client() as client:
        client.drop_database(history.DATABASE)
        client.admin.command("createUser", other, pwd=CONTRACT_PASSWORD, roles=[
            {"role": "dbOwner", "db": other},
            {"role": "readWrite", "db": history.DATABASE}])
    mine = standin.env(CLAUDE_DB_STATE_DIR=str(tmp_path / "mine"))
    try:
        db.items.insert_one({"n": 1})
        theirs = as_user(standin, other, tmp_path)
        saved = cli("claude-db", "snapshot", "save", "x", env=theirs)
        assert saved.code == 0, saved
        shown = cli("claude-db", "snapshot", "list", "--json", env=mine)
        assert shown.code == 0, shown
        assert json.loads(shown.stdout) == []
        undone = cli("claude-db", "undo", env=mine)
        assert_one_line_error(undone, ExitCode.FAILED)
        assert "nothing to undo" in undone.stderr, undone
        assert db.items.count_documents({}) == 1
        shown = cli("claude-db", "snapshot", "list", "--json", env=theirs)
        assert [s["name"] for s in json.loads(shown.stdout)] == ["x"]
    finally:
        with standin.client() as client:
            client.admin.command("dropUser", other)
            client.drop_database(other)
            client.drop_database(history.DATABASE)


def test_a_user_without_rights_on_the_history_keeps_snapshots_in_its_state_directory(
    cli: Cli, standin: StandIn, tmp_path: Path
) -> None:
    """Unauthorized on ``claude_db_snapshots``: every snapshot command still works, with the
    state directory as the history (as MySQL's users without the privilege)."""
    bare = f"c{uuid.uuid4().hex[:8]}"
    with standin.client() as client:
        client.admin.command("createUser", bare, pwd=CONTRACT_PASSWORD,
                             roles=[{"role": "dbOwner", "db": bare}])
    try:
        unprivileged = as_user(standin, bare, tmp_path)
        saved = cli("claude-db", "snapshot", "save", "y", env=unprivileged)
        assert saved.code == 0, saved
        shown = cli("claude-db", "snapshot", "list", "--json", env=unprivileged)
        assert shown.code == 0, shown
        assert [s["name"] for s in json.loads(shown.stdout)] == ["y"]
        restored = cli("claude-db", "snapshot", "restore", "y", "--yes", env=unprivileged)
        assert restored.code == 0, restored
    finally:
        with standin.client() as client:
            client.admin.command("dropUser", bare)
            client.drop_database(bare)


def as_user(standin: StandIn, user: str, tmp_path: Path) -> dict[str, str]:
    """The environment of ``user`` (made in admin) with a bare URL, a state directory of its
    own."""
    endpoint = Endpoint(standin.endpoint.host, standin.endpoint.port,
                        Credentials(user, CONTRACT_PASSWORD, user))
    return {"DATABASE_URL": MongoEngine().url(endpoint), **DRIVER,
            "CLAUDE_DB_STATE_DIR": str(tmp_path / user)}
