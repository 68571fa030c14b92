"""Files claude-db writes where another user may have been first: an export's dump, and a
repository's ``.git/info/exclude``. The test process is root, as an administrator's
claude-db would be; a real second user (made here, deleted at the end) plants the files.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_db.envfile import Owner, write_env
from claude_db.errors import ExitCode
from claude_db.testing import BIN, Cli, CliResult, assert_one_line_error

#: git refuses a repository of another user's; the tester's root trusts every one
TRUST_EVERY_REPOSITORY = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
                          "GIT_CONFIG_VALUE_0": "*"}


@pytest.fixture(scope="module")
def other() -> Iterator[str]:
    """An unprivileged second user of this module's own (a name no other run uses)."""
    if os.geteuid() != 0:
        pytest.skip("these tests make and impersonate a second user: run them as root")
    name = f"cdbfiles-{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    yield name
    subprocess.run(["userdel", "--remove", name], check=True, capture_output=True)


def as_user(user: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={"PATH": os.environ["PATH"], "HOME": home(user)})


def home(user: str) -> str:
    return pwd.getpwnam(user).pw_dir


def owner_and_mode(path: Path) -> tuple[str, int]:
    info = path.lstat()
    return pwd.getpwuid(info.st_uid).pw_name, info.st_mode & 0o7777


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory like /tmp: everyone may create files, the sticky bit keeps them theirs."""
    path = Path(tempfile.mkdtemp(prefix="cdb-files-", dir="/tmp"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def session(cli: Cli) -> Iterator[str]:
    name = f"files-{uuid.uuid4().hex[:8]}"
    started = cli("claude-session", "start", name)
    assert started.code == 0, started
    yield name
    cli("claude-session", "delete", name, "--yes")


def export(cli: Cli, destination: Path, umask: int) -> CliResult:
    return cli("sh", "-c", f'umask {umask:03o} && exec "$0" export "$1"',
               str(BIN / "claude-db"), str(destination))


# -- export ---------------------------------------------------------------------------------


def test_export_does_not_replace_a_file_another_user_planted_in_a_shared_directory(
    cli: Cli, session: str, other: str, shared: Path
) -> None:
    """The tester's attack: a 0666 file planted in /tmp became root's dump, still 0666,
    so the planter could add ``\\! command`` lines that ``import`` ran as root."""
    planted = shared / "dump.sql"
    assert as_user(other, f"umask 0 && echo x > {planted}").returncode == 0
    refused = export(cli, planted, 0o022)
    assert_one_line_error(refused, ExitCode.USAGE)
    assert f"{planted} belongs to {other}" in refused.stderr, refused
    assert planted.read_text() == "x\n" and owner_and_mode(planted) == (other, 0o666)
    assert os.listdir(shared) == ["dump.sql"]  # no temporary file left beside it


def test_an_export_is_never_a_file_another_user_may_write(
    cli: Cli, session: str, other: str, shared: Path, tmp_path: Path
) -> None:
    # a new dump: the umask's mode, but never group's or others' to write
    fresh = shared / "fresh.sql"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that names no process: as a killed export's temporary file has
    theirs = shared / f".fresh.sql.{dead.pid}.abc123.partial"
    assert as_user(other, f"echo planted > {theirs}").returncode == 0
    made = export(cli, fresh, 0)
    assert made.code == 0, made
    assert owner_and_mode(fresh) == ("root", 0o644)
    assert theirs.read_text() == "planted\n"  # another user's file: never ours to sweep
    # the other user's file in their own directory is replaced, its mode is not copied
    replaced = Path(home(other), "dump.sql")
    assert as_user(other, f"umask 0 && echo x > {replaced}").returncode == 0
    made = export(cli, replaced, 0o022)
    assert made.code == 0, made
    assert owner_and_mode(replaced) == ("root", 0o644)
    assert as_user(other, f"echo '\\! id' >> {replaced}").returncode != 0
    # a dump of our own keeps its mode (the user chose it)
    mine = tmp_path / "mine.sql"
    mine.write_text("old")
    os.chmod(mine, 0o660)
    made = export(cli, mine, 0o077)
    assert made.code == 0, made
    assert owner_and_mode(mine) == ("root", 0o660) and mine.read_text() != "old"


# -- .git/info/exclude -----------------------------------------------------------------------


@pytest.fixture
def repository(other: str) -> Iterator[Path]:
    """A git repository of the other user's, with a work directory inside it."""
    repo = Path(home(other), f"repo-{uuid.uuid4().hex[:8]}")
    made = as_user(other, f"git init -q {repo} && mkdir -p {repo}/tmp/atx")
    assert made.returncode == 0, made
    yield repo
    shutil.rmtree(repo)


@pytest.fixture
def trust_every_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TRUST_EVERY_REPOSITORY.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of root's that a line must never reach (root's .bashrc)."""
    path = tmp_path / "bashrc"
    path.write_text("# root's\n")
    return path


def test_start_as_root_does_not_append_to_the_file_a_users_exclude_links_to(
    cli: Cli, other: str, repository: Path, victim: Path
) -> None:
    """The tester's attack: ``.git/info/exclude`` a link to root's .bashrc, which gained
    the .env's path: a command root's next shell runs (a file the user can make)."""
    linked = as_user(other, f"ln -sf {victim} {repository}/.git/info/exclude")
    assert linked.returncode == 0, linked
    workdir = repository / "tmp" / "atx"
    name = f"files-{uuid.uuid4().hex[:8]}"
    started = cli("claude-session", "start", name, cwd=workdir, env=TRUST_EVERY_REPOSITORY)
    try:
        assert started.code == 0, started
        assert victim.read_text() == "# root's\n"
        warning = [line for line in started.stderr.splitlines() if "info/exclude" in line]
        assert warning == [
            f"warning: git does not ignore {workdir / '.env'}, and claude-db adds nothing to "
            f"info/exclude: {repository}/.git/info/exclude is a symlink; do not commit .env "
            "(it holds a password)"
        ], started
        assert (workdir / ".env").is_file()
    finally:
        cli("claude-session", "delete", name, "--yes", cwd=workdir)


def link_info(other: str, git: Path, victim: Path) -> str:
    """``.git/info`` a link to a directory of root's whose every file root's shell runs
    (``~/.bashrc.d``): ``exclude`` itself is no link there."""
    linked = as_user(other, f"rm -r {git}/info && ln -s {victim.parent} {git}/info")
    assert linked.returncode == 0, linked
    return f"{git}/info is a symlink"


def hard_link_exclude(other: str, git: Path, victim: Path) -> str:
    """``exclude`` a hard link to root's file, as the user could make one on a machine
    without fs.protected_hardlinks (made by root here: this one has it)."""
    (git / "info" / "exclude").unlink()
    os.link(victim, git / "info" / "exclude")
    return f"{git}/info/exclude has other hard links"


@pytest.mark.parametrize("plant", [link_info, hard_link_exclude])
def test_root_writes_no_exclude_a_user_could_point_elsewhere(
    plant: Callable[[str, Path, Path], str], other: str, repository: Path, victim: Path,
    trust_every_repository: None
) -> None:
    why = plant(other, repository / ".git", victim)
    before = {path: path.read_bytes() for path in victim.parent.iterdir()}
    workdir = repository / "tmp" / "atx"
    notes = write_env(workdir, {"DATABASE_URL": "postgresql://x"}, Owner("files", None))
    assert notes[-1] == (f"warning: git does not ignore {workdir / '.env'}, and claude-db adds "
                         f"nothing to info/exclude: {why}; do not commit .env (it holds a "
                         "password)"), notes
    assert {path: path.read_bytes() for path in victim.parent.iterdir()} == before


def test_root_in_a_users_repository_leaves_the_exclude_theirs(
    other: str, repository: Path, trust_every_repository: None
) -> None:
    info = repository / ".git" / "info"
    shutil.rmtree(info)
    workdir = repository / "tmp" / "atx"
    notes = write_env(workdir, {"DATABASE_URL": "postgresql://x"}, Owner("files", None))
    assert notes[-1] == f"added .env to {info / 'exclude'} so git ignores it", notes
    assert owner_and_mode(info)[0] == owner_and_mode(info / "exclude")[0] == other
    assert (info / "exclude").read_text() == "/tmp/atx/.env\n"
    # the user's own: appended to, still theirs
    write_env(repository / "tmp", {"DATABASE_URL": "postgresql://x"}, Owner("files", None))
    assert (info / "exclude").read_text() == "/tmp/atx/.env\n/tmp/.env\n"
    assert owner_and_mode(info / "exclude")[0] == other
