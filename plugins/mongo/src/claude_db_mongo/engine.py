"""MongoDB: the official image's contract, pymongo for queries, archives for dumps."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from claude_db import ClaudeDbError, Credentials, Endpoint, Engine, LocalServer, QueryResult, Tools
from claude_db.errors import NotRunningError, UsageError
from claude_db.urls import build_url
from claude_db_mongo import history
from claude_db_mongo.archive import (
    GZIP_MAGIC,
    MAGIC,
    MONGODUMP_MAGIC,
    ArchiveError,
    ByteReader,
    mongodump_databases,
)
from claude_db_mongo.client import (
    AUTH_SOURCE,
    client_for,
    connect,
    server_message,
    tidy,
    translated_errors,
)
from claude_db_mongo.local import MongoLocalServer, find_mongod

#: databases ``reset`` refuses to drop: the server's own
SYSTEM_DATABASES = ("admin", "local", "config")
#: fields of a command reply that say nothing about the command (replica-set bookkeeping)
REPLY_NOISE = ("$clusterTime", "operationTime", "electionId", "opTime")
QUERY_EXAMPLE = '{"find": "users", "filter": {"age": {"$gt": 30}}}'
DUMP_FORMAT_VARIABLE = "CLAUDE_DB_MONGO_DUMP_FORMAT"
CONNECTION_STRING = """db = connect(process.env.MONGODB_URI)"""


class MongoEngine(Engine):
    name = "mongo"
    url_schemes = ("mongodb",)
    default_image = "mongo:8"
    default_port = 27017
    default_user = "root"
    container_data_dir = "/data/db"
    shell_name = "mongosh"
    internal_databases = (history.DATABASE,)
    #: seconds to find the server before a command gives up (it is then "not running")
    connect_timeout = 5.0

    # -- connection contract ----------------------------------------------------------------

    def url(self, endpoint: Endpoint) -> str:
        # the user lives in the admin database (MONGO_INITDB_ROOT_USERNAME makes a root user)
        return build_url(self.url_schemes[0], endpoint, query=f"authSource={AUTH_SOURCE}")

    def native_env(self, endpoint: Endpoint) -> dict[str, str]:
        url = self.url(endpoint)
        # MONGODB_URI: MongoDB's documentation and most drivers' examples; MONGO_URL: Meteor
        # and many Node apps
        return {"MONGODB_URI": url, "MONGO_URL": url}

    def container_env(self, credentials: Credentials) -> dict[str, str]:
        # The image makes a root user in "admin"; MONGO_INITDB_DATABASE only names the database
        # its /docker-entrypoint-initdb.d scripts run against. A MongoDB database exists once
        # something is written to it: there is no empty database to create beforehand.
        return {
            "MONGO_INITDB_ROOT_USERNAME": credentials.user,
            "MONGO_INITDB_ROOT_PASSWORD": credentials.password,
            "MONGO_INITDB_DATABASE": credentials.database,
        }

    def check_ready(self, endpoint: Endpoint, timeout: float) -> str:
        # Authentication happens when the connection is made, so the ping below only
        # succeeds with the right credentials, over TCP to the address clients use.
        from pymongo.errors import OperationFailure, PyMongoError

        try:
            with connect(endpoint, timeout) as client:
                client[endpoint.database].command("ping")
                return str(client.server_info().get("version", ""))
        except OperationFailure as exc:
            raise ClaudeDbError(server_message(exc)) from None
        except PyMongoError as exc:
            raise ClaudeDbError(tidy(exc)) from None

    def local_server(self) -> LocalServer | None:
        return MongoLocalServer() if find_mongod() is not None else None

    def local_unavailable_reason(self) -> str:
        return (
            "no mongod found here (looked at $CLAUDE_DB_MONGO_BINDIR and PATH; MongoDB is not "
            "packaged by Debian); use --runtime docker for the mongo engine"
        )

    # -- operations -------------------------------------------------------------------------

    @contextlib.contextmanager
    def query(self, endpoint: Endpoint, text: str) -> Iterator[QueryResult]:
        command = parse_command(text)
        name = next(iter(command))
        with (
            client_for("query", endpoint, self.connect_timeout) as client,
            client.start_session() as session,
        ):
            reply = client[endpoint.database].command(command, session=session)
            cursor = reply.get("cursor")
            if isinstance(cursor, dict) and "id" in cursor:
                # batch by batch (getMore) as they are read: a big result never sits in memory
                batches = _batches(client, endpoint.database, cursor, session)
                yield QueryResult(status=f"{name}: ok",
                                  documents=(d for batch in batches for d in _relaxed(batch)))
            else:
                yield QueryResult(status=f"{name}: ok", documents=_relaxed(
                    [{k: v for k, v in reply.items() if k not in REPLY_NOISE}]))

    def dump(self, tools: Tools) -> Iterator[bytes]:
        if dump_format(tools) == "mongodump":
            from claude_db_mongo.native_tools import mongodump

            yield from mongodump(tools)
            return
        from claude_db_mongo.driver_archive import dump_database

        endpoint = driver_endpoint(tools)
        with client_for("export", endpoint, self.connect_timeout) as client:
            yield from dump_database(client, endpoint.database)

    def restore(self, tools: Tools, chunks: Iterable[bytes]) -> None:
        from claude_db_mongo.staging import PartialImportError, Staging

        reader = ByteReader(chunks)
        head = reader.peek(len(MAGIC))
        if head.startswith(MONGODUMP_MAGIC):
            load = self._mongorestore_loader(tools, reader)
        elif head == MAGIC:
            load = self._driver_loader(reader)
        elif not head:
            raise ClaudeDbError("import failed, nothing was applied: the input is empty")
        else:
            what = "a gzip file that does not end in .gz" if head.startswith(GZIP_MAGIC) else (
                "not a MongoDB dump")
            raise ClaudeDbError(
                f"import failed, nothing was applied: {what} (expected a mongodump --archive "
                "or a claude-db mongo archive, as claude-db export writes)"
            )
        endpoint = driver_endpoint(tools)
        with connect(endpoint, self.connect_timeout) as client:
            staging = Staging(client, endpoint.database)
            try:
                with translated_errors("", endpoint):
                    load(tools, staging)
                    staging.swap_in()
            except PartialImportError:
                raise  # says itself what is left where
            except (ArchiveError, ClaudeDbError) as exc:
                staging.abandon()
                error = NotRunningError if isinstance(exc, NotRunningError) else ClaudeDbError
                raise error(f"import failed, nothing was applied: {exc}") from None
            except BaseException:
                staging.abandon()
                raise
            with translated_errors("import (removing the replaced collections)", endpoint):
                staging.finish()

    def reset(self, endpoint: Endpoint) -> None:
        if endpoint.database in SYSTEM_DATABASES:
            raise UsageError(f"refusing to reset the server's own database {endpoint.database!r}")
        with client_for("reset", endpoint, self.connect_timeout) as client:
            client.drop_database(endpoint.database)

    # -- snapshots: core's dumps, kept with the server (claude_db_mongo.history)

    def snapshot_save(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        super().snapshot_save(endpoint, tools, directory)
        with client_for("snapshot", endpoint, self.connect_timeout) as client:
            history.keep(client, directory, endpoint.user)

    def snapshot_catalog(self, endpoint: Endpoint) -> list[dict[str, Any]] | None:
        with client_for("reading the snapshots", endpoint, self.connect_timeout) as client:
            return history.catalog(client, endpoint.user)

    def snapshot_recover(self, endpoint: Endpoint) -> list[str]:
        with client_for("reading the snapshots", endpoint, self.connect_timeout) as client:
            return history.sweep(client, endpoint.user)

    def snapshot_keep(self, endpoint: Endpoint, directory: Path) -> None:
        # saved by an older claude-db, or lost by the server: kept there (again)
        with client_for("keeping the snapshot", endpoint, self.connect_timeout) as client:
            history.keep(client, directory, endpoint.user)

    def snapshot_deleted(self, endpoint: Endpoint, directory: Path) -> bool:
        with client_for("reading the snapshots", endpoint, self.connect_timeout) as client:
            return history.deleted(client, directory)

    def snapshot_restore(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        with client_for("reading the snapshot", endpoint, self.connect_timeout) as client:
            history.fetch(client, directory, endpoint.user)
        super().snapshot_restore(endpoint, tools, directory)

    def snapshot_delete(self, endpoint: Endpoint, tools: Tools, directory: Path) -> None:
        with client_for("deleting the snapshot", endpoint, self.connect_timeout) as client:
            history.delete(client, directory, endpoint.user)

    def snapshot_sizes(self, endpoint: Endpoint, directories: list[Path]) -> list[int]:
        with client_for("reading the snapshots", endpoint, self.connect_timeout) as client:
            return [history.size(client, directory, endpoint.user) for directory in directories]

    def snapshot_note(self, endpoint: Endpoint, note: dict[str, str]) -> None:
        with client_for("keeping the note", endpoint, self.connect_timeout) as client:
            history.note(client, note, endpoint.user)

    def snapshot_noted(self, endpoint: Endpoint) -> dict[str, str] | None:
        with client_for("reading the snapshots", endpoint, self.connect_timeout) as client:
            return history.noted(client, endpoint.user)

    def shell_argv(self, endpoint: Endpoint) -> list[str]:
        # The URL (and its password) comes from the environment, never the command line;
        # --shell stays interactive after connecting. Extra arguments (--eval, files) follow.
        return ["mongosh", "--nodb", "--shell", "--quiet", "--eval", CONNECTION_STRING]

    # -- internals --------------------------------------------------------------------------

    def _driver_loader(self, reader: ByteReader) -> Any:
        from claude_db_mongo.driver_archive import load_archive

        return lambda tools, staging: load_archive(reader, staging)

    def _mongorestore_loader(self, tools: Tools, reader: ByteReader) -> Any:
        if not tools.has("mongorestore"):
            raise ClaudeDbError(
                "import failed, nothing was applied: this is a mongodump archive and mongorestore "
                "is not available here (install MongoDB's database tools)"
            )
        try:
            databases = mongodump_databases(reader)
        except ArchiveError as exc:
            raise ClaudeDbError(f"import failed, nothing was applied: {exc}") from None
        if len(databases) > 1:
            raise ClaudeDbError(
                "import failed, nothing was applied: the mongodump archive holds several "
                f"databases ({', '.join(databases)}); claude-db imports one"
            )

        def load(tools: Tools, staging: Any) -> None:
            if not databases:
                return  # a dump of an empty database
            from claude_db_mongo.native_tools import mongorestore

            mongorestore(tools, reader.rest(), databases[0], staging.prefix)

        return load


def dump_format(tools: Tools) -> str:
    """``mongodump`` or ``driver``: ``$CLAUDE_DB_MONGO_DUMP_FORMAT``, by default (``auto``)
    mongodump's archive wherever mongodump runs, else the driver-level archive."""
    wanted = os.environ.get(DUMP_FORMAT_VARIABLE, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "mongodump", "driver"):
        raise UsageError(
            f"{DUMP_FORMAT_VARIABLE} must be auto, mongodump or driver, not {wanted!r}"
        )
    if wanted == "auto":
        return "mongodump" if tools.has("mongodump") else "driver"
    if wanted == "mongodump" and not tools.has("mongodump"):
        raise UsageError(f"{DUMP_FORMAT_VARIABLE}=mongodump, but mongodump is not available here")
    return wanted


def driver_endpoint(tools: Tools) -> Endpoint:
    """The database as reached by pymongo in this process (tools may run in a container)."""
    endpoint = getattr(tools, "client_endpoint", None)
    return endpoint if isinstance(endpoint, Endpoint) else tools.endpoint


def parse_command(text: str) -> dict[str, Any]:
    """A JSON (extended JSON) command document, its command name first."""
    from bson import json_util

    try:
        command = json_util.loads(text)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"the query must be a JSON command document such as {QUERY_EXAMPLE}: {exc}"
        ) from None
    if not isinstance(command, dict) or not command:
        raise UsageError(
            f"the query must be a JSON object naming a command, such as {QUERY_EXAMPLE}"
        )
    return command


def _batches(client: Any, database: str, cursor: dict[str, Any], session: Any
             ) -> Iterator[list[Any]]:
    """The documents of a command's cursor, a batch at a time (getMore until the server
    closes it; a cursor left unread is killed)."""
    yield list(cursor.get("firstBatch", []))
    cursor_id = cursor["id"]
    db_name, _, collection = str(cursor.get("ns", "")).partition(".")
    db = client[db_name or database]
    try:
        while cursor_id:
            reply = db.command({"getMore": cursor_id, "collection": collection}, session=session)
            more = reply["cursor"]
            batch = more.get("nextBatch", [])
            cursor_id = more.get("id", 0)
            if not batch and cursor_id:  # a tailable cursor at its end: it would wait forever
                break
            yield batch
    finally:
        if cursor_id:  # (the client may be closed already: the server times the cursor out)
            with contextlib.suppress(Exception):
                db.command({"killCursors": collection, "cursors": [cursor_id]},
                           session=session)


def _relaxed(documents: list[Any]) -> list[Any]:
    """Documents as relaxed extended JSON: ObjectIds, dates... printable."""
    from bson import json_util

    return list(json.loads(json_util.dumps(documents,
                                           json_options=json_util.RELAXED_JSON_OPTIONS)))
