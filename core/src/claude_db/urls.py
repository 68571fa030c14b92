"""Where a database is: credentials, endpoint, and the one place connection URLs are built
and parsed (``claude_db.engine`` re-exports ``Credentials`` and ``Endpoint``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import parse_qs, quote, unquote, urlsplit

from claude_db.errors import UsageError


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    database: str


def new_password() -> str:
    """A random password for a session (the user may set one: ``CLAUDE_DB_PASSWORD``)."""
    import secrets  # late: secrets loads hashlib (OpenSSL), a cost every command would pay

    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects: address plus credentials and the database to use."""

    host: str
    port: int
    credentials: Credentials

    @property
    def user(self) -> str:
        return self.credentials.user

    @property
    def password(self) -> str:
        return self.credentials.password

    @property
    def database(self) -> str:
        return self.credentials.database

    def with_database(self, database: str | None) -> Endpoint:
        if not database:
            return self
        return replace(self, credentials=replace(self.credentials, database=database))



def build_url(scheme: str, endpoint: Endpoint, query: str = "") -> str:
    """``scheme://user:password@host:port/database``, credentials percent-encoded."""
    user = quote(endpoint.user, safe="")
    password = quote(endpoint.password, safe="")
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    url = f"{scheme}://{user}:{password}@{host}:{endpoint.port}/{quote(endpoint.database, safe='')}"
    return f"{url}?{query}" if query else url


def parse_url(url: str, default_port: int) -> tuple[str, str, int, str, str, str]:
    """Split a URL into (scheme, host, port, user, password, database), decoding credentials.

    As libpq reads it: the host may be a socket directory, percent-encoded in place
    (``postgresql://u@%2Frun%2Fpostgresql/db``) or as a ``host=`` parameter
    (``postgresql://u@/db?host=/run/postgresql``); ``port``, ``user``, ``password`` and
    ``dbname`` parameters count too.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # e.g. "Invalid IPv6 URL", a port out of range
        raise UsageError(f"DATABASE_URL is not a valid URL: {exc}") from None
    params = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    host = unquote(parts.netloc.rpartition("@")[2])
    host = host if host.startswith("/") else (parts.hostname or "")  # a path keeps its case
    if host.startswith("/") and ":" in host:  # a socket directory's :port
        host = host.rsplit(":", 1)[0]
    host = params.get("host") or host
    if not parts.scheme or not host:
        raise UsageError(
            "DATABASE_URL is not a valid URL (expected scheme://user:pass@host/db, or a "
            "socket directory: scheme://user@/db?host=/run/postgresql)"
        )
    try:
        port = int(params["port"]) if "port" in params else port
    except ValueError:
        raise UsageError(f"DATABASE_URL has an invalid port: {params['port']!r}") from None
    return (
        parts.scheme,
        host,
        port or default_port,
        params.get("user") or unquote(parts.username or ""),
        params.get("password") or unquote(parts.password or ""),
        params.get("dbname") or unquote(parts.path.lstrip("/")),
    )
