"""What the engine and its snapshots share: connections, libpq variables, error text."""

from __future__ import annotations

from typing import Any

from claude_db import Endpoint


def native_env(endpoint: Endpoint) -> dict[str, str]:
    """libpq's variables for ``endpoint`` (psql, pg_dump and the session's programs)."""
    return {
        "PGHOST": endpoint.host,
        "PGPORT": str(endpoint.port),
        "PGUSER": endpoint.user,
        "PGPASSWORD": endpoint.password,
        "PGDATABASE": endpoint.database,
    }


def connect(endpoint: Endpoint, timeout: float) -> Any:
    import psycopg

    return psycopg.connect(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        password=endpoint.password,
        dbname=endpoint.database,
        connect_timeout=max(1, int(timeout)),
        application_name="claude-db",
    )


def pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag else None
    lines = str(primary or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def tail(errors: Any) -> str:
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no error output"
