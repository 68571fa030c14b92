"""Dump formats: claude-db's driver-level archive, and sniffing ``mongodump --archive`` files.

The driver-level archive (written when ``mongodump`` is not available) is a byte stream::

    MAGIC                               16 bytes, b"\\x00claude-db-mongo"
    record*                             one byte kind + one BSON document

    b"H"  header      {format: 1, database, server_version, created}      first, once
    b"C"  collection  {name, type: "collection"|"view", options, indexes}
    b"D"  document    the stored document, byte for byte (belongs to the last C)
    b"E"  end         {name, count}                                        closes the last C
    b"Z"  trailer     {collections, documents}                             last, once

A BSON document carries its own length, so the stream needs no other framing. The end and
trailer records let a reader tell a complete archive from a truncated one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any

MAGIC = b"\x00claude-db-mongo"
FORMAT_VERSION = 1
#: ``mongodump --archive`` files start with 0x8199e26d, little-endian
MONGODUMP_MAGIC = b"\x6d\xe2\x99\x81"
GZIP_MAGIC = b"\x1f\x8b"

HEADER, COLLECTION, DOCUMENT, END, TRAILER = b"H", b"C", b"D", b"E", b"Z"
RECORD_KINDS = frozenset((HEADER, COLLECTION, DOCUMENT, END, TRAILER))
MAX_BSON = 48 * 1024 * 1024  # above any server's 16 MiB document limit, below absurd
CHUNK = 1 << 20


class ArchiveError(Exception):
    """The input is not a complete, well-formed archive."""


class ByteReader:
    """Exact-size reads over an iterator of byte chunks, with look-ahead."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self.consumed = 0  # bytes handed out by read()

    def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._buffer += chunk
        return True

    def peek(self, size: int) -> bytes:
        """Up to ``size`` bytes without consuming them (fewer only at the end of input)."""
        self._fill(size)
        return bytes(self._buffer[:size])

    def read(self, size: int) -> bytes:
        if not self._fill(size):
            raise ArchiveError(f"truncated: the input ends {size - len(self._buffer)} bytes early")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.consumed += size
        return data

    def at_end(self) -> bool:
        return not self._fill(1)

    def rest(self) -> Iterator[bytes]:
        """Everything not read yet, as chunks."""
        if self._buffer:
            yield bytes(self._buffer)
            self._buffer.clear()
        yield from self._chunks

    def read_bson(self) -> bytes:
        """One BSON document's bytes (length prefix included)."""
        (length,) = struct.unpack("<i", self.peek(4).ljust(4, b"\0"))
        if self.at_end():
            raise ArchiveError("truncated: a document was expected")
        if not 5 <= length <= MAX_BSON:
            raise ArchiveError(f"corrupt: a document claims {length} bytes")
        data = self.read(length)
        if data[-1:] != b"\x00":
            raise ArchiveError("corrupt: a document does not end with a zero byte")
        return data


# -- writing ------------------------------------------------------------------------------


def record(kind: bytes, document: bytes | dict[str, Any]) -> bytes:
    import bson  # here, not at the top: every claude-db command loads this plugin

    return kind + (document if isinstance(document, bytes) else bson.encode(document))


def chunked(pieces: Iterable[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """Join small byte strings into chunks of about ``size`` bytes."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        if len(buffer) >= size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


# -- reading ------------------------------------------------------------------------------


def read_record(reader: ByteReader) -> tuple[bytes, bytes]:
    """The next (kind, BSON bytes); raise if the input ends or is not a record."""
    if reader.at_end():
        raise ArchiveError("truncated: the archive ends before its trailer")
    kind = reader.read(1)
    if kind not in RECORD_KINDS:
        raise ArchiveError(f"corrupt: unknown record kind {kind!r} at byte {reader.consumed - 1}")
    return kind, reader.read_bson()


def decode(data: bytes) -> dict[str, Any]:
    import bson

    try:
        return bson.decode(data)
    except Exception as exc:  # bson raises several types for bad input
        raise ArchiveError(f"corrupt: {exc}") from None


def mongodump_databases(reader: ByteReader) -> list[str]:
    """Database names in a ``mongodump --archive`` prelude, read without consuming input.

    The prelude is: magic, a header document, one metadata document per collection
    ({db, collection, metadata, size}), then four 0xFF bytes.
    """
    probe = ByteReader([reader.peek(_prelude_length(reader))])
    probe.read(len(MONGODUMP_MAGIC))
    probe.read_bson()  # the archive header
    names: list[str] = []
    while probe.peek(4) != b"\xff\xff\xff\xff":
        db = decode(probe.read_bson()).get("db")
        if isinstance(db, str) and db not in names:
            names.append(db)
    return names


def _prelude_length(reader: ByteReader) -> int:
    """Bytes up to and including the prelude's terminator (peeks further as needed)."""
    offset = len(MONGODUMP_MAGIC)
    first = True
    while True:
        head = reader.peek(offset + 4)
        if len(head) < offset + 4:
            raise ArchiveError("truncated: the mongodump archive ends inside its prelude")
        if not first and head[offset:] == b"\xff\xff\xff\xff":
            return offset + 4
        (length,) = struct.unpack("<i", head[offset:])
        if not 5 <= length <= MAX_BSON:
            raise ArchiveError("corrupt: not a mongodump archive prelude")
        offset += length
        first = False
