"""``claude-session gc``: what no live session owns goes; what a live session owns stays.

Orphans are made the way they happen: a ``start`` killed (SIGKILL) half-way, a session
directory whose ``session.json`` was lost, a snapshot or server template cut short.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import docker as sdk
import psycopg
import pytest

from claude_db.locks import hold, lock_for
from claude_db.snapshots import MOVED
from claude_db.testing import Cli, assert_one_line_error
from claude_db.testing.docker import (
    DB_IMAGE,
    NOTHING_IN_DOCKER,
    docker_cli_env,
    docker_daemon,  # noqa: F401 - a fixture
    docker_env,  # noqa: F401 - a fixture
    docker_ids,
    docker_leftovers,
    new_name,  # noqa: F401 - a fixture
    remove_everything,
    start_docker_with_frozen_database,
    unpause,
)
from claude_db.testing.safety import (
    NOTHING_LEFT,
    cleanup,
    database_url,
    fresh_state,
    listening,
    pg_fingerprint,
    session_json,
    session_leader_servers,
    start_with_frozen_server,
    state_leftovers,
    wait_for,
)


def killed_start(state: Path, name: str, workdir: Path) -> tuple[str, int, int]:
    """A ``start`` killed with SIGKILL half-way (its server up, not yet ready): the
    session's name, its server's pid and port. Nothing could clean up after it."""
    proc, server, session = start_with_frozen_server(state, name, workdir)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    os.kill(server, signal.SIGCONT)
    # gc finds a server by the pid file it writes once it runs on (it was frozen, usually
    # before writing it): until then a dry run lists its session, not the process
    pid_file = state / "sessions" / session / "server" / "data" / "postmaster.pid"
    wait_for("the server to write its pid file", lambda: _first_line(pid_file) == str(server))
    return session, server, session_json(state, session)["runtime_state"]["port"]


def _first_line(path: Path) -> str | None:
    try:
        return path.read_text().split("\n", 1)[0]
    except OSError:
        return None


def test_gc_removes_what_a_killed_start_left(cli: Cli, state: Path, tmp_path: Path) -> None:
    live = cli("claude-session", "start", "gc-live")
    assert live.code == 0, live
    assert cli("claude-db", "query", "CREATE TABLE keep AS SELECT 1 AS x",
               "--session", "gc-live").code == 0
    live_data = pg_fingerprint(database_url(cli, "gc-live"))
    live_port = session_json(state, "gc-live")["runtime_state"]["port"]

    elsewhere = tmp_path / "dead"  # the work directory is gc-live's
    elsewhere.mkdir()
    name, server, port = killed_start(state, "gc-dead", elsewhere)
    assert session_leader_servers(state, name) == [server]

    dry = cli("claude-session", "gc", "--dry-run", "--json")
    assert dry.code == 0, dry
    planned = json.loads(dry.stdout)
    assert {(o["kind"], o["what"]) for o in planned} == {("process", str(server)),
                                                         ("session", name)}, planned
    assert not any(o["removed"] for o in planned)
    assert session_leader_servers(state, name) == [server]  # a dry run touches nothing

    swept = cli("claude-session", "gc")
    assert swept.code == 0, swept
    assert f"removed session {name}" in swept.stdout
    assert session_leader_servers(state, name) == []
    assert not listening(port, state)
    assert not (state / "sessions" / name).exists()
    assert not (state / "sessions" / ".locks" / f"{name}.lock").exists()

    # the live session was not touched
    assert session_json(state, "gc-live")["name"] == "gc-live"
    assert listening(live_port, state)
    assert pg_fingerprint(database_url(cli, "gc-live")) == live_data

    again = cli("claude-session", "gc", "--json")
    assert json.loads(again.stdout) == []
    assert cli("claude-session", "delete", "gc-live", "--yes").code == 0
    assert state_leftovers(state, [live_port, port]) == NOTHING_LEFT


def test_a_start_killed_after_writing_env_leaves_no_keys_behind(
    cli: Cli, state: Path, workdir: Path
) -> None:
    """Killed between writing ``.env`` and finishing: ``list`` says unfinished (not
    running), and gc takes the session's block out of ``.env``, the user's line back."""
    (workdir / ".env").write_text("DATABASE_URL=postgresql://mine@db.example/prod\n")
    killed = cli("claude-session", "start", "gc-late",
                 env={"CLAUDE_DB_TEST_KILL_AT": "dotenv-written"})
    assert killed.code == -signal.SIGKILL, killed
    assert "CLAUDE_SESSION=gc-late" in (workdir / ".env").read_text()
    [shown] = json.loads(cli("claude-session", "list", "--json").stdout)
    assert (shown["name"], shown["status"]) == ("gc-late", "unfinished"), shown
    port = session_json(state, "gc-late")["runtime_state"]["port"]
    swept = cli("claude-session", "gc")
    assert swept.code == 0, swept
    assert (workdir / ".env").read_text() == "DATABASE_URL=postgresql://mine@db.example/prod\n"
    assert state_leftovers(state, [port]) == NOTHING_LEFT


def test_gc_removes_lost_directories_locks_and_half_made_snapshots(
    cli: Cli, state: Path, tmp_path: Path
) -> None:
    assert cli("claude-session", "start", "gc-keep").code == 0
    assert cli("claude-db", "snapshot", "save", "good", "--session", "gc-keep").code == 0
    sessions = state / "sessions"
    # a session directory that lost its session.json (with a server data dir inside)
    (sessions / "gc-lost" / "server" / "data").mkdir(parents=True)
    # a lock file of a session long gone, and one an older claude-db left beside them
    (sessions / ".locks" / "gc-gone.lock").touch()
    (sessions / ".gc-old.lock").touch()
    # a snapshot cut short in a live session, and a server template cut short
    partial = sessions / "gc-keep" / "snapshots" / ".cut.12345.partial"
    partial.mkdir()
    building = state / "templates" / ".postgres-x.12345"
    building.mkdir()
    # start's background spare copy holds the templates lock (gc rightly skips templates
    # then): wait for it, so gc sees the half-made template below
    with hold(lock_for(state / "templates"), "the templates"):
        pass

    swept = cli("claude-session", "gc", "--json")
    assert swept.code == 0, swept
    removed = {(o["kind"], o["what"]) for o in json.loads(swept.stdout) if o["removed"]}
    assert removed == {
        ("directory", str(sessions / "gc-lost")),
        ("lock", str(sessions / ".locks" / "gc-gone.lock")),
        ("lock", str(sessions / ".gc-old.lock")),
        ("directory", str(partial)),
        ("directory", str(building)),
    }
    assert sorted(p.name for p in sessions.iterdir()) == [".locks", "gc-keep"]
    assert [p.name for p in (sessions / ".locks").iterdir()] == ["gc-keep.lock"]
    listed = cli("claude-db", "snapshot", "list", "--json", "--session", "gc-keep")
    assert [s["name"] for s in json.loads(listed.stdout)] == ["good"]
    assert cli("claude-db", "status", "--session", "gc-keep").code == 0
    assert cli("claude-session", "delete", "gc-keep", "--yes").code == 0
    assert state_leftovers(state, []) == NOTHING_LEFT


def test_gc_drops_the_databases_of_snapshots_cut_short(cli: Cli, state: Path) -> None:
    """A snapshot cut short names a template database on the server: it goes with the
    snapshot's directory (by gc while the server runs, else by the next snapshot command).
    One a reset moved the data into is left alone: it may be the only copy."""
    assert cli("claude-session", "start", "gc-snap").code == 0
    snaps = state / "sessions" / "gc-snap" / "snapshots"
    url = database_url(cli, "gc-snap")

    def templates() -> set[str]:
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database "
                                "WHERE datname LIKE 'claude_snapshot_%'").fetchall()
        return {row[0] for row in rows}

    def save(name: str) -> str:
        assert cli("claude-db", "snapshot", "save", name, "--session", "gc-snap").code == 0
        database: str = json.loads((snaps / name / "postgres.json").read_text())["template"]
        return database

    def cut_short(name: str) -> Path:
        """Snapshot ``name`` as a delete killed before it dropped its database leaves it."""
        cut = snaps / f".{name}.12345.deleting"
        os.rename(snaps / name, cut)
        return cut

    def killed_save(name: str) -> tuple[Path, str]:
        """A save killed (SIGKILL) after the server made the copy, before it recorded it."""
        killed = cli("claude-db", "snapshot", "save", name, "--session", "gc-snap",
                     env={"CLAUDE_DB_TEST_KILL_AT": "copied"})
        assert killed.code == -9, killed
        partial = next(snaps.glob(f".{name}.*.partial"))
        return partial, json.loads((partial / "postgres.json").read_text())["template"]

    good, deleted_db = save("good"), save("deleting")
    (saving, saved_db), deleting = killed_save("saving"), cut_short("deleting")
    # an older claude-db's reset killed after its move: the database (recorded, listed)
    # stays, only the directory goes
    moved = snaps / ".moved.12345.partial"
    moved.mkdir()
    (moved / MOVED).touch()
    (moved / "postgres.json").write_text(json.dumps({"template": good, "owner": None}))
    assert templates() == {good, saved_db, deleted_db}

    # stopped: what they name cannot be dropped now, so they stay for later
    assert cli("claude-session", "stop", "gc-snap").code == 0
    idle = cli("claude-session", "gc", "--json")
    assert idle.code == 0, idle
    assert json.loads(idle.stdout) == [] and saving.exists() and deleting.exists()

    assert cli("claude-session", "attach", "gc-snap", "--no-shell").code == 0
    swept = cli("claude-session", "gc", "--json")
    assert swept.code == 0, swept
    removed = {(o["kind"], o["what"]) for o in json.loads(swept.stdout) if o["removed"]}
    assert removed == {("directory", str(saving)), ("directory", str(deleting)),
                       ("directory", str(moved))}
    assert templates() == {good}

    # the next snapshot command sweeps too (a DATABASE_URL's snapshots have only that)
    saving, saved_db = killed_save("again")
    assert templates() == {good, saved_db}
    assert cli("claude-db", "snapshot", "save", "after", "--session", "gc-snap").code == 0
    assert saved_db not in templates() and not saving.exists()
    listed = cli("claude-db", "snapshot", "list", "--json", "--session", "gc-snap")
    assert [s["name"] for s in json.loads(listed.stdout)] == ["good", "after"]
    assert cli("claude-session", "delete", "gc-snap", "--yes").code == 0
    assert state_leftovers(state, []) == NOTHING_LEFT


def test_every_start_sweeps_cheaply(cli: Cli, state: Path, workdir: Path) -> None:
    name, _, port = killed_start(state, "gc-crashed", workdir)
    started = cli("claude-session", "start", "gc-next")
    assert started.code == 0, started
    # the session by name, the stray server counted
    assert "removed session gc-crashed: its start never finished" in started.stderr, started
    assert "removed 1 leftover of gone sessions" in started.stderr, started
    assert session_leader_servers(state, name) == []
    assert not listening(port, state)
    assert not (state / "sessions" / name).exists()
    assert cli("claude-session", "delete", "gc-next", "--yes").code == 0
    # the name of the crashed start can be used again
    assert cli("claude-session", "start", name).code == 0
    assert cli("claude-session", "delete", name, "--yes").code == 0
    assert state_leftovers(state, [port]) == NOTHING_LEFT


def test_gc_leaves_other_state_directories_alone(
    cli: Cli, state: Path, tmp_path: Path, state_root: Path
) -> None:
    """Sessions of another state directory (another user, another test run) are not ours."""
    other = fresh_state(tmp_path / "other", state_root)
    env = {"CLAUDE_DB_STATE_DIR": str(other)}
    try:
        assert cli("claude-session", "start", "gc-theirs", env=env).code == 0
        swept = cli("claude-session", "gc", "--json")
        assert swept.code == 0, swept
        assert json.loads(swept.stdout) == []
        assert cli("claude-db", "status", "--session", "gc-theirs", env=env).code == 0
    finally:
        cleanup(other)


def test_gc_bad_flag(cli: Cli, state: Path) -> None:
    assert_one_line_error(cli("claude-session", "gc", "--everything"), 2)
    nothing = cli("claude-session", "gc")
    assert nothing.code == 0 and "nothing to remove" in nothing.stderr


@pytest.mark.docker
@pytest.mark.usefixtures("docker_daemon")
def test_gc_removes_docker_leftovers_and_only_ours(
    cli: Cli, state: Path, workdir: Path, tmp_path: Path, state_root: Path
) -> None:
    """Docker resources no session of ours owns go: those of a start killed half-way and
    those of a session whose record was lost (found by their labels alone). Another state
    directory's session on the same daemon stays."""
    killed, lost, theirs = (f"gc{kind}{uuid.uuid4().hex[:8]}" for kind in "klt")
    other = fresh_state(tmp_path / "other", state_root)
    try:
        env = {**docker_cli_env(other), "CLAUDE_DB_STATE_DIR": str(other)}
        for name in (theirs, lost):  # each its own work directory (.env is one session's)
            (tmp_path / name).mkdir()
        assert cli("claude-session", "start", theirs, cwd=tmp_path / theirs, env=env).code == 0
        assert cli("claude-session", "start", lost, cwd=tmp_path / lost,
                   env=docker_cli_env(state)).code == 0
        proc = start_docker_with_frozen_database(state, killed, workdir)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        unpause(killed)
        shutil.rmtree(state / "sessions" / lost)  # its record is gone, its resources are not
        for name in (killed, lost):
            left = docker_leftovers(name)
            assert left["container"] and left["network"] and left["volume"], left

        dry = cli("claude-session", "gc", "--dry-run", "--json")
        assert dry.code == 0, dry
        planned = {(o["kind"], o["detail"]) for o in json.loads(dry.stdout)}
        assert ("session", "its start never finished") in planned
        for kind in ("container", "network", "volume"):
            assert (kind, f"Docker {kind} of gone session {lost}") in planned, planned
        assert docker_leftovers(lost)["container"]  # a dry run removes nothing

        swept = cli("claude-session", "gc", "--json")
        assert swept.code == 0, swept
        assert all(o["removed"] for o in json.loads(swept.stdout)), swept
        assert docker_leftovers(killed) == docker_leftovers(lost) == NOTHING_IN_DOCKER
        assert state_leftovers(state, []) == NOTHING_LEFT
        # the other state directory's session was not ours to judge
        assert cli("claude-db", "status", "--session", theirs, env=env).code == 0
        assert docker_leftovers(theirs)["container"]
    finally:
        cleanup(other)
        for name in (killed, lost, theirs):
            remove_everything(name)


@pytest.mark.docker
@pytest.mark.usefixtures("docker_daemon")
def test_gc_removes_a_live_sessions_tools_container_that_never_started(
    cli: Cli, state: Path, workdir: Path
) -> None:
    """An import or psql interrupted between `docker run`'s create and start leaves its
    tools container created, with the session's labels (first-time user: six of them, and
    gc found none). Once it is too old to be about to start, gc takes it; the live session
    keeps everything else."""
    name = f"gct{uuid.uuid4().hex[:8]}"
    try:
        assert cli("claude-session", "start", name, env=docker_cli_env(state)).code == 0
        labels = json.loads(subprocess.run(
            ["docker", "inspect", "--format", "{{json .Config.Labels}}", f"{name}-db"],
            capture_output=True, text=True, check=True).stdout)
        labels["claude-db.role"] = "tools"
        left = subprocess.run(
            ["docker", "create", *(f"--label={k}={v}" for k, v in labels.items()),
             "--entrypoint", "psql", DB_IMAGE],
            capture_output=True, text=True, check=True).stdout.strip()

        def listed() -> bool:
            dry = json.loads(cli("claude-session", "gc", "--dry-run", "--json").stdout)
            return [o["detail"] for o in dry] == [f"tools container of session {name}, "
                                                  "never started"]
        wait_for("the created container to be old enough", listed, timeout=180)
        swept = cli("claude-session", "gc", "--json")
        assert [o["removed"] for o in json.loads(swept.stdout)] == [True], swept
        gone = subprocess.run(["docker", "inspect", left], capture_output=True)
        assert gone.returncode != 0
        assert cli("claude-db", "status", "--session", name).code == 0
    finally:
        remove_everything(name)


def test_kept_data_of_one_name_kept_twice_in_one_second_stays_apart(
    cli: Cli, state: Path
) -> None:
    """Adversarial finding 12: local kept data is ``kept/<name>-<Unix seconds>``; a second
    ``delete --keep-data`` (or reclaim) of that name within the same second moved its data
    into the first one's directory (``shutil.move`` into a directory that exists), and
    removing the first kept data later took both. The second delete is made to meet a taken
    name for certain: every name it could take within the next hour is taken first (as the
    first delete's directory takes its own second)."""
    assert cli("claude-session", "start", "twice").code == 0
    assert cli("claude-session", "delete", "twice", "--yes", "--keep-data").code == 0
    kept = state / "kept"
    [first] = list(kept.iterdir())
    first_entries = sorted(p.name for p in first.iterdir())
    assert "PG_VERSION" in first_entries
    now = int(time.time())
    taken = [kept / f"twice-{second}" for second in range(now, now + 3600)]
    for path in taken:
        path.mkdir(exist_ok=True)

    assert cli("claude-session", "start", "twice").code == 0
    deleted = cli("claude-session", "delete", "twice", "--yes", "--keep-data")
    assert deleted.code == 0, deleted
    made = [p for p in kept.iterdir() if p != first and p not in taken]
    assert len(made) == 1, f"the second kept data went into a directory there: {deleted}"
    [second] = made
    assert f"kept the data of 'twice' in {second}" in deleted.stdout + deleted.stderr, deleted
    assert (second / "PG_VERSION").is_file()
    # nothing went into a directory that was there
    assert sorted(p.name for p in first.iterdir()) == first_entries
    assert [p for p in taken if p != first and any(p.iterdir())] == []


@pytest.mark.docker
def test_docker_kept_data_of_one_name_kept_twice_in_one_second_stays_apart(
    cli: Cli, state: Path, new_name: Callable[[], str]  # noqa: F811 - the fixture
) -> None:
    """Finding 12 on Docker: the kept volume was ``<name>-data-kept-<YYYYmmdd-HHMMSS>``; a
    second keep of that name within the same second met the first's volume, and the delete
    failed, then failed on every retry (that name was on record). Made certain as above:
    every such name of the next five minutes is a volume already (of nobody's)."""
    name = new_name()
    client = sdk.DockerClient(base_url="unix:///var/run/docker.sock")
    taken: list[str] = []
    try:
        assert cli("claude-session", "start", name).code == 0
        assert cli("claude-session", "delete", name, "--yes", "--keep-data").code == 0
        there = {volume.name for volume in client.volumes.list()}
        now = time.time()
        for second in range(300):
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now + second))
            if (volume := f"{name}-data-kept-{stamp}") not in there:
                client.volumes.create(volume)
                taken.append(volume)

        assert cli("claude-session", "start", name).code == 0
        deleted = cli("claude-session", "delete", name, "--yes", "--keep-data")
        assert deleted.code == 0, deleted
        kept = docker_ids("volume", f"label=claude-db.kept-from={name}")
        assert len(kept) == 2, kept
        assert all(not client.volumes.get(v).attrs.get("Labels") for v in taken)
    finally:
        for volume in taken:
            client.volumes.get(volume).remove()
