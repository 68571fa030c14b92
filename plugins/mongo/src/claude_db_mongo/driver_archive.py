"""Dump and load the driver-level archive (see ``archive``) with pymongo alone."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from claude_db import ClaudeDbError
from claude_db_mongo.archive import (
    COLLECTION,
    DOCUMENT,
    END,
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    TRAILER,
    ArchiveError,
    ByteReader,
    chunked,
    decode,
    read_record,
    record,
)

if TYPE_CHECKING:
    from bson.raw_bson import RawBSONDocument
    from pymongo import MongoClient
    from pymongo.collection import Collection

    from claude_db_mongo.staging import Staging

BATCH_DOCUMENTS = 1000
BATCH_BYTES = 8 * 1024 * 1024
#: collection types the archive holds; time-series collections need mongodump
SUPPORTED_TYPES = ("collection", "view")


@dataclass
class LoadStats:
    collections: int = 0
    documents: int = 0


def dump_database(client: MongoClient[dict[str, Any]], name: str) -> Iterator[bytes]:
    """The archive of database ``name``: every collection and view with its options, indexes
    and documents (byte for byte). Collections are read one after the other, not as of one
    point in time (like ``mongodump`` without ``--oplog``)."""
    return chunked(_records(client, name))


def _records(client: MongoClient[dict[str, Any]], name: str) -> Iterator[bytes]:
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    db = client[name]
    raw: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)
    version = str(client.server_info().get("version", ""))
    infos = sorted(
        (info for info in db.list_collections() if not info["name"].startswith("system.")),
        key=lambda info: (info.get("type") == "view", info["name"]),
    )
    for info in infos:
        if info.get("type", "collection") not in SUPPORTED_TYPES:
            raise ClaudeDbError(
                f"collection {info['name']!r} is a {info.get('type')} collection, which the "
                "driver-level archive does not hold; export with mongodump instead"
            )
    yield MAGIC
    yield record(HEADER, {"format": FORMAT_VERSION, "database": name, "server_version": version,
                          "created": datetime.datetime.now(datetime.UTC)})
    total = 0
    for info in infos:
        kind = info.get("type", "collection")
        indexes = []
        if kind == "collection":
            for index in db[info["name"]].list_indexes():
                spec = {k: v for k, v in index.items() if k != "ns"}
                if spec.get("name") != "_id_" and not spec.get("clustered"):
                    indexes.append(spec)
        yield record(COLLECTION, {"name": info["name"], "type": kind,
                                  "options": dict(info.get("options") or {}), "indexes": indexes})
        count = 0
        if kind == "collection":
            # pymongo types the collection with the client's document class, not the codec's
            stored = cast("Collection[RawBSONDocument]",
                          db.get_collection(info["name"], codec_options=raw))
            for document in stored.find():
                yield DOCUMENT + document.raw
                count += 1
        total += count
        yield record(END, {"name": info["name"], "count": count})
    yield record(TRAILER, {"collections": len(infos), "documents": total})


def load_archive(reader: ByteReader, staging: Staging) -> LoadStats:
    """Load a whole archive into ``staging``'s collections; raise at the first problem.

    Nothing outside the staging prefix is touched: the caller swaps in, or abandons.
    """
    if reader.read(len(MAGIC)) != MAGIC:
        raise ArchiveError("not a claude-db mongo archive")
    kind, data = read_record(reader)
    header = decode(data)
    if kind != HEADER or header.get("format") != FORMAT_VERSION:
        raise ArchiveError(
            f"unsupported archive format {header.get('format')!r} (this claude-db-mongo reads "
            f"format {FORMAT_VERSION})"
        )
    stats = LoadStats()
    while True:
        kind, data = read_record(reader)
        if kind == TRAILER:
            trailer = decode(data)
            if (trailer.get("collections"), trailer.get("documents")) != (
                stats.collections, stats.documents,
            ):
                raise ArchiveError(
                    f"corrupt: the trailer counts {trailer} but the archive holds "
                    f"{stats.collections} collections and {stats.documents} documents"
                )
            if not reader.at_end():
                raise ArchiveError("corrupt: data after the archive's trailer")
            return stats
        if kind != COLLECTION:
            raise ArchiveError(f"corrupt: record {kind!r} where a collection was expected")
        stats.documents += _load_collection(reader, decode(data), staging)
        stats.collections += 1


def _load_collection(reader: ByteReader, meta: dict[str, Any], staging: Staging) -> int:
    from bson.raw_bson import RawBSONDocument

    name, kind = meta.get("name"), meta.get("type", "collection")
    if not isinstance(name, str) or not name or kind not in SUPPORTED_TYPES:
        raise ArchiveError(f"corrupt: bad collection record {meta!r}")
    db = staging.database
    staged = staging.staged_name(name)
    db.command({"create": staged, **(meta.get("options") or {})})
    collection = db[staged]
    batch: list[RawBSONDocument] = []
    size = count = 0
    while True:
        record_kind, data = read_record(reader)
        if record_kind == DOCUMENT:
            if kind == "view":
                raise ArchiveError(f"corrupt: documents inside view {name!r}")
            batch.append(RawBSONDocument(data))
            size += len(data)
            count += 1
            if len(batch) >= BATCH_DOCUMENTS or size >= BATCH_BYTES:
                _insert(collection, batch, name, count - len(batch))
                batch, size = [], 0
            continue
        if record_kind != END:
            raise ArchiveError(f"corrupt: record {record_kind!r} inside collection {name!r}")
        end = decode(data)
        if end.get("name") != name or end.get("count") != count:
            raise ArchiveError(
                f"corrupt: collection {name!r} should hold {end.get('count')} documents, "
                f"the archive has {count}"
            )
        break
    if batch:
        _insert(collection, batch, name, count - len(batch))
    if meta.get("indexes"):
        db.command({"createIndexes": staged, "indexes": list(meta["indexes"])})
    return count


def _insert(collection: Any, batch: list[Any], name: str, offset: int) -> None:
    from pymongo.errors import BulkWriteError

    try:
        collection.insert_many(batch, ordered=True, bypass_document_validation=True)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors") or [{}]
        index = offset + int(errors[0].get("index", 0)) + 1
        raise ClaudeDbError(
            f"document {index} of collection {name!r}: {errors[0].get('errmsg', exc)}"
        ) from None
