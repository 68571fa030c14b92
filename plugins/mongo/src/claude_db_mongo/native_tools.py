"""``mongodump``/``mongorestore`` through claude-db's Tools (in the container on docker).

The password never goes on a command line: a small ``sh`` wrapper writes the connection
string from an environment variable into a private temporary file that the tool reads with
``--config`` (database tools 100.3+), and removes it when the tool exits.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import IO

from claude_db import ClaudeDbError, Endpoint, Tools
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
    with tempfile.TemporaryFile() as errors:
        proc = tools.popen(argv, env=tool_env(tools.endpoint), stdout=subprocess.PIPE,
                           stderr=errors)
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(CHUNK):
                yield chunk
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            raise ClaudeDbError(f"mongodump failed: {last_line(errors)}")


def mongorestore(tools: Tools, chunks: Iterable[bytes], source_db: str, staged_prefix: str) -> None:
    """Restore a ``mongodump --archive`` of ``source_db`` into ``tools.endpoint``'s database,
    every collection renamed to ``staged_prefix + name``."""
    target = tools.endpoint.database
    argv = wrapped([
        "mongorestore", "--archive", "--stopOnError", "--bypassDocumentValidation", "--quiet",
        f"--nsInclude={source_db}.*",
        f"--nsFrom={source_db}.$coll$", f"--nsTo={target}.{staged_prefix}$coll$",
    ])
    with tempfile.TemporaryFile() as errors:
        proc = tools.popen(argv, env=tool_env(tools.endpoint), stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=errors)
        assert proc.stdin is not None
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # mongorestore stopped at an error: its message says which
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.wait() != 0:
            raise ClaudeDbError(f"mongorestore failed: {last_line(errors)}")


def last_line(errors: IO[bytes]) -> str:
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no error output"
