"""The state directory's side of server-kept snapshots (MySQL's and MongoDB's histories):
what the server gives is never trusted with this machine's files."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_db.errors import ClaudeDbError
from claude_db.kept_snapshots import CHUNK, KeptSnapshots, chunks, write_fetched
from claude_db.snapshots import META

KEPT = KeptSnapshots("engine.json")


def test_a_key_is_24_letters_or_digits_else_none(tmp_path: Path) -> None:
    assert KEPT.key(tmp_path) is None  # no record: kept here only
    for bad in ("../../etc", "a" * 23, "a" * 25, "a b" * 8, 7, None):
        (tmp_path / "engine.json").write_text(json.dumps({"key": bad}))
        assert KEPT.key(tmp_path) is None, bad
    (tmp_path / "engine.json").write_text("{not json")
    assert KEPT.key(tmp_path) is None
    for name, text in KEPT.files("ab" * 12).items():
        (tmp_path / name).write_text(text)
    assert KEPT.key(tmp_path) == "ab" * 12
    # another engine's record names nothing for this one
    assert KeptSnapshots("other.json").key(tmp_path) is None


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", ".hidden", "a/b", "", META,
                                  "engine.json", "x" * 202, 3])
def test_only_plain_names_the_server_gives(name: object) -> None:
    with pytest.raises(ClaudeDbError, match="not a file name claude-db writes"):
        KEPT.valid_names(["dump.sql", name])


def test_plain_names_pass() -> None:
    assert KEPT.valid_names(["dump.sql", "tables.json", "t1.ibd"]) == [
        "dump.sql", "tables.json", "t1.ibd"]


def test_only_records_hold_no_data(tmp_path: Path) -> None:
    (tmp_path / META).write_text("{}")
    (tmp_path / "engine.json").write_text("{}")
    (tmp_path / ".dump.sql.fetching").write_text("half")
    (tmp_path / "sub").mkdir()
    assert not KEPT.holds_data(tmp_path)
    (tmp_path / "dump.sql").write_text("data")
    assert KEPT.holds_data(tmp_path)


def test_the_files_sent_are_those_a_fetch_takes_back(tmp_path: Path) -> None:
    """One selection for every engine: a killed fetch's hidden leftover is never sent (a
    fetch would then refuse the whole snapshot), nor the records, nor local-only files."""
    for name in (META, "engine.json", ".dump.sql.fetching", "dump.sql", "t1.ibd", "t1.cfg"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    sent = [path.name for path in KEPT.data_files(tmp_path)]
    assert sent == ["dump.sql", "t1.cfg", "t1.ibd"]
    assert KEPT.valid_names(sent) == sent
    assert [path.name for path in KEPT.data_files(tmp_path, (".ibd", ".cfg"))] == ["dump.sql"]


def test_chunks_read_the_whole_file_in_pieces(tmp_path: Path) -> None:
    path = tmp_path / "dump"
    data = bytes(range(256)) * (CHUNK // 256 * 2 + 3)
    path.write_bytes(data)
    pieces = list(chunks(path))
    assert [len(p) for p in pieces] == [CHUNK, CHUNK, 3 * 256]
    assert b"".join(pieces) == data
    (tmp_path / "empty").write_bytes(b"")
    assert list(chunks(tmp_path / "empty")) == []


def test_a_fetched_file_never_follows_a_planted_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("precious")
    directory = tmp_path / "snapshot"
    directory.mkdir()
    (directory / ".dump.sql.fetching").symlink_to(outside)
    write_fetched(directory / "dump.sql", [b"one ", b"two"])
    assert outside.read_text() == "precious"
    assert (directory / "dump.sql").read_bytes() == b"one two"
    assert stat.S_IMODE((directory / "dump.sql").stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["dump.sql"]


def test_a_fetch_that_fails_leaves_no_file(tmp_path: Path) -> None:
    def broken() -> Iterator[bytes]:
        yield b"half"
        raise ConnectionError("the server went away")

    with pytest.raises(ConnectionError):
        write_fetched(tmp_path / "dump.sql", broken())
    # no half file, not even the hidden one (sizes would count it until the next fetch)
    assert list(tmp_path.iterdir()) == []
    write_fetched(tmp_path / "dump.sql", [b"whole"])
    assert (tmp_path / "dump.sql").read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.sql"]


def test_an_interrupted_fetch_leaves_no_file(tmp_path: Path) -> None:
    """Ctrl-C (or SIGTERM made KeyboardInterrupt) mid-way cleans up as an error does."""
    def interrupted() -> Iterator[bytes]:
        yield b"half"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_fetched(tmp_path / "dump.sql", interrupted())
    assert list(tmp_path.iterdir()) == []


def test_a_fetched_file_is_on_disk_before_it_takes_its_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the rename must not leave a cut dump that looks whole: the data is
    synced while the file still has its hidden name (the real fsync runs)."""
    synced: list[tuple[list[str], bytes]] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        real_fsync(descriptor)
        synced.append((sorted(p.name for p in tmp_path.iterdir()),
                       (tmp_path / ".dump.sql.fetching").read_bytes()))

    monkeypatch.setattr(os, "fsync", fsync)
    write_fetched(tmp_path / "dump.sql", [b"one ", b"two"])
    assert synced == [([".dump.sql.fetching"], b"one two")]
    assert (tmp_path / "dump.sql").read_bytes() == b"one two"


def test_a_fetched_file_replaces_a_link_planted_at_its_name(tmp_path: Path) -> None:
    """A dangling link at the final name (to a file that does not exist yet) is replaced,
    never written through: nothing appears outside, the file is a regular 0600 one."""
    outside = tmp_path / "outside"
    directory = tmp_path / "snapshot"
    directory.mkdir()
    (directory / "dump.sql").symlink_to(outside)
    write_fetched(directory / "dump.sql", [b"data"])
    assert not outside.exists() and not outside.is_symlink()
    fetched = (directory / "dump.sql").lstat()
    assert stat.S_ISREG(fetched.st_mode)
    assert stat.S_IMODE(fetched.st_mode) == 0o600
    assert (directory / "dump.sql").read_bytes() == b"data"
    assert sorted(p.name for p in directory.iterdir()) == ["dump.sql"]
