"""Review M1: claude-db's ssh wrapper runs the user's ssh, never itself, even when the
inherited PATH already leads with the wrapper's directory (a shell started by claude-db)."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest

from claude_db.runtimes.docker import client


def test_the_wrapper_runs_the_real_ssh_with_itself_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.which("ssh")
    assert real is not None, "the test needs an ssh client on PATH"
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    wrapper_dir = state / client.SSH_DIR
    wrapper_dir.mkdir(mode=0o700)
    (wrapper_dir / "ssh").write_text("#!/bin/sh\nexit 1\n")  # a previous command's wrapper
    (wrapper_dir / "ssh").chmod(0o700)
    monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_HOST", "ssh://nobody@remote.invalid")
    monkeypatch.setattr(client, "_path_before_ssh", None)
    client.share_ssh(state)
    exec_line = next(line for line in (wrapper_dir / "ssh").read_text().splitlines()
                     if line.startswith("exec "))
    control = Path(exec_line.split("ControlPath=")[1].split()[0]).parent
    if control != wrapper_dir:  # state too long for a socket path: ours in /tmp
        shutil.rmtree(control)
    target = Path(shlex.split(exec_line)[1])
    assert target.parent.resolve() != wrapper_dir.resolve(), exec_line
    assert target == Path(real) or target.samefile(real), exec_line
    assert client.user_path() is not None and str(wrapper_dir) not in client.user_path()
