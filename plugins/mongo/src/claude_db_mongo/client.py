"""The one place pymongo clients are made, and pymongo errors become claude-db errors."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from claude_db import ClaudeDbError, Endpoint
from claude_db.errors import NotRunningError

if TYPE_CHECKING:
    from pymongo import MongoClient

#: where the official image (MONGO_INITDB_ROOT_USERNAME) and our local servers keep the user
AUTH_SOURCE = "admin"


def connect(endpoint: Endpoint, timeout: float) -> MongoClient[dict[str, Any]]:
    """A client for exactly this server (no replica-set discovery), authenticating if a user
    is given. Raises ConnectionFailure at once when nothing listens (pymongo itself would
    retry until its timeout)."""
    from pymongo import MongoClient
    from pymongo.errors import ConnectionFailure

    try:
        socket.create_connection((endpoint.host, endpoint.port), timeout=min(timeout, 5)).close()
    except OSError as exc:
        raise ConnectionFailure(exc.strerror or str(exc)) from None

    milliseconds = max(500, int(timeout * 1000))
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    credentials: dict[str, Any] = {}
    if endpoint.user:
        credentials = {"username": endpoint.user, "password": endpoint.password,
                       "authSource": AUTH_SOURCE}
    return MongoClient(
        host=host,
        port=endpoint.port,
        directConnection=True,
        serverSelectionTimeoutMS=milliseconds,
        connectTimeoutMS=milliseconds,
        appname="claude-db",
        **credentials,
    )


@contextlib.contextmanager
def client_for(what: str, endpoint: Endpoint, timeout: float) -> Iterator[MongoClient[Any]]:
    """A connected client whose errors come out as claude-db errors (see translated_errors)."""
    with translated_errors(what, endpoint), connect(endpoint, timeout) as client:
        yield client


@contextlib.contextmanager
def translated_errors(what: str, endpoint: Endpoint) -> Iterator[None]:
    """pymongo's exceptions as one-line claude-db errors (``<what> failed: ...``, or the bare
    message when ``what`` is empty): unreachable → NotRunningError."""
    prefix = f"{what} failed: " if what else ""
    from pymongo.errors import (
        BulkWriteError,
        ConnectionFailure,
        OperationFailure,
        PyMongoError,
    )

    try:
        yield
    except ConnectionFailure as exc:  # includes ServerSelectionTimeoutError, AutoReconnect
        raise NotRunningError(
            f"mongodb at {endpoint.host}:{endpoint.port} does not answer: {tidy(exc)}"
        ) from None
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors") or [{}]
        first = errors[0]
        raise ClaudeDbError(
            f"{prefix}{first.get('errmsg', tidy(exc))} (document {first.get('index', '?')})"
        ) from None
    except OperationFailure as exc:
        raise ClaudeDbError(f"{prefix}{server_message(exc)}") from None
    except PyMongoError as exc:
        raise ClaudeDbError(f"{prefix}{tidy(exc)}") from None


def server_message(exc: Any) -> str:
    """``errmsg (CodeName)`` of an OperationFailure, or its text."""
    details = getattr(exc, "details", None) or {}
    message = details.get("errmsg") or tidy(exc)
    name = details.get("codeName")
    if getattr(exc, "code", None) == 18:
        return "authentication failed (check the user, the password and authSource=admin)"
    return f"{message} ({name})" if name else str(message)


def tidy(exc: BaseException) -> str:
    """The first line of a pymongo message without its timeout and topology details."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.split(r", Timeout: |, full error: ", text)[0]
    text = re.sub(r" \(configured timeouts: [^)]*\)", "", text)
    return re.sub(r"^\[?[\w.:-]+\]?:\d+: ", "", text)  # "host:port: " repeats what we say
