"""Worktree-native sessions: named after the worktree, idempotent, race-free when many
start at once, and reclaimed by gc once their worktree is removed.

Real git worktrees, real CLI processes started together (``subprocess.Popen``), real
servers (local) and containers (docker).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from claude_db.testing import BIN, Cli, CliResult
from claude_db.testing.docker import docker_cli_env
from claude_db.testing.safety import cli_env, session_json
from claude_db.worktrees import mount_point

PARALLEL = 20


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit, under a name no other test run uses (Docker
    names are global)."""
    path = tmp_path / f"app{uuid.uuid4().hex[:6]}"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
        "-m", "first")
    return path


def add_worktree(repo: Path, name: str) -> Path:
    path = repo.parent / "trees" / name
    git(repo, "worktree", "add", "-q", "-b", name.replace(" ", "-"), str(path))
    return path


def run(cwd: Path, env: dict[str, str], *argv: str) -> CliResult:
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return CliResult(list(argv), proc.returncode, proc.stdout, proc.stderr)


def dotenv_lines(workdir: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in (workdir / ".env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def start_all_at_once(trees: list[Path], env: dict[str, str], *options: str) -> list[CliResult]:
    procs = [subprocess.Popen([str(BIN / "claude-session"), "start", *options], cwd=tree,
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tree in trees]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        results.append(CliResult(["claude-session", "start", *options], proc.returncode, out, err))
    return results


def check_parallel_starts(state: Path, repo: Path, env: dict[str, str], *options: str) -> None:
    """20 starts in 20 worktrees at the same moment: 20 healthy databases, 20 distinct
    ports, 20 correct .env files, no key twice, no URL leading to another's database."""
    trees = [add_worktree(repo, f"wt{i:02d}") for i in range(PARALLEL)]
    results = start_all_at_once(trees, env, *options)
    assert all(r.code == 0 for r in results), [str(r) for r in results if r.code]
    assert not any("Traceback" in r.stderr for r in results)
    addresses = set()
    for tree in trees:
        pairs = dotenv_lines(tree)
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), (tree, Counter(keys).most_common(3))
        values = dict(pairs)
        name = values["CLAUDE_SESSION"]
        assert name == f"{repo.name}-{tree.name}"
        record = session_json(state, name)
        assert record["workdir"] == str(tree.resolve())  # the session of this worktree
        url = urlsplit(values["DATABASE_URL"])
        assert url.password == record["credentials"]["password"]
        recorded_port = record["runtime_state"].get("port") or record["runtime_state"].get(
            "host_port")
        assert url.port == recorded_port, (tree, url.port, recorded_port)
        addresses.add((url.hostname, url.port))
        with psycopg.connect(values["DATABASE_URL"], connect_timeout=30) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert len(addresses) == PARALLEL  # 20 distinct ports (all on 127.0.0.1)
    # the worktrees share one .git/info/exclude: .env is in it once, not once per start
    exclude = (repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert exclude.count("/.env") == 1, exclude
    listed = json.loads(run(repo, env, "claude-session", "list", "--json").stdout)
    mine = [s for s in listed if s["name"].startswith(repo.name)]
    assert sorted(s["status"] for s in mine) == ["running"] * PARALLEL
    # again, all at once: each finds its own session, says so, and .env stays right
    before = {tree: dotenv_lines(tree) for tree in trees}
    again = start_all_at_once(trees, env, *options)
    assert all(r.code == 0 and " runs " in r.stdout for r in again), [str(r) for r in again]
    assert {tree: dotenv_lines(tree) for tree in trees} == before


# 20 servers initialising at once on a shared 2-core machine: more than the default 60 s
SLOW_MACHINE = {"CLAUDE_DB_READY_TIMEOUT": "600"}


@pytest.mark.slow  # twenty servers at once: `./dev test --all` (CI) runs it
def test_twenty_worktrees_start_at_once_local(state: Path, repo: Path) -> None:
    check_parallel_starts(state, repo, {**cli_env(state), **SLOW_MACHINE})


@pytest.mark.slow  # twenty servers at once: `./dev test --all` (CI) runs it
def test_twenty_worktrees_start_at_once_docker(state: Path, repo: Path) -> None:
    env = {**docker_cli_env(state), **SLOW_MACHINE}
    try:
        check_parallel_starts(state, repo, env, "--publish")
    finally:
        cleanup_docker(state, env)


def cleanup_docker(state: Path, env: dict[str, str]) -> None:
    sessions = state / "sessions"
    for path in sorted(sessions.iterdir()) if sessions.exists() else []:
        if not path.name.startswith("."):
            run(state, env, "claude-session", "delete", path.name, "--yes")


def test_name_is_stable_and_idempotent(cli: Cli, state: Path, repo: Path) -> None:
    tree = add_worktree(repo, "Feature X")
    first = cli("claude-session", "start", cwd=tree)
    assert first.code == 0, first
    name = f"{repo.name}-feature-x"
    assert first.stdout.startswith(f"session {name} started"), first
    before = (tree / ".env").read_text()
    second = cli("claude-session", "start", cwd=tree)
    assert second.code == 0 and second.stdout.startswith(f"session {name} runs"), second
    assert (tree / ".env").read_text() == before
    # .env removed: written again, the same
    (tree / ".env").unlink()
    third = cli("claude-session", "start", cwd=tree)
    assert third.code == 0, third
    assert (tree / ".env").read_text() == before
    # the main checkout keeps its directory's name
    main = cli("claude-session", "start", cwd=repo)
    assert main.code == 0 and main.stdout.startswith(f"session {repo.name} started"), main


def test_a_worktree_started_by_name_keeps_that_name(cli: Cli, state: Path, repo: Path) -> None:
    tree = add_worktree(repo, "named")
    assert cli("claude-session", "start", "my-own-name", cwd=tree).code == 0
    again = cli("claude-session", "start", cwd=tree)
    assert again.code == 0 and again.stdout.startswith("session my-own-name runs"), again


def test_same_directory_name_in_another_place_gets_a_stable_suffix(
    cli: Cli, state: Path, repo: Path, tmp_path: Path
) -> None:
    one = add_worktree(repo, "api")
    other = tmp_path / "elsewhere" / "api"
    git(repo, "worktree", "add", "-q", "-b", "api2", str(other))
    assert cli("claude-session", "start", cwd=one).code == 0
    result = cli("claude-session", "start", cwd=other)
    assert result.code == 0, result
    name = result.stdout.split()[1]
    assert name.startswith(f"{repo.name}-api-") and name != f"{repo.name}-api", result
    again = cli("claude-session", "start", cwd=other)
    assert again.code == 0 and again.stdout.split()[1] == name, again
    # an explicit NAME another directory owns: one clear error, nothing changed
    taken = cli("claude-session", "start", f"{repo.name}-api", cwd=other)
    assert taken.code == 1 and taken.stderr.startswith("error: "), taken


def test_worktrees_of_one_directory_name_started_at_once_get_two_names(
    state: Path, repo: Path, tmp_path: Path
) -> None:
    """Both race for ``<repo>-api``: one gets it, the other its hashed name, every time."""
    trees = [tmp_path / place / "api" for place in ("left", "right")]
    for i, tree in enumerate(trees):
        git(repo, "worktree", "add", "-q", "-b", f"api{i}", str(tree))
    results = start_all_at_once(trees, cli_env(state))
    assert all(r.code == 0 for r in results), [str(r) for r in results]
    names = [dict(dotenv_lines(tree))["CLAUDE_SESSION"] for tree in trees]
    assert len(set(names)) == 2 and f"{repo.name}-api" in names, names
    for tree, name in zip(trees, names, strict=True):
        assert session_json(state, name)["workdir"] == str(tree.resolve())
    again = start_all_at_once(trees, cli_env(state))
    assert [r.stdout.split()[1] for r in again] == names, [str(r) for r in again]


def test_removed_worktree_is_reclaimed_not_a_live_one(
    cli: Cli, state: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = add_worktree(repo, "gone")
    removed_by_git = add_worktree(repo, "removed")
    live = add_worktree(repo, "live")
    moved = add_worktree(repo, "moved")
    for tree in (gone, removed_by_git, live, moved):
        assert cli("claude-session", "start", cwd=tree).code == 0
    names = {tree: f"{repo.name}-{tree.name}" for tree in (gone, removed_by_git, live, moved)}
    pid = session_json(state, names[gone])["runtime_state"]["pid"]
    shutil.rmtree(gone)
    git(repo, "worktree", "remove", "--force", str(removed_by_git))
    # moved, not removed (review: its live session was taken for a removed one's)
    git(repo, "worktree", "move", str(moved), str(moved.with_name("moved-here")))

    dry = cli("claude-session", "gc", "--dry-run", "--json", cwd=repo)
    listed = {o["what"] for o in json.loads(dry.stdout) if o["kind"] == "session"}
    assert listed == {names[gone], names[removed_by_git]}, dry
    assert (state / "sessions" / names[gone] / "session.json").exists()  # dry: nothing went

    # the cheap sweep of the next start (anywhere) reclaims them
    other = add_worktree(repo, "next")
    started = cli("claude-session", "start", cwd=other)
    assert started.code == 0, started
    for tree in (gone, removed_by_git):
        assert not (state / "sessions" / names[tree]).exists()
        # the start says which session it reclaimed and where its data went
        assert f"removed session {names[tree]}: its worktree {tree} was removed; data kept" \
            in started.stderr + started.stdout, started
    assert not Path(f"/proc/{pid}").exists() or b"postgres" not in Path(
        f"/proc/{pid}/cmdline").read_bytes()
    kept = sorted(p.name for p in (state / "kept").iterdir())
    assert any(p.startswith(names[gone]) and not p.endswith(".json") for p in kept), kept
    assert any(p.endswith(".reclaimed.json") for p in kept), kept
    # the live one is untouched
    assert cli("claude-db", "status", cwd=live).code == 0

    # after the grace period, gc removes the kept data too (only that)
    monkeypatch.setenv("CLAUDE_DB_WORKTREE_GRACE_DAYS", "0")
    swept = cli("claude-session", "gc", "--json", cwd=repo)
    assert swept.code == 0, swept
    kinds = Counter(o["kind"] for o in json.loads(swept.stdout))
    assert kinds == {"kept data": 2}, swept
    assert [p for p in (state / "kept").iterdir()] == []
    assert cli("claude-db", "status", cwd=live).code == 0


def test_start_of_an_existing_session_sweeps_removed_worktrees_too(
    cli: Cli, state: Path, repo: Path
) -> None:
    """Every start sweeps (README), not only one that makes a session (a first-time user:
    ``start`` again in the main checkout said "runs" and left the removed worktree's
    session running)."""
    assert cli("claude-session", "start", cwd=repo).code == 0
    gone = add_worktree(repo, "wt2")
    assert cli("claude-session", "start", cwd=gone).code == 0
    name = f"{repo.name}-wt2"
    shutil.rmtree(gone)

    again = cli("claude-session", "start", cwd=repo)
    assert again.code == 0, again
    assert f"session {repo.name} runs" in again.stdout, again
    assert f"removed session {name}: its worktree {gone} was removed; data kept" \
        in again.stderr + again.stdout, again
    assert not (state / "sessions" / name).exists()
    # the session being started is never taken: it runs, and still answers
    assert (state / "sessions" / repo.name / "session.json").exists()
    assert cli("claude-db", "status", cwd=repo).code == 0
    listed = {s["name"] for s in json.loads(
        cli("claude-session", "list", "--json", cwd=repo).stdout)}
    assert name not in listed and repo.name in listed


def test_the_sweep_of_a_start_never_takes_the_session_it_starts(
    cli: Cli, state: Path, repo: Path
) -> None:
    """A start killed before it finished leaves its session ``unfinished``, which a sweep
    removes; the sweep of the next start of that very session must leave it to that start
    (without that session's lock held, the sweep removed it; the start then failed)."""
    killed = cli("claude-session", "start", cwd=repo,
                 env={"CLAUDE_DB_TEST_KILL_AT": "dotenv-written"})
    assert killed.code == -9, killed
    [name] = [p.name for p in (state / "sessions").iterdir() if not p.name.startswith(".")]

    again = cli("claude-session", "start", cwd=repo)
    assert again.code == 0, again
    assert f"session {name} runs" in again.stdout, again
    assert "removed" not in again.stderr + again.stdout, again
    assert (state / "sessions" / name / "session.json").exists()
    assert cli("claude-db", "status", cwd=repo).code == 0
    # the start that made it run finished it: no later sweep or gc takes it for a killed
    # start (before: listed unfinished, and removed by the next gc with its data)
    listed = json.loads(cli("claude-session", "list", "--json", cwd=repo).stdout)
    assert [s["status"] for s in listed if s["name"] == name] == ["running"], listed
    swept = cli("claude-session", "gc", cwd=repo)
    assert swept.code == 0 and name not in swept.stdout + swept.stderr, swept
    assert cli("claude-db", "status", cwd=repo).code == 0


def test_a_reclaim_killed_midway_is_finished_by_the_next_sweep(
    cli: Cli, state: Path, repo: Path
) -> None:
    """SIGKILL after the data was moved aside, before the session record went (review: every
    later gc then failed on the moved data directory, and the kept data had no record)."""
    gone = add_worktree(repo, "killed")
    assert cli("claude-session", "start", cwd=gone).code == 0
    name = f"{repo.name}-{gone.name}"
    shutil.rmtree(gone)
    killed = cli("claude-session", "gc", cwd=repo, env={"CLAUDE_DB_TEST_KILL_AT": "reclaim-kept"})
    assert killed.code == -9, killed
    records = sorted((state / "kept").glob(f"{name}-*.reclaimed.json"))
    assert len(records) == 1, records  # the kept data is on record already
    again = cli("claude-session", "gc", "--json", cwd=repo)
    assert again.code == 0, again
    assert not (state / "sessions" / name).exists()
    assert sorted((state / "kept").glob(f"{name}-*.reclaimed.json")) == records
    kept = json.loads(records[0].read_text())
    assert Path(kept["kept"]["path"]).is_dir(), kept


def test_unmounted_looking_directory_is_not_reclaimed(
    cli: Cli, state: Path, repo: Path
) -> None:
    """A directory gone from a filesystem that is not the one it was made on (what an
    unmounted disk looks like) is left alone."""
    tree = add_worktree(repo, "away")
    assert cli("claude-session", "start", cwd=tree).code == 0
    name = f"{repo.name}-away"
    record_path = state / "sessions" / name / "session.json"
    record = json.loads(record_path.read_text())
    record["worktree"]["device"] = record["worktree"]["device"] + 1  # as if on another disk
    record_path.write_text(json.dumps(record))
    os.chmod(record_path, 0o600)
    shutil.rmtree(tree)
    dry = cli("claude-session", "gc", "--dry-run", "--json", cwd=repo)
    assert [o for o in json.loads(dry.stdout) if o["kind"] == "session"] == [], dry


def test_a_port_is_handed_out_once(state: Path) -> None:
    """What concurrent starts ask for: bind(0) alone names the same free port again
    within a few hundred calls (1,000 draws from ~28,000 ports repeat one almost surely);
    claimed ports never repeat."""
    from claude_db.ports import claim_port

    ports = [claim_port(state) for _ in range(1000)]
    assert len(set(ports)) == len(ports)


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``(source, mount point)``: a real bind mount (same device on both sides), unmounted
    at the end if the test did not."""
    source, mount = tmp_path / "bind-source", tmp_path / "bind-mount"
    source.mkdir()
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(mount)], check=True)
    yield source, mount
    if mount_point(mount) == str(mount):  # os.path.ismount misses a bind mount: same device
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_worktree_under_an_unmounted_bind_mount_is_not_reclaimed(
    cli: Cli, state: Path, repo: Path, bind_mount: tuple[Path, Path]
) -> None:
    """Adversarial finding 3: unmount a bind mount and its worktrees vanish while the
    directory below it, on the same device, shows; the sweep took them for removed ones and
    stopped their live sessions. A worktree of a repository beside the mount (git calls it
    prunable then) and one of a repository inside it."""
    source, mount = bind_mount
    inner_repo = mount / "inner"
    inner_repo.mkdir()
    git(inner_repo, "init", "-q", "-b", "main")
    git(inner_repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
        "--allow-empty", "-m", "first")
    trees = {repo: mount / "outer-wt", inner_repo: mount / "inner-wt"}
    for owner_repo, tree in trees.items():
        git(owner_repo, "worktree", "add", "-q", "-b", tree.name, str(tree))
        assert cli("claude-session", "start", cwd=tree).code == 0
        assert cli("claude-db", "query", "create table work(x int)", cwd=tree).code == 0
    names = [f"{repo.name}-outer-wt", "inner-inner-wt"]
    subprocess.run(["umount", str(mount)], check=True)
    assert not any(tree.exists() for tree in trees.values())

    dry = cli("claude-session", "gc", "--dry-run", "--json", cwd=repo)
    assert [o for o in json.loads(dry.stdout) if o["kind"] == "session"] == [], dry
    elsewhere = add_worktree(repo, "sweeper")
    started = cli("claude-session", "start", cwd=elsewhere)
    assert started.code == 0, started
    assert "removed session" not in started.stdout + started.stderr, started
    for name in names:
        assert (state / "sessions" / name / "session.json").exists()

    # mounted again, the sessions are there as they were, data and all
    subprocess.run(["mount", "--bind", str(source), str(mount)], check=True)
    for tree in trees.values():
        assert cli("claude-db", "query", "select count(*) from work", cwd=tree).code == 0


@pytest.mark.parametrize("named", [True, False], ids=["named", "hashed-worktree"])
def test_start_after_env_is_lost_takes_the_directorys_session(
    cli: Cli, state: Path, repo: Path, named: bool
) -> None:
    """Adversarial finding 9: ``git clean -fdx`` takes ``.env`` with it, and a ``start``
    without a name made a second, empty session for the same directory (README: "Run
    again, start finds the session"). Named: a session started by a name of the user's.
    Hashed: a worktree whose session got the hashed name (another directory had its
    readable name then) since that other session is gone: its readable name is free."""
    first, tree = add_worktree(repo, "api"), repo.parent / "elsewhere" / "api"
    git(repo, "worktree", "add", "-q", "-b", "api2", str(tree))
    if named:
        assert cli("claude-session", "start", "my-own", cwd=tree).code == 0
        name = "my-own"
    else:
        assert cli("claude-session", "start", cwd=first).code == 0
        started = cli("claude-session", "start", cwd=tree)
        assert started.code == 0, started
        name = started.stdout.split()[1]
        assert name != f"{repo.name}-api", started
        assert cli("claude-session", "delete", f"{repo.name}-api", "--yes", cwd=repo).code == 0
    assert cli("claude-db", "query", "create table mine(x int)", cwd=tree).code == 0
    git(tree, "clean", "-fdxq")
    assert not (tree / ".env").exists()

    again = cli("claude-session", "start", cwd=tree)
    assert again.code == 0, again
    assert f"session {name} runs" in again.stdout, again
    assert f"session {name} has this work directory" in again.stderr, again
    assert dict(dotenv_lines(tree))["CLAUDE_SESSION"] == name
    assert cli("claude-db", "query", "select count(*) from mine", cwd=tree).code == 0
    listed = json.loads(cli("claude-session", "list", "--json", cwd=repo).stdout)
    assert [s["name"] for s in listed if Path(s["workdir"]) == tree.resolve()] == [name]
    # Claude Code's SessionStart hook starts the same way
    git(tree, "clean", "-fdxq")
    hook = cli("claude-session", "hooks", "run", "session-start", cwd=tree,
               input=json.dumps({"cwd": str(tree)}))
    assert hook.code == 0 and f"session {name} (" in hook.stdout, hook
    assert dict(dotenv_lines(tree))["CLAUDE_SESSION"] == name


def test_start_refuses_to_guess_between_sessions_of_one_directory(
    cli: Cli, state: Path, repo: Path
) -> None:
    """Two sessions with one work directory (the second started by name after ``.env``
    was lost) and no ``.env``: a start without a name asks for one, and makes nothing."""
    tree = add_worktree(repo, "two")
    assert cli("claude-session", "start", "one-a", cwd=tree).code == 0
    (tree / ".env").unlink()
    assert cli("claude-session", "start", "one-b", cwd=tree).code == 0
    (tree / ".env").unlink()
    refused = cli("claude-session", "start", cwd=tree)
    assert refused.code == 1, refused
    assert refused.stderr.startswith("error: sessions one-a, one-b all have"), refused
    assert len(refused.stderr.splitlines()) == 1 and not (tree / ".env").exists()
    assert sorted(p.name for p in (state / "sessions").iterdir()
                  if not p.name.startswith(".")) == ["one-a", "one-b"]


def test_a_worktree_moved_by_hand_is_kept_once_git_repairs_it(
    cli: Cli, state: Path, repo: Path
) -> None:
    """README: a worktree moved with ``mv`` is, to git, a removed one (``prunable``), and
    would be reclaimed as one; ``git worktree repair`` in its new place makes git know it
    there again, and its session stays."""
    tree = add_worktree(repo, "by-hand")
    assert cli("claude-session", "start", cwd=tree).code == 0
    name = f"{repo.name}-by-hand"
    moved = tree.with_name("by-hand-moved")
    tree.rename(moved)
    assert "prunable" in git(repo, "worktree", "list", "--porcelain")
    dry = cli("claude-session", "gc", "--dry-run", "--json", cwd=repo)
    assert [o["what"] for o in json.loads(dry.stdout) if o["kind"] == "session"] == [name], dry

    git(moved, "worktree", "repair")
    dry = cli("claude-session", "gc", "--dry-run", "--json", cwd=repo)
    assert [o for o in json.loads(dry.stdout) if o["kind"] == "session"] == [], dry
    swept = cli("claude-session", "gc", cwd=repo)
    assert swept.code == 0 and name not in swept.stdout + swept.stderr, swept
    assert (state / "sessions" / name / "session.json").exists()
