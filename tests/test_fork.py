"""claude-session fork SRC NEW and start --from SRC: a new session with a copy of SRC's data.

Real servers throughout: local PostgreSQL (a base backup copied file by file, or cloned on
a real XFS loop device with reflink), local MariaDB and the docker runtime (dump and
restore), a client holding a transaction open on the source meanwhile, and the CLI killed
(SIGKILL) at each step of a fork: the source is untouched, gc finds what is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from claude_db.locks import hold
from claude_db.session import SessionStore
from claude_db.testing import BIN, Cli, assert_one_line_error, traversable_tmpdir
from claude_db.testing.docker import DOCKER_IMAGES, docker_leftovers
from claude_db.testing.safety import (
    NOTHING_LEFT,
    cleanup,
    database_url,
    fingerprint,
    pg_fingerprint,
    seed,
    session_json,
    state_leftovers,
    wait_for,
)

# the stand-in mongo image and the fixtures it is built with
from test_mongo_docker import mongo_standin_image  # noqa: F401
from test_mongo_standin import mongosh_dir, mongosh_package  # noqa: F401

KILLED = -signal.SIGKILL


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def started(cli: Cli, name: str, *argv: str, env: dict[str, str] | None = None) -> str:
    result = cli("claude-session", "start", name, *argv, env=env)
    assert result.code == 0, result
    return name


def forked(cli: Cli, source: str, name: str, workdir: Path,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    workdir.mkdir(exist_ok=True)
    result = cli("claude-session", "fork", source, name, "--json", cwd=workdir, env=env)
    assert result.code == 0, result
    made: dict[str, Any] = json.loads(result.stdout)
    assert made["name"] == name and made["source"] == source and made["status"] == "running"
    return made


def query(cli: Cli, session: str, sql: str, env: dict[str, str] | None = None) -> str:
    result = cli("claude-db", "query", sql, "--csv", "--session", session, env=env)
    assert result.code == 0, result
    return result.stdout


def assert_independent(cli: Cli, engine: str, source: str, fork: str,
                       env: dict[str, str] | None = None) -> None:
    """A write to either shows in that one only."""
    query(cli, source, "INSERT INTO items (name, price) VALUES ('only in source', 1)", env)
    query(cli, fork, "DELETE FROM items WHERE id <= 100", env)
    assert query(cli, source, "SELECT count(*) FROM items", env).split()[-1] == "5001"
    assert query(cli, fork, "SELECT count(*) FROM items", env).split()[-1] == "4900"
    assert "only in source" not in query(cli, fork, "SELECT name FROM items", env)


@pytest.fixture
def source(cli: Cli) -> Iterator[str]:
    name = started(cli, unique("src"))
    seed(cli, "postgres", session=name)
    yield name
    cli("claude-session", "delete", name, "--yes")


def delete_after(cli: Cli, name: str) -> None:
    assert cli("claude-session", "delete", name, "--yes").code == 0


def test_local_postgres_fork_holds_the_data_and_is_independent(
    cli: Cli, source: str, tmp_path: Path, state_root: Path
) -> None:
    before = pg_fingerprint(database_url(cli, source))
    name = unique("fork")
    made = forked(cli, source, name, tmp_path / "new")
    try:
        assert made["method"] == "copy"  # the test's state directory is on ext4
        assert pg_fingerprint(database_url(cli, name)) == before
        assert pg_fingerprint(database_url(cli, source)) == before
        # a normal session of its own: port, password, .env, its own server
        mine, theirs = session_json(state_root, name), session_json(state_root, source)
        assert mine["runtime_state"]["port"] != theirs["runtime_state"]["port"]
        assert mine["credentials"]["password"] != theirs["credentials"]["password"]
        assert mine["runtime_state"]["pid"] != theirs["runtime_state"]["pid"]
        env_file = (tmp_path / "new" / ".env").read_text()
        assert f"CLAUDE_SESSION={name}" in env_file and made["env"]["DATABASE_URL"] in env_file
        # the source's password does not open the fork
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(made["env"]["DATABASE_URL"].replace(
                mine["credentials"]["password"], theirs["credentials"]["password"])).close()
        assert_independent(cli, "postgres", source, name)
        # it stops and starts as any session
        assert cli("claude-session", "stop", name).code == 0
        assert cli("claude-session", "attach", name, "--no-shell").code == 0
        assert query(cli, name, "SELECT count(*) FROM items").split()[-1] == "4900"
    finally:
        delete_after(cli, name)


def test_fork_while_a_client_holds_a_transaction_on_the_source(
    cli: Cli, source: str, tmp_path: Path
) -> None:
    """The source keeps serving: its open transaction goes on and commits after the fork
    (which does not see it); a client querying all along is never refused. The longest
    answer it waited for is printed (-s), not asserted: the machine is shared."""
    url = database_url(cli, source)
    holder = psycopg.connect(url)
    holder.execute("INSERT INTO items (name, price) VALUES ('uncommitted', 2)")
    stop, waits, errors = threading.Event(), [], []

    def poll() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    conn.execute("UPDATE extra.notes SET body = body WHERE id = 1")
                except psycopg.Error as exc:
                    errors.append(exc)
                waits.append(time.monotonic() - began)

    poller = threading.Thread(target=poll)
    poller.start()
    name = unique("fork")
    try:
        made = forked(cli, source, name, tmp_path / "new")
    finally:
        stop.set()
        poller.join()
    try:
        assert made["method"] == "copy"
        assert errors == []
        assert len(waits) > 0
        print(f"longest wait of a source client during the fork: {max(waits) * 1000:.0f} ms "
              f"({len(waits)} statements)")
        holder.commit()
        holder.close()
        assert "uncommitted" in query(cli, source, "SELECT name FROM items WHERE price = 2")
        assert "uncommitted" not in query(cli, name, "SELECT name FROM items")
        assert query(cli, name, "SELECT count(*) FROM items").split()[-1] == "5000"
    finally:
        holder.close()
        delete_after(cli, name)


def test_start_from(cli: Cli, source: str, tmp_path: Path) -> None:
    work = tmp_path / "other"
    work.mkdir()
    name = unique("from")
    result = cli("claude-session", "start", name, "--from", source, "--json", cwd=work)
    assert result.code == 0, result
    try:
        made = json.loads(result.stdout)
        assert made["method"] == "copy" and made["source"] == source
        assert pg_fingerprint(database_url(cli, name)) == pg_fingerprint(
            database_url(cli, source))
        # without --json: one line saying what it did
        again = unique("from")
        plain = cli("claude-session", "start", again, "--from", source, cwd=tmp_path)
        assert plain.code == 0, plain
        assert f"with a copy of {source}'s data (copy;" in plain.stdout
        delete_after(cli, again)
        # start is idempotent: again in the fork's directory, it makes sure it runs
        # (review: it refused, exit 1)
        assert cli("claude-session", "stop", name).code == 0
        repeated = cli("claude-session", "start", name, "--from", source, cwd=work)
        assert repeated.code == 0, repeated
        assert "not applied again" in repeated.stderr, repeated
        assert cli("claude-db", "status", "--session", name).code == 0
    finally:
        delete_after(cli, name)


def test_a_fork_in_a_worktree_is_that_worktrees_session(
    cli: Cli, source: str, tmp_path: Path, state_root: Path
) -> None:
    """start --from in a new git worktree (the 'needs main's data' case): the session is
    named and recorded as the worktree's, so removing the worktree reclaims it (review:
    it recorded no worktree and was never reclaimed)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True)
    tree = tmp_path / f"wt{uuid.uuid4().hex[:6]}"
    subprocess.run([*git, "-C", str(repo), "worktree", "add", "-q", str(tree)], check=True)
    made = cli("claude-session", "start", "--from", source, "--json", cwd=tree)
    assert made.code == 0, made
    name = json.loads(made.stdout)["name"]
    try:
        assert name == f"repo-{tree.name}", made
        record = json.loads((state_root / "sessions" / name / "session.json").read_text())
        assert record["worktree"] and record["worktree"]["linked"], record
        subprocess.run([*git, "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                       check=True)
        dry = cli("claude-session", "gc", "--dry-run", "--json")
        assert name in {o["what"] for o in json.loads(dry.stdout) if o["kind"] == "session"}
    finally:
        delete_after(cli, name)


def test_bad_input(cli: Cli, source: str, tmp_path: Path, state_root: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    before = sorted(p.name for p in (state_root / "sessions").iterdir())
    assert_one_line_error(cli("claude-session", "fork", "no-such", "x1", cwd=work), 3)
    assert_one_line_error(cli("claude-session", "fork", source, source, cwd=work), 1)
    assert_one_line_error(cli("claude-session", "fork", source, "Bad_Name", cwd=work), 2)
    assert_one_line_error(cli("claude-session", "fork", source, "x1", "--db", "mysql",
                              cwd=work), 2)
    assert_one_line_error(cli("claude-session", "start", "x1", "--from", source,
                              "--runtime", "docker", cwd=work), 2)
    assert_one_line_error(cli("claude-session", "start", "x1", "--from", source,
                              "--superuser", cwd=work), 2)
    # a directory another live session's .env claims
    assert_one_line_error(cli("claude-session", "fork", source, "x1"), 1)
    assert cli("claude-session", "stop", source).code == 0
    stopped = cli("claude-session", "fork", source, "x1", cwd=work)
    assert_one_line_error(stopped, 4)
    assert "attach" in stopped.stderr
    assert sorted(p.name for p in (state_root / "sessions").iterdir()) == before
    assert not (work / ".env").exists()


# -- killed at each step -----------------------------------------------------------------

@pytest.mark.parametrize(
    "step", ["fork-backup-started", "fork-copied", "fork-filled", "dotenv-written"]
)
def test_fork_killed_at_each_step(cli: Cli, state: Path, tmp_path: Path, step: str) -> None:
    """Killed anywhere: the source keeps its data and serves on (its backup ended with the
    connection), the fork is `unfinished` and gc removes all of it; a fork then works."""
    src = started(cli, unique("src"))
    seed(cli, "postgres", session=src)
    url = database_url(cli, src)
    before = pg_fingerprint(url)
    work = tmp_path / "new"
    work.mkdir()
    name = unique("fork")
    killed = cli("claude-session", "fork", src, name, cwd=work,
                 env={"CLAUDE_DB_TEST_KILL_AT": step})
    assert killed.code == KILLED, killed
    assert pg_fingerprint(url) == before
    with psycopg.connect(url, autocommit=True) as conn:  # the source writes on
        conn.execute("INSERT INTO items (name) VALUES ('after the kill')")

        def backup_ended() -> bool:  # its connection went with the killed process
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'claude_admin' "
                "AND backend_type = 'client backend'").fetchone() == (0,)

        wait_for("the killed fork's base backup to end", backup_ended)
    assert _listed(cli)[name] == "unfinished"  # at every step: its record is written first
    assert (state / "sessions" / name).exists()
    found = cli("claude-session", "gc", "--dry-run", "--json")
    assert found.code == 0 and name in found.stdout, found
    gc = cli("claude-session", "gc")
    assert gc.code == 0, gc
    assert name not in _listed(cli)
    assert not (state / "sessions" / name).exists()
    ports = [session_json(state, src)["runtime_state"]["port"]]
    assert cli("claude-session", "delete", src, "--yes").code == 0
    assert state_leftovers(state, ports) == NOTHING_LEFT


def test_fork_is_listed_as_starting_while_it_runs(cli: Cli, state: Path,
                                                  tmp_path: Path) -> None:
    """From its first step on a fork is in `list`: `starting` while it runs (held here
    waiting for its source's lock, which the test holds), then a session like any other."""
    src = started(cli, unique("src"))
    name = unique("fork")
    work = tmp_path / "new"
    work.mkdir()
    try:
        with hold(SessionStore(state).lock_file(src), f"session {src}"):
            fork = subprocess.Popen([str(BIN / "claude-session"), "fork", src, name],
                                    cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            wait_for("the fork's record", lambda: name in _listed(cli))
            assert _listed(cli)[name] == "starting"
        _, err = fork.communicate(timeout=300)
        assert fork.returncode == 0, err
        assert _listed(cli)[name] == "running"
    finally:
        cli("claude-session", "delete", name, "--yes")
        cli("claude-session", "delete", src, "--yes")


def _listed(cli: Cli) -> dict[str, str]:
    result = cli("claude-session", "list", "--json")
    assert result.code == 0, result
    return {s["name"]: s["status"] for s in json.loads(result.stdout)}


# -- other engines and runtimes: dump and restore ------------------------------------------

def test_mysql_fork_by_dump(cli: Cli, tmp_path: Path) -> None:
    src = started(cli, unique("msrc"), "--db", "mysql")
    name = unique("mfork")
    try:
        seed(cli, "mysql", session=src)
        before = fingerprint(cli, "mysql", session=src)
        made = forked(cli, src, name, tmp_path / "new")
        assert made["method"] == "dump" and made["engine"] == "mysql"
        assert fingerprint(cli, "mysql", session=name) == before
        assert_independent(cli, "mysql", src, name)
    finally:
        cli("claude-session", "delete", name, "--yes")
        delete_after(cli, src)


def test_mysql_fork_killed_after_the_fork_is_created(cli: Cli, state: Path,
                                                     tmp_path: Path) -> None:
    """The dump's step: the new server runs, nothing is restored yet: gc removes it."""
    src = started(cli, unique("msrc"), "--db", "mysql")
    seed(cli, "mysql", session=src)
    before = fingerprint(cli, "mysql", session=src)
    work = tmp_path / "new"
    work.mkdir()
    name = unique("mfork")
    killed = cli("claude-session", "fork", src, name, cwd=work,
                 env={"CLAUDE_DB_TEST_KILL_AT": "fork-created"})
    assert killed.code == KILLED, killed
    assert fingerprint(cli, "mysql", session=src) == before
    assert _listed(cli)[name] == "unfinished"
    assert cli("claude-session", "gc").code == 0
    assert not (state / "sessions" / name).exists()
    ports = [session_json(state, src)["runtime_state"]["port"]]
    assert cli("claude-session", "delete", src, "--yes").code == 0
    assert state_leftovers(state, ports) == NOTHING_LEFT


@pytest.mark.docker
def test_docker_fork_by_dump(cli: Cli, tmp_path: Path) -> None:
    env = {"CLAUDE_DB_RUNTIME": "docker", "CLAUDE_DB_IMAGE": DOCKER_IMAGES["postgres"]}
    src = started(cli, unique("dsrc"), env=env)
    name = unique("dfork")
    try:
        seed(cli, "postgres", session=src)
        before = pg_fingerprint(database_url(cli, src))
        made = forked(cli, src, name, tmp_path / "new", env=env)
        assert made["method"] == "dump" and made["runtime"] == "docker"
        assert pg_fingerprint(database_url(cli, name)) == before
        assert_independent(cli, "postgres", src, name, env)
    finally:
        cli("claude-session", "delete", name, "--yes", env=env)
        delete_after(cli, src)
    assert docker_leftovers(name) == {"container": [], "network": [], "volume": []}


@pytest.mark.docker
def test_mongo_fork_by_dump_on_the_standin(
    cli: Cli, tmp_path: Path, mongo_standin_image: str  # noqa: F811
) -> None:
    """MongoDB: no mongod can run here, so the stand-in image (SecantusDB behind the
    official image's contract) serves; the dump is the engine's driver-level archive."""
    env = {"CLAUDE_DB_RUNTIME": "docker", "CLAUDE_DB_IMAGE": mongo_standin_image}
    src = started(cli, unique("gsrc"), "--db", "mongo", env=env)
    name = unique("gfork")
    documents = [{"_id": i, "label": f"doc {i}"} for i in range(200)]
    find = '{"find": "items", "sort": {"_id": 1}, "batchSize": 1000}'

    def found(session: str) -> Any:
        result = cli("claude-db", "query", find, "--json", "--session", session, env=env)
        assert result.code == 0, result
        return json.loads(result.stdout)

    try:
        insert = json.dumps({"insert": "items", "documents": documents})
        assert cli("claude-db", "query", insert, "--session", src, env=env).code == 0
        made = forked(cli, src, name, tmp_path / "new", env=env)
        assert made["method"] == "dump" and made["engine"] == "mongo"
        assert found(name) == found(src) and len(found(name)) == 200
        more = json.dumps({"insert": "items", "documents": [{"_id": 999}]})
        assert cli("claude-db", "query", more, "--session", src, env=env).code == 0
        assert len(found(name)) == 200 and len(found(src)) == 201
    finally:
        cli("claude-session", "delete", name, "--yes", env=env)
        delete_after(cli, src)


# -- reflink on a real XFS filesystem ------------------------------------------------------

@pytest.fixture
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An XFS filesystem with reflink on a loop device (as root), unmounted at the end."""
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        pytest.skip("needs root and mkfs.xfs (xfsprogs) for a loop device")
    base = traversable_tmpdir(tmp_path_factory, "xfs")  # the server user reaches the mount
    image, mount = base / "fs.img", base / "mnt"
    mount.mkdir()
    with open(image, "wb") as out:
        out.truncate(2 << 30)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount", device, str(mount)], check=True)
        try:
            os.chmod(mount, 0o711)
            yield mount
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
        image.unlink()


def test_reflink_fork_on_xfs(
    cli: Cli, xfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = xfs / "state"
    state.mkdir(mode=0o711)
    monkeypatch.setenv("CLAUDE_DB_STATE_DIR", str(state))
    src = started(cli, unique("xsrc"))
    try:
        for statement in ["CREATE TABLE items (id serial PRIMARY KEY, name text, price int)",
                          "INSERT INTO items (name, price) SELECT repeat(md5(g::text), 30), g "
                          "FROM generate_series(1, 5000) g",
                          "CREATE TABLE big AS SELECT repeat('x', 1500) AS pad "
                          "FROM generate_series(1, 40000)"]:
            query(cli, src, statement)
        before = pg_fingerprint(database_url(cli, src))
        table = query(cli, src, "SELECT pg_relation_filepath('big')").split()[-1]
        name = unique("xfork")
        made = forked(cli, src, name, tmp_path / "new")
        assert made["method"] == "reflink"
        # the clone shares the source's blocks (until one of them writes them)
        datadir = Path(session_json(state, name)["runtime_state"]["datadir"])
        extents = subprocess.run(["filefrag", "-v", str(datadir / table)],
                                 capture_output=True, text=True, check=True).stdout
        assert "shared" in extents, extents
        assert pg_fingerprint(database_url(cli, name)) == before
        assert_independent(cli, "postgres", src, name)
        assert cli("claude-session", "delete", name, "--yes").code == 0
    finally:
        cli("claude-session", "delete", src, "--yes")
        cleanup(state)
