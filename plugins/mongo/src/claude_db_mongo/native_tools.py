"""``mongodump``/``mongorestore`` through claude-db's Tools (in the container on docker).

The password never goes on a command line: a small ``sh`` wrapper writes the connection
string from an environment variable into a private temporary file that the tool reads with
``--config`` (database tools 100.3+), and removes it when the tool exits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from claude_db import ClaudeDbError, Endpoint, Tools
from claude_db.engine import last_line
from claude_db.urls import build_url
from claude_db_mongo.client import AUTH_SOURCE

URI_VARIABLE = "CLAUDE_DB_MONGO_TOOL_URI"
WRAPPER = (
    "umask 077; cfg=$(mktemp) || exit 1; trap 'rm -f \"$cfg\"' EXIT; "
    f"printf \"uri: '%s'\\n\" \"${URI_VARIABLE}\" > \"$cfg\" || exit 1; "
    '"$@" --config="$cfg"'
)
CHUNK = 1 << 20


def tool_env(endpoint: Endpoint) -> dict[str, str]:
    """The server URI (no database: the tools take ``--db``/namespaces) for the wrapper."""
    no_database = replace(endpoint, credentials=replace(endpoint.credentials, database=""))
    query = f"authSource={AUTH_SOURCE}" if endpoint.user else ""
    uri = build_url("mongodb", no_database, query=query)
    if not endpoint.user:
        uri = uri.replace(":@", "@", 1).replace("://@", "://", 1)
    return {URI_VARIABLE: uri.replace("'", "''")}  # inside a single-quoted YAML scalar


def wrapped(argv: list[str]) -> list[str]:
    return ["sh", "-c", WRAPPER, "sh", *argv]


def mongodump(tools: Tools) -> Iterator[bytes]:
    """``mongodump --archive`` of ``tools.endpoint``'s database, streamed."""
    argv = wrapped(["mongodump", "--archive", f"--db={tools.endpoint.database}", "--quiet"])
    yield from tools.stream(
        argv, env=tool_env(tools.endpoint),
        failed=lambda stderr: ClaudeDbError(f"mongodump failed: {last_line(stderr)}"),
    )


def mongorestore(tools: Tools, chunks: Iterable[bytes], source_db: str, staged_prefix: str) -> None:
    """Restore a ``mongodump --archive`` of ``source_db`` into ``tools.endpoint``'s database,
    every collection renamed to ``staged_prefix + name``."""
    target = tools.endpoint.database
    argv = wrapped([
        "mongorestore", "--archive", "--stopOnError", "--bypassDocumentValidation", "--quiet",
        f"--nsInclude={source_db}.*",
        f"--nsFrom={source_db}.$coll$", f"--nsTo={target}.{staged_prefix}$coll$",
    ])
    code, stderr = tools.feed(argv, chunks, env=tool_env(tools.endpoint))
    if code != 0:
        raise ClaudeDbError(f"mongorestore failed: {last_line(stderr)}")
