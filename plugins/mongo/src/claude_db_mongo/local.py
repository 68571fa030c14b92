"""Running MongoDB as local processes: a host ``mongod``, when there is one.

MongoDB is not packaged by Debian, so most machines have no ``mongod``; the engine then
reports that and points at the docker runtime. With one (MongoDB's own packages, a tarball,
``$CLAUDE_DB_MONGO_BINDIR``), a session's server is ``mongod --auth`` on 127.0.0.1 and a unix
socket. The data directory starts empty (mongod initialises it on first start); the session's
root user is then created through the unix socket under mongod's localhost exception, which
allows exactly one thing on a server without users: creating the first user.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

from claude_db import ClaudeDbError, Credentials, LocalServer, RunAs

#: a session's database is throwaway: a small cache, no diagnostics collection
THROWAWAY_ARGS = ("--wiredTigerCacheSizeGB", "0.25",
                  "--setParameter", "diagnosticDataCollectionEnabled=false")


def find_mongod() -> Path | None:
    """The directory holding ``mongod``: ``$CLAUDE_DB_MONGO_BINDIR``, else PATH."""
    candidates: list[Path] = []
    if override := os.environ.get("CLAUDE_DB_MONGO_BINDIR"):
        candidates.append(Path(override))
    if found := shutil.which("mongod"):
        candidates.append(Path(found).resolve().parent)
    for bindir in candidates:
        if (bindir / "mongod").is_file() and os.access(bindir / "mongod", os.X_OK):
            return bindir
    return None


class MongoLocalServer(LocalServer):
    service_users = ("mongodb",)
    stop_signal = signal.SIGTERM  # mongod shuts down cleanly on SIGTERM

    def bindir(self) -> Path:
        bindir = self.pinned_bindir or find_mongod()
        if bindir is None:
            raise ClaudeDbError("no mongod found (looked at $CLAUDE_DB_MONGO_BINDIR and PATH)")
        return bindir

    def version(self) -> str:
        return server_version(self.bindir())

    def init_template(self, datadir: Path, credentials: Credentials, run_as: RunAs) -> None:
        # mongod initialises an empty --dbpath itself; users are made per session (set_password)
        datadir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(datadir, run_as.uid, run_as.gid)

    def server_argv(self, datadir: Path, port: int, socket_dir: Path) -> list[str]:
        return [
            str(self.bindir() / "mongod"), "--dbpath", str(datadir), "--port", str(port),
            "--bind_ip", "127.0.0.1", "--unixSocketPrefix", str(socket_dir), "--auth",
            *THROWAWAY_ARGS,
        ]

    def set_password(self, socket_dir: Path, port: int, credentials: Credentials) -> None:
        """Create the session's root user through the socket (raises until mongod answers)."""
        from pymongo import MongoClient
        from pymongo.errors import OperationFailure

        socket = quote(str(socket_dir / f"mongodb-{port}.sock"), safe="")
        client: MongoClient[dict[str, Any]]
        with MongoClient(f"mongodb://{socket}/?directConnection=true",
                         serverSelectionTimeoutMS=2000) as client:
            try:
                client.admin.command("createUser", credentials.user, pwd=credentials.password,
                                     roles=["root"])
            except OperationFailure:
                # a retry after a lost reply: the user exists; prove it is ours
                mine: MongoClient[dict[str, Any]]
                with MongoClient(f"mongodb://{socket}/?directConnection=true",
                                 username=credentials.user, password=credentials.password,
                                 authSource="admin", serverSelectionTimeoutMS=2000) as mine:
                    mine.admin.command("ping")


@functools.cache
def server_version(bindir: Path) -> str:
    out = subprocess.run([str(bindir / "mongod"), "--version"], capture_output=True, text=True)
    match = re.search(r"db version v?(\d+(?:\.\d+)*)", out.stdout)
    if out.returncode != 0 or not match:
        raise ClaudeDbError(f"cannot tell the version of {bindir / 'mongod'}: {out.stderr.strip()}")
    return match.group(1)
