"""The work directory's ``.env``: the user's lines kept and put back, never written through
a symlink, values every reader reads alike, and never committed (issues 12.5, 12.16,
13.4, 13.7). Real CLI runs, real git, real ``sh``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.testing import CONTRACT_PASSWORD, Cli, assert_one_line_error


def sh_values(workdir: Path, keys: list[str]) -> dict[str, str]:
    """What the README's ``set -a; . ./.env; set +a`` gives a POSIX shell."""
    script = "set -a; . ./.env; set +a; " + "; ".join(
        f"printf '%s\\0' \"${key}\"" for key in keys)
    done = subprocess.run(["sh", "-c", script], cwd=workdir, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"]}, check=True)
    return dict(zip(keys, done.stdout.split("\0")[:-1], strict=True))


def env_file_values(workdir: Path) -> dict[str, str]:
    """``docker run --env-file``'s reading: each ``KEY=value`` line raw, no quote removal."""
    values = {}
    for line in (workdir / ".env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_the_users_own_values_are_kept_and_put_back(cli: Cli, workdir: Path) -> None:
    mine = ("# my settings\nexport DATABASE_URL='postgresql://me@prod.example/shop' # mine\n"
            "PGHOST=prod.example\nOTHER=1\n")
    (workdir / ".env").write_text(mine)
    started = cli("claude-session", "start", "keeper")
    assert started.code == 0, started
    assert "your DATABASE_URL, PGHOST in .env are kept as a comment" in started.stderr, started
    ours = read_env(workdir)
    assert ours["DATABASE_URL"].startswith("postgresql://postgres:") and ours["OTHER"] == "1"
    assert ours["PGHOST"] == "127.0.0.1"
    assert sh_values(workdir, ["DATABASE_URL", "PGHOST", "OTHER"]) == {
        k: ours[k] for k in ("DATABASE_URL", "PGHOST", "OTHER")}
    deleted = cli("claude-session", "delete", "keeper", "--yes")
    assert deleted.code == 0, deleted
    assert (workdir / ".env").read_text() == mine


def test_values_are_quoted_only_when_they_need_it(cli: Cli, workdir: Path) -> None:
    assert cli("claude-session", "start", "plainvalues").code == 0
    try:
        dotenv = read_env(workdir)
        keys = list(dotenv)
        # URL, port, password (token_urlsafe), names: bare, so all three readers agree
        assert env_file_values(workdir) == dotenv
        assert sh_values(workdir, keys) == dotenv
        assert "'" not in (workdir / ".env").read_text()
        listed = cli("claude-session", "env", "plainvalues", "-f", "env")
        assert listed.stdout.splitlines() == [f"{k}={v}" for k, v in dotenv.items()], listed
    finally:
        assert cli("claude-session", "delete", "plainvalues", "--yes").code == 0


def test_a_value_that_needs_quotes_reads_alike_in_dotenv_and_sh(
    cli: Cli, workdir: Path
) -> None:
    started = cli("claude-session", "start", "quoted",
                  env={"CLAUDE_DB_PASSWORD": CONTRACT_PASSWORD})
    assert started.code == 0, started
    try:
        dotenv = read_env(workdir)
        assert dotenv["DB_PASSWORD"] == CONTRACT_PASSWORD
        assert sh_values(workdir, list(dotenv)) == dotenv
        assert f"DB_PASSWORD='{CONTRACT_PASSWORD}'" in (workdir / ".env").read_text()
        assert "DATABASE_URL='" not in (workdir / ".env").read_text()  # percent-encoded: bare
    finally:
        assert cli("claude-session", "delete", "quoted", "--yes").code == 0


@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_a_symlinked_env_is_refused_and_its_target_untouched(
    cli: Cli, state: Path, workdir: Path, tmp_path: Path, dangling: bool
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "passwd"
    if not dangling:
        target.write_text("root:x:0:0:root:/root:/bin/bash\n")
        os.chmod(target, 0o644)
    (workdir / ".env").symlink_to(target)
    started = cli("claude-session", "start", "linked")
    assert_one_line_error(started, ExitCode.USAGE)
    assert "is a symlink" in started.stderr and str(target) in started.stderr, started
    if dangling:
        assert not target.exists()
    else:
        assert target.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
        assert target.stat().st_mode & 0o777 == 0o644
    assert (workdir / ".env").is_symlink()
    assert sorted(p.name for p in workdir.iterdir()) == [".env"]  # no copy of the target
    assert cli("claude-session", "list", "--json").stdout.strip() == "[]"


def test_an_env_that_is_a_directory_is_one_line_naming_it(cli: Cli, workdir: Path) -> None:
    """First-time user: it said "error: 3: Is a directory" (a file descriptor's number)."""
    (workdir / ".env").mkdir()
    started = cli("claude-session", "start", "envdir")
    assert_one_line_error(started, ExitCode.USAGE)
    assert f"{workdir / '.env'} is not a file" in started.stderr, started
    assert (workdir / ".env").is_dir() and not any((workdir / ".env").iterdir())
    assert cli("claude-session", "list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["app[1]", "a*b", "svc\\x", "x?y", "#hash", "!bang"])
def test_env_in_a_glob_named_directory_is_ignored_by_git(
    cli: Cli, tmp_path: Path, name: str
) -> None:
    repo = tmp_path / "repo"
    workdir = repo / name
    workdir.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    # a sibling the pattern must not catch: app1/.env is the user's business
    lookalike = repo / name.replace("[1]", "1").replace("*", "-").replace("?", "-")
    if lookalike != workdir:
        lookalike.mkdir()
        (lookalike / ".env").write_text("MINE=1\n")
    started = cli("claude-session", "start", "globbed", "--workdir", str(workdir))
    assert started.code == 0, started
    try:
        assert "added .env to" in started.stderr and "warning" not in started.stderr, started
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=workdir)
        assert ignored.returncode == 0
        porcelain = subprocess.run(["git", "status", "--porcelain", "-z", "-uall"], cwd=repo,
                                   capture_output=True, text=True, check=True).stdout
        untracked = {entry[3:] for entry in porcelain.split("\0") if entry}
        assert f"{name}/.env" not in untracked, untracked
        if lookalike != workdir:
            assert f"{lookalike.name}/.env" in untracked, untracked
    finally:
        assert cli("claude-session", "delete", "globbed", "--yes").code == 0


def test_an_env_made_a_symlink_later_is_never_written_through(
    cli: Cli, workdir: Path, tmp_path: Path
) -> None:
    assert cli("claude-session", "start", "relinked").code == 0
    target = tmp_path / "shared.env"
    target.write_text("SHARED=1\n")
    (workdir / ".env").unlink()
    (workdir / ".env").symlink_to(target)
    attached = cli("claude-session", "attach", "relinked", "--no-shell")
    assert attached.code == 0, attached  # the database runs all the same
    assert "is a symlink" in attached.stderr, attached
    deleted = cli("claude-session", "delete", "relinked", "--yes")
    assert deleted.code == 0, deleted
    assert target.read_text() == "SHARED=1\n" and (workdir / ".env").is_symlink()
