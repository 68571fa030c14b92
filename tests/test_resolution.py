"""Which database ``claude-db`` works on: the right one every time, by one rule (issue 12).

``--session NAME`` > the ``.env`` naming a session here or above > ``$CLAUDE_SESSION`` >
``$DATABASE_URL``; an inherited variable that disagrees gets a note, and the commands that
destroy data refuse until ``--session`` says which. All real CLI runs on real servers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_db.app import get_app
from claude_db.database import resolve
from claude_db.envfile import read_env
from claude_db.errors import ExitCode, NotRunningError, UsageError
from claude_db.processes import HostTools
from claude_db.runtimes.url import UrlRuntime
from claude_db.testing import Cli, assert_one_line_error
from claude_db.testing.safety import fresh_state

pytest_plugins = ["claude_db.testing.docker"]  # the docker case at the end

USAGE = ExitCode.USAGE


def _tables(cli: Cli, session: str) -> list[str]:
    listed = cli("claude-db", "query", "select tablename from pg_tables where schemaname = "
                 "'public' order by 1", "--csv", "--session", session)
    assert listed.code == 0, listed
    return listed.stdout.splitlines()[1:]


@pytest.fixture
def two_projects(cli: Cli, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Projects ``proj-a`` and ``proj-b``, each with its own session and table."""
    a, b = tmp_path / "proj-a", tmp_path / "proj-b"
    for path, name in ((a, "proj-a"), (b, "proj-b")):
        path.mkdir()
        assert cli("claude-session", "start", cwd=path).code == 0
        made = cli("claude-db", "query", f"create table only_{name[-1]} (x int)", cwd=path)
        assert made.code == 0, made
    yield a, b
    for name in ("proj-a", "proj-b"):
        cli("claude-session", "delete", name, "--yes")


def test_an_inherited_session_never_beats_the_env_here(
    cli: Cli, two_projects: tuple[Path, Path]
) -> None:
    a, b = two_projects
    exported = read_env(a)  # the README's quick start: set -a; . ./.env; set +a in project a
    status = cli("claude-db", "status", cwd=b, env=exported)
    assert status.code == 0, status
    assert "(session proj-b)" in status.stdout, status
    assert "CLAUDE_SESSION=proj-a" in status.stderr and "proj-b" in status.stderr, status
    query = cli("claude-db", "query", "select to_regclass('only_b') is not null", "--csv",
                cwd=b, env=exported)
    assert query.stdout.splitlines()[1:] == ["t"], query

    # the commands that destroy data refuse while the two disagree, naming both
    for argv in (("reset", "--yes"), ("undo", "--yes"), ("snapshot", "restore", "x", "--yes")):
        refused = cli("claude-db", *argv, cwd=b, env=exported)
        assert_one_line_error(refused, USAGE)
        assert "CLAUDE_SESSION=proj-a" in refused.stderr and "--session" in refused.stderr
    (b / "dump.sql").write_text("create table imported (x int);\n")
    refused = cli("claude-db", "import", "--replace", "--yes", "dump.sql", cwd=b, env=exported)
    assert_one_line_error(refused, USAGE)
    deleting = cli("claude-session", "delete", "--yes", cwd=b, env=exported)
    assert_one_line_error(deleting, USAGE)
    assert _tables(cli, "proj-a") == ["only_a"] and _tables(cli, "proj-b") == ["only_b"]

    # --session says which: then it runs
    chosen = cli("claude-db", "reset", "--yes", "--session", "proj-b", cwd=b, env=exported)
    assert chosen.code == 0, chosen
    assert _tables(cli, "proj-b") == [] and _tables(cli, "proj-a") == ["only_a"]


def test_an_inherited_database_url_gets_a_note_and_no_reset(
    cli: Cli, two_projects: tuple[Path, Path]
) -> None:
    a, b = two_projects
    url = read_env(a)["DATABASE_URL"]
    status = cli("claude-db", "status", cwd=b, env={"DATABASE_URL": url})
    assert status.code == 0 and "(session proj-b)" in status.stdout, status
    assert "DATABASE_URL is set to 127.0.0.1:" in status.stderr, status
    assert read_env(a)["DB_PASSWORD"] not in status.stderr  # no credentials in the note
    assert_one_line_error(cli("claude-db", "reset", "--yes", cwd=b, env={"DATABASE_URL": url}),
                          USAGE)
    assert _tables(cli, "proj-a") == ["only_a"] and _tables(cli, "proj-b") == ["only_b"]


def test_a_subdirectory_finds_its_session_by_walking_up(cli: Cli, workdir: Path) -> None:
    assert cli("claude-session", "start", "walker").code == 0
    try:
        deep = workdir / "frontend" / "src"
        deep.mkdir(parents=True)
        # the user's own .env further down names no session: passed by
        (workdir / "frontend" / ".env").write_text("VITE_API=http://localhost:3000\n")
        status = cli("claude-db", "status", cwd=deep)
        assert status.code == 0 and "(session walker)" in status.stdout, status
        # an exported DATABASE_URL elsewhere does not win either
        dead = {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/other"}
        status = cli("claude-db", "status", cwd=deep, env=dead)
        assert status.code == 0 and "(session walker)" in status.stdout, status
        assert "127.0.0.1:1/other" in status.stderr, status
        assert cli("claude-session", "stop", cwd=deep).code == 0
        attached = cli("claude-session", "attach", "--no-shell", cwd=deep)
        assert attached.code == 0 and "session walker is ready" in attached.stderr, attached
    finally:
        assert cli("claude-session", "delete", "walker", "--yes").code == 0


def test_a_bare_url_no_session_owns_is_never_destroyed(
    cli: Cli, workdir: Path, tmp_path: Path, state_root: Path
) -> None:
    """A production URL inherited from the shell: here, a real server's URL whose session
    this state directory does not know (it is another one's)."""
    assert cli("claude-session", "start", "prod").code == 0
    try:
        url = read_env(workdir)["DATABASE_URL"]
        port = read_env(workdir)["DB_PORT"]
        assert cli("claude-db", "query", "create table precious (x int)").code == 0
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        other_state = fresh_state(tmp_path / "other", state_root)
        shell = {"DATABASE_URL": url, "CLAUDE_DB_STATE_DIR": str(other_state)}
        # reading works as before
        read = cli("claude-db", "query", "select 1 as one", "--csv", cwd=elsewhere, env=shell)
        assert read.stdout.splitlines() == ["one", "1"], read
        (elsewhere / "dump.sql").write_text("create table imported (x int);\n")
        for argv in (("reset", "--yes"), ("import", "--replace", "--yes", "dump.sql"),
                     ("undo", "--yes"), ("snapshot", "restore", "x", "--yes")):
            refused = cli("claude-db", *argv, cwd=elsewhere, env=shell)
            assert_one_line_error(refused, USAGE)
            assert f"127.0.0.1:{port}/appdb" in refused.stderr, refused
            assert "CLAUDE_DB_ALLOW_URL_DESTRUCTIVE" in refused.stderr, refused
        assert _tables(cli, "prod") == ["precious"]
        # a .env naming a session this state directory does not know: its URL, same rule
        refused = cli("claude-db", "reset", "--yes", env={"CLAUDE_DB_STATE_DIR": str(other_state)})
        assert_one_line_error(refused, USAGE)
        assert _tables(cli, "prod") == ["precious"]
        # allowed explicitly, it runs
        allowed = cli("claude-db", "reset", "--yes", cwd=elsewhere,
                      env={**shell, "CLAUDE_DB_ALLOW_URL_DESTRUCTIVE": "true"})
        assert allowed.code == 0, allowed
        assert _tables(cli, "prod") == []
    finally:
        assert cli("claude-session", "delete", "prod", "--yes").code == 0


def test_a_session_containers_own_url_needs_no_flag(
    cli: Cli, workdir: Path, tmp_path: Path, state_root: Path
) -> None:
    """Inside a session container, the environment holds CLAUDE_SESSION with the
    session's own DATABASE_URL and no state knows the session: that URL is its own."""
    assert cli("claude-session", "start", "inside").code == 0
    try:
        env = read_env(workdir)
        assert cli("claude-db", "query", "create table scratch (x int)").code == 0
        container = {"CLAUDE_SESSION": "inside", "DATABASE_URL": env["DATABASE_URL"],
                     "CLAUDE_DB_STATE_DIR": str(fresh_state(tmp_path / "box", state_root))}
        for cwd in (workdir, tmp_path):  # the mounted work directory, and anywhere else
            assert cli("claude-db", "query", "create table if not exists scratch (x int)",
                       cwd=cwd, env=container).code == 0
            reset = cli("claude-db", "reset", "--yes", cwd=cwd, env=container)
            assert reset.code == 0, reset
            assert _tables(cli, "inside") == []
    finally:
        assert cli("claude-session", "delete", "inside", "--yes").code == 0


def test_start_again_makes_sure_the_session_runs(cli: Cli, workdir: Path) -> None:
    assert cli("claude-session", "start", "again").code == 0
    try:
        assert cli("claude-db", "query", "create table kept (x int)").code == 0
        assert cli("claude-session", "stop", "again").code == 0
        (workdir / ".env").unlink()
        again = cli("claude-session", "start", "again", "--db", "mysql")
        assert again.code == 0, again
        assert again.stdout.strip() == "session again runs (postgres on the local runtime)"
        assert "already exists here" in again.stderr, again
        assert "keeps its engine postgres (--db mysql)" in again.stderr, again
        assert "claude-db export" in again.stderr, again  # the way to move its data
        assert read_env(workdir)["CLAUDE_SESSION"] == "again"  # .env written back
        assert _tables(cli, "again") == ["kept"]
        assert cli("claude-db", "status").code == 0
    finally:
        assert cli("claude-session", "delete", "again", "--yes").code == 0


def test_a_second_session_never_takes_a_directory_over(
    cli: Cli, state: Path, workdir: Path, tmp_path: Path
) -> None:
    assert cli("claude-session", "start", "first").code == 0
    try:
        before = (workdir / ".env").read_text()
        second = cli("claude-session", "start", "second")
        assert_one_line_error(second, ExitCode.FAILED)
        assert "belongs to session 'first'" in second.stderr, second
        assert "claude-session attach first" in second.stderr, second
        assert (workdir / ".env").read_text() == before
        listed = json.loads(cli("claude-session", "list", "--json").stdout)
        assert [s["name"] for s in listed] == ["first"]
        assert cli("claude-db", "status").code == 0
        # the same name from another directory (two projects called "app"): not theirs
        other = tmp_path / "other"
        other.mkdir()
        same_name = cli("claude-session", "start", "first", cwd=other)
        assert_one_line_error(same_name, ExitCode.FAILED)
        assert f"already exists, for {workdir}" in same_name.stderr, same_name
        assert "attach" not in same_name.stderr, same_name
        assert not (other / ".env").exists()
    finally:
        assert cli("claude-session", "delete", "first", "--yes").code == 0
    assert not (workdir / ".env").exists()


def test_another_state_directorys_session_keeps_its_env(
    cli: Cli, workdir: Path, tmp_path: Path, state_root: Path
) -> None:
    assert cli("claude-session", "start", "shared").code == 0
    try:
        before = (workdir / ".env").read_text()
        other = {"CLAUDE_DB_STATE_DIR": str(fresh_state(tmp_path / "s2", state_root))}
        taken = cli("claude-session", "start", "shared", env=other)
        assert_one_line_error(taken, ExitCode.FAILED)
        assert "of state directory" in taken.stderr, taken
        assert_one_line_error(cli("claude-session", "delete", "shared", "--yes", env=other),
                              ExitCode.NO_SESSION)
        assert (workdir / ".env").read_text() == before
    finally:
        assert cli("claude-session", "delete", "shared", "--yes").code == 0


def test_attach_writes_a_missing_env_back(cli: Cli, workdir: Path) -> None:
    assert cli("claude-session", "start", "back").code == 0
    try:
        written = read_env(workdir)
        (workdir / ".env").unlink()
        attached = cli("claude-session", "attach", "back", "--no-shell")
        assert attached.code == 0, attached
        assert read_env(workdir) == written
    finally:
        assert cli("claude-session", "delete", "back", "--yes").code == 0


def test_status_says_when_env_holds_an_old_address(cli: Cli, workdir: Path) -> None:
    """What a re-created container on a new network leaves (the docker runtime's
    attach test makes one for real); here the .env is given an old port."""
    assert cli("claude-session", "start", "stale").code == 0
    try:
        path = workdir / ".env"
        port = read_env(workdir)["DB_PORT"]
        good = path.read_text()
        path.write_text(good.replace(f"127.0.0.1:{port}/", "127.0.0.1:1/"))
        status = cli("claude-db", "status")
        assert status.code == ExitCode.NOT_RUNNING, status
        assert status.stdout.startswith("ready:"), status  # the database itself answers
        assert "127.0.0.1:1/appdb" in status.stderr and "claude-session attach stale" in (
            status.stderr), status
        as_json = cli("claude-db", "status", "--json")
        assert json.loads(as_json.stdout)["dotenv_current"] is False, as_json
        assert cli("claude-session", "attach", "stale", "--no-shell").code == 0
        assert path.read_text() == good
        assert cli("claude-db", "status").code == 0
    finally:
        assert cli("claude-session", "delete", "stale", "--yes").code == 0


def test_the_rule_is_in_the_help(cli: Cli) -> None:
    shown = cli("claude-db", "--help", env={"COLUMNS": "200"})
    text = " ".join(shown.stdout.split())
    assert "--session NAME; the .env naming a session in this directory or the nearest one " \
           "above it; $CLAUDE_SESSION; $DATABASE_URL" in text, shown
    assert os.environ.get("CLAUDE_SESSION") is None


# -- the docker runtime: a re-created container, another image -------------------------------

@pytest.mark.docker
def test_status_and_start_on_a_recreated_docker_session(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    from claude_db.testing.docker import DB_IMAGE, docker

    name = new_name()
    assert cli("claude-session", "start", name).code == 0
    old_url = read_env(workdir)["DATABASE_URL"]
    docker("rm", "-f", f"{name}-db")
    docker("network", "rm", f"{name}-net")
    squatter = f"{name}-squat"  # takes the freed subnet: the session's network gets another
    docker("network", "create", squatter)
    try:
        # the runtime's restart gives the database a new address; .env still has the old one
        again = cli("claude-session", "start", name, "--db-image", "postgres:99")
        assert again.code == 0, again
        assert f"keeps its database image {DB_IMAGE} (--db-image postgres:99)" in again.stderr
        assert "claude-db export" in again.stderr, again
        new_url = read_env(workdir)["DATABASE_URL"]
        assert new_url != old_url  # start again wrote the new address
        (workdir / ".env").write_text((workdir / ".env").read_text().replace(new_url, old_url))
        status = cli("claude-db", "status")
        assert status.code == ExitCode.NOT_RUNNING and status.stdout.startswith("ready:"), status
        assert f"claude-session attach {name} --no-shell" in status.stderr, status
        assert cli("claude-session", "attach", name, "--no-shell").code == 0
        assert read_env(workdir)["DATABASE_URL"] == new_url
        assert cli("claude-db", "status").code == 0
    finally:
        docker("network", "rm", squatter)


def test_a_bare_url_is_a_runtime_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bare DATABASE_URL resolves to a target like a session's: its runtime (never one
    ``start`` can pick) tells whether something listens at the URL, and builds this host's
    tools for any database of that server; it never makes, starts or removes anything."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("DATABASE_URL", f"postgresql://u:p@127.0.0.1:{port}/appdb")
        app = get_app()
        target = resolve(app, None)
        assert isinstance(target.runtime, UrlRuntime) and target.bare_url
        assert UrlRuntime.name not in app.plugins.runtimes
        assert (target.name, target.session.name) == ("DATABASE_URL", "DATABASE_URL")
        target.require_running()  # something listens
        tools = target.tools("other")
        assert isinstance(tools, HostTools)
        assert (tools.endpoint.host, tools.endpoint.port, tools.endpoint.database) == (
            "127.0.0.1", port, "other")
        assert target.tools().endpoint.database == "appdb"  # the first call changed nothing
        with pytest.raises(UsageError):
            target.runtime.delete(target.session, target.engine, keep_data=False)
    with pytest.raises(NotRunningError, match=f"nothing answers at 127.0.0.1:{port}"):
        target.require_running()


# -- a .env that is not its session's own (found by trying it as an attacker) ----------------


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def test_a_worktree_nested_in_the_checkout_is_a_checkout_of_its_own(
    cli: Cli, tmp_path: Path
) -> None:
    """Claude Code makes worktrees in .claude/worktrees/, inside the main checkout: from
    one, nothing may reach the main checkout's session (delete took it, data and all)."""
    main = tmp_path / "repo"
    main.mkdir()
    _git(main, "init", "-q")
    _git(main, "commit", "-q", "--allow-empty", "-m", "init")
    assert cli("claude-session", "start", "nest-main", cwd=main).code == 0
    try:
        assert cli("claude-db", "query", "create table precious (x int)", cwd=main).code == 0
        _git(main, "worktree", "add", "-q", ".claude/worktrees/feat")
        nested = main / ".claude" / "worktrees" / "feat"
        for command in (("claude-session", "delete", "--yes"), ("claude-session", "stop"),
                        ("claude-db", "reset", "--yes"), ("claude-db", "query", "select 1")):
            assert_one_line_error(cli(*command, cwd=nested), ExitCode.NO_SESSION)
        checkpoint = cli("claude-db", "checkpoint", cwd=nested)  # nothing to checkpoint: 0
        assert checkpoint.stdout.startswith("no checkpoint taken: no session here"), checkpoint
        stop = cli("claude-session", "hooks", "run", "stop", cwd=nested,
                   input=json.dumps({"hook_event_name": "Stop", "cwd": str(nested)}))
        assert stop.code == 0 and "no checkpoint taken" in stop.stdout, stop
        listed = cli("claude-db", "undo", "--list", "--json", cwd=main)
        assert json.loads(listed.stdout) == [], listed
        # the main checkout's agent exported its CLAUDE_SESSION: not this worktree's
        inherited = {"CLAUDE_SESSION": "nest-main"}
        for command in (("claude-session", "delete", "--yes"), ("claude-db", "reset", "--yes")):
            refused = cli(*command, cwd=nested, env=inherited)
            assert_one_line_error(refused, USAGE)
            assert "is a git worktree whose session that is not" in refused.stderr, refused
        assert _tables(cli, "nest-main") == ["precious"]
    finally:
        assert cli("claude-session", "delete", "nest-main", "--yes").code == 0


def test_a_clone_inside_a_session_directory_finds_its_session(cli: Cli, tmp_path: Path) -> None:
    """A parent folder of several repositories, or a submodule: git stops at their .git,
    the .env above them is still theirs (review: a worktree's boundary, not any .git)."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    assert cli("claude-session", "start", "parent", cwd=workspace).code == 0
    try:
        _git(workspace, "init", "-q", "repo")
        status = cli("claude-db", "status", cwd=workspace / "repo")
        assert status.code == 0 and "(session parent)" in status.stdout, status
    finally:
        assert cli("claude-session", "delete", "parent", "--yes").code == 0


def test_the_state_directory_however_spelt_is_the_same(
    cli: Cli, state: Path, tmp_path: Path
) -> None:
    """Through a symlink (a symlinked home): the .env's writer is this state directory."""
    alias = tmp_path / "state-link"
    alias.symlink_to(state)
    work = tmp_path / "spelt"
    work.mkdir()
    assert cli("claude-session", "start", "spelt", cwd=work).code == 0
    try:
        status = cli("claude-db", "status", cwd=work, env={"CLAUDE_DB_STATE_DIR": str(alias)})
        assert status.code == 0 and "(session spelt)" in status.stdout, status
    finally:
        assert cli("claude-session", "delete", "spelt", "--yes").code == 0


def test_a_copied_directorys_env_destroys_nothing_of_the_original(
    cli: Cli, tmp_path: Path
) -> None:
    original, copy = tmp_path / "proj", tmp_path / "proj-copy"
    original.mkdir()
    assert cli("claude-session", "start", "copied", cwd=original).code == 0
    try:
        assert cli("claude-db", "query", "create table mine (x int)", cwd=original).code == 0
        shutil.copytree(original, copy, symlinks=True)
        for command in (("claude-session", "delete", "--yes"), ("claude-db", "reset", "--yes")):
            refused = cli(*command, cwd=copy)
            assert_one_line_error(refused, USAGE)
            assert f"the session of {original}" in refused.stderr, refused
        status = cli("claude-db", "status", cwd=copy)  # its address is the session's: it reads
        assert status.code == 0 and "(session copied)" in status.stdout, status
        assert _tables(cli, "copied") == ["mine"]
        assert read_env(original)["CLAUDE_SESSION"] == "copied"
    finally:
        assert cli("claude-session", "delete", "copied", "--yes").code == 0


def test_a_moved_directorys_env_never_reaches_the_new_session_of_its_name(
    cli: Cli, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert cli("claude-session", "start", "reused", cwd=a).code == 0
    a.rename(tmp_path / "a-moved")
    moved = cli("claude-db", "reset", "--yes", cwd=tmp_path / "a-moved")  # moved: still its own
    assert moved.code == 0 and "session reused" in moved.stderr, moved
    assert cli("claude-session", "delete", "reused", "--yes").code == 0
    assert cli("claude-session", "start", "reused", cwd=b).code == 0
    try:
        assert cli("claude-db", "query", "create table b_data (x int)", cwd=b).code == 0
        for command in (("claude-db", "reset", "--yes"), ("claude-db", "query", "select 1"),
                        ("claude-session", "stop")):
            refused = cli(*command, cwd=tmp_path / "a-moved")
            assert_one_line_error(refused, USAGE)
            assert "at another address" in refused.stderr, refused
        assert _tables(cli, "reused") == ["b_data"]
    finally:
        assert cli("claude-session", "delete", "reused", "--yes").code == 0


def test_an_env_another_state_directory_wrote_never_leads_to_this_ones_session(
    cli: Cli, tmp_path: Path, state_root: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    other = {"CLAUDE_DB_STATE_DIR": str(fresh_state(tmp_path / "s2", state_root))}
    assert cli("claude-session", "start", "twice", cwd=one).code == 0
    assert cli("claude-session", "start", "twice", cwd=two, env=other).code == 0
    try:
        assert cli("claude-db", "query", "create table first (x int)", cwd=one).code == 0
        for command in (("claude-db", "reset", "--yes"), ("claude-db", "query", "select 1"),
                        ("claude-session", "delete", "--yes")):
            refused = cli(*command, cwd=two)  # this state directory's `twice` is one's
            assert_one_line_error(refused, USAGE)
            assert "was written by the state directory" in refused.stderr, refused
        assert _tables(cli, "twice") == ["first"]
        assert cli("claude-db", "status", cwd=two, env=other).code == 0  # its own: fine
    finally:
        assert cli("claude-session", "delete", "twice", "--yes").code == 0
        assert cli("claude-session", "delete", "twice", "--yes", env=other).code == 0


def test_start_in_a_moved_directory_takes_its_session_along(cli: Cli, tmp_path: Path) -> None:
    """mv (or git worktree move) and the session's address changed since: every command
    there refused, and start said the directory was another session's (review)."""
    (tmp_path / "before").mkdir()
    assert cli("claude-session", "start", "mover", cwd=tmp_path / "before").code == 0
    try:
        assert cli("claude-db", "query", "create table kept (x int)", cwd=tmp_path / "before"
                   ).code == 0
        moved = tmp_path / "after"
        (tmp_path / "before").rename(moved)
        started = cli("claude-session", "start", cwd=moved)
        assert started.code == 0 and "session mover runs" in started.stdout, started
        assert f"moved here from {tmp_path / 'before'}" in started.stderr, started
        listed = json.loads(cli("claude-session", "list", "--json").stdout)
        assert [s["workdir"] for s in listed if s["name"] == "mover"] == [str(moved)]
        assert _tables(cli, "mover") == ["kept"]
        assert cli("claude-db", "reset", "--yes", cwd=moved).code == 0  # its own again
    finally:
        assert cli("claude-session", "delete", "mover", "--yes").code == 0


def test_start_in_a_copied_directory_makes_the_copy_a_session_of_its_own(
    cli: Cli, tmp_path: Path
) -> None:
    original, copy = tmp_path / "orig", tmp_path / "copy"
    original.mkdir()
    assert cli("claude-session", "start", "first", cwd=original).code == 0
    try:
        shutil.copytree(original, copy, symlinks=True)
        started = cli("claude-session", "start", "second", cwd=copy)
        assert started.code == 0, started
        assert f"the session of {original} (a copy?); replacing" in started.stderr, started
        assert read_env(copy)["CLAUDE_SESSION"] == "second"
        assert read_env(original)["CLAUDE_SESSION"] == "first"
        assert cli("claude-db", "reset", "--yes", cwd=copy).code == 0  # its own now
    finally:
        cli("claude-session", "delete", "second", "--yes")
        assert cli("claude-session", "delete", "first", "--yes").code == 0
