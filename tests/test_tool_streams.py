"""``Tools.stream`` and ``Tools.feed``: the one way engines run a dump tool out and a
restore tool in (real processes through the host's tools)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_db.engine import Credentials, Endpoint, last_line
from claude_db.errors import ClaudeDbError
from claude_db.processes import HostTools, is_running

TOOLS = HostTools(Endpoint("127.0.0.1", 1, Credentials("u", "p", "db")))


def failed(stderr: str) -> ClaudeDbError:
    return ClaudeDbError(f"tool failed: {last_line(stderr)}")


def test_stream_yields_the_output_then_raises_the_tools_error() -> None:
    chunks = TOOLS.stream(["sh", "-c", "printf 'a b'; echo first >&2; echo last >&2; exit 3"],
                          env={}, failed=failed)
    assert next(chunks) == b"a b"
    with pytest.raises(ClaudeDbError, match=r"^tool failed: last$"):
        next(chunks)


def test_stream_kills_the_tool_when_the_reader_stops(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    chunks = TOOLS.stream(["sh", "-c", f"echo $$ > {pid_file}; exec yes"], env={},
                          failed=failed)
    assert next(chunks).startswith(b"y\n")
    pid = int(pid_file.read_text())
    chunks.close()  # an interrupt, a full disk: the reader is gone
    assert not is_running(pid)


def test_feed_gives_every_chunk_and_the_exit_status(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stderr = TOOLS.feed(["sh", "-c", f"cat > {out}"], [b"one ", b"two"], env={})
    assert (code, stderr, out.read_bytes()) == (0, "", b"one two")


def test_feed_of_a_tool_that_stops_at_an_error_returns_its_message() -> None:
    many = (b"x" * 65536 for _ in range(200))  # more than any pipe holds
    code, stderr = TOOLS.feed(["sh", "-c", "head -c 1 >/dev/null; echo 'bad line' >&2; exit 2"],
                              many, env={})
    assert (code, last_line(stderr)) == (2, "bad line")


def test_an_interrupted_feed_kills_the_tool_and_raises(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def interrupted() -> Iterator[bytes]:
        yield b"begun\n"
        while not pid_file.exists() or not pid_file.read_text().strip():
            yield b""
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TOOLS.feed(["sh", "-c", f"echo $$ > {pid_file}; exec cat > /dev/null"], interrupted(),
                   env={})
    pid = int(pid_file.read_text())
    assert not is_running(pid) and pid != os.getpid()
