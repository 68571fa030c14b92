"""12.8 where a session container runs ``claude-db``: a reset that took no snapshot
(``CLAUDE_DB_AUTO_SNAPSHOTS=0``) is noted with the server, so ``undo`` on the other side (or
in a re-created container) says there is nothing to undo for it and never restores an
older, unrelated snapshot. The container is what it is to claude-db: its own state
directory, only ``DATABASE_URL`` and ``CLAUDE_SESSION`` known. (MySQL and MongoDB:
tests/test_mysql_history.py, tests/test_mongo_standin.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_db.errors import ExitCode
from claude_db.testing import Cli, assert_one_line_error
from claude_db.testing.safety import database_url, pg_fingerprint, seed


@pytest.fixture
def session(cli: Cli) -> Iterator[str]:
    name = f"note-{uuid.uuid4().hex[:8]}"
    started = cli("claude-session", "start", name)
    assert started.code == 0, started
    yield name
    cli("claude-session", "delete", name, "--yes")


def container(cli: Cli, session: str, where: Path, **extra: str) -> dict[str, Any]:
    where.mkdir(exist_ok=True)
    return {"cwd": where, "env": {"DATABASE_URL": database_url(cli, session),
                                  "CLAUDE_SESSION": session,
                                  "CLAUDE_DB_STATE_DIR": str(where / "state"), **extra}}


def refused(cli: Cli, **where: Any) -> None:
    undone = cli("claude-db", "undo", **where)
    assert_one_line_error(undone, ExitCode.FAILED)
    assert "nothing to undo for the last reset" in undone.stderr, undone


def test_a_container_reset_without_a_snapshot_is_seen_by_the_host(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    assert cli("claude-db", "reset", "--yes", "--session", session).code == 0  # a snapshot
    seed(cli, "postgres", session=session)
    url = database_url(cli, session)
    seeded = pg_fingerprint(url)
    inside = container(cli, session, tmp_path / "container", CLAUDE_DB_AUTO_SNAPSHOTS="0")
    reset = cli("claude-db", "reset", "--yes", **inside)
    assert reset.code == 0, reset
    assert pg_fingerprint(url) != seeded
    host = cli("claude-db", "undo", "--session", session)
    assert_one_line_error(host, ExitCode.FAILED)
    assert "nothing to undo for the last reset" in host.stderr, host
    refused(cli, **container(cli, session, tmp_path / "re-created"))
    assert pg_fingerprint(url) == {}  # the older snapshot was not restored


def test_a_host_reset_without_a_snapshot_is_seen_in_the_container(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    inside = container(cli, session, tmp_path / "container")
    assert cli("claude-db", "reset", "--yes", **inside).code == 0  # a snapshot, made there
    seed(cli, "postgres", session=session)
    reset = cli("claude-db", "reset", "--yes", "--session", session,
                env={"CLAUDE_DB_AUTO_SNAPSHOTS": "0"})
    assert reset.code == 0, reset
    refused(cli, **inside)
    assert pg_fingerprint(database_url(cli, session)) == {}
