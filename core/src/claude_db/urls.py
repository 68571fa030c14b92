"""The one place connection URLs are built and parsed."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from claude_db.errors import UsageError

if TYPE_CHECKING:
    from claude_db.engine import Endpoint


def build_url(scheme: str, endpoint: Endpoint, query: str = "") -> str:
    """``scheme://user:password@host:port/database``, credentials percent-encoded."""
    user = quote(endpoint.user, safe="")
    password = quote(endpoint.password, safe="")
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    url = f"{scheme}://{user}:{password}@{host}:{endpoint.port}/{quote(endpoint.database, safe='')}"
    return f"{url}?{query}" if query else url


def parse_url(url: str, default_port: int) -> tuple[str, str, int, str, str, str]:
    """Split a URL into (scheme, host, port, user, password, database), decoding credentials."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise UsageError("DATABASE_URL is not a valid URL (expected scheme://user:pass@host/db)")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise UsageError(f"DATABASE_URL has an invalid port: {exc}") from None
    return (
        parts.scheme,
        parts.hostname,
        port,
        unquote(parts.username or ""),
        unquote(parts.password or ""),
        unquote(parts.path.lstrip("/")),
    )
