"""``claude-session hooks``: installed beside the user's own hooks and settings, removed
without a trace, and each hook command fed the JSON Claude Code sends, as Claude Code runs
it (``sh -c`` of the command in ``.claude/settings.json``, the payload on stdin)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from claude_db.testing import Cli, assert_one_line_error
from claude_db.testing.safety import session_json

USER_SETTINGS = {
    "permissions": {"allow": ["Bash(npm test)"]},
    "hooks": {
        "Stop": [{"hooks": [{"type": "command", "command": "echo user-stop"}]}],
        "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "true"}]}],
    },
}
USER_HOOK = '#!/bin/sh\necho "user hook $*" >> "$(git rev-parse --git-common-dir)/user-hook.log"\n'


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with the user's own Claude Code settings and post-checkout hook."""
    path = tmp_path / f"proj{uuid.uuid4().hex[:6]}"
    path.mkdir()
    assert git(path, "init", "-q", "-b", "main").returncode == 0
    assert git(path, "commit", "-q", "--allow-empty", "-m", "first").returncode == 0
    (path / ".claude").mkdir()
    (path / ".claude" / "settings.json").write_text(json.dumps(USER_SETTINGS, indent=2) + "\n")
    hook = path / ".git" / "hooks" / "post-checkout"
    hook.write_text(USER_HOOK)
    hook.chmod(0o755)
    return path


def snapshot(repo: Path) -> dict[str, bytes]:
    """Every file of the project's .claude and .git/hooks directories."""
    found = {}
    for top in (repo / ".claude", repo / ".git" / "hooks"):
        for path in sorted(top.rglob("*")) if top.exists() else []:
            if path.is_file():
                found[str(path.relative_to(repo))] = path.read_bytes()
    return found


def our_command(repo: Path, event: str) -> str:
    settings = json.loads((repo / ".claude" / "settings.json").read_text())
    commands = [h["command"] for group in settings["hooks"][event] for h in group["hooks"]
                if "claude-session" in h["command"]]
    assert len(commands) == 1, settings
    return commands[0]


def run_as_claude_code(repo: Path, event: str, payload: dict[str, object] | str,
                       cwd: Path | None = None, env: dict[str, str] | None = None,
                       ) -> subprocess.CompletedProcess[str]:
    """Run the installed command for ``event`` as Claude Code does."""
    cwd = cwd or repo
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return subprocess.run(["sh", "-c", our_command(repo, event)], cwd=cwd, input=body,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CLAUDE_PROJECT_DIR": str(repo), **(env or {})})


def payload(event: str, cwd: Path, **extra: object) -> dict[str, object]:
    return {"session_id": "4f0c-test", "transcript_path": str(cwd / "t.jsonl"),
            "cwd": str(cwd), "permission_mode": "default", "hook_event_name": event, **extra}


def one_line(proc: subprocess.CompletedProcess[str], stream: str = "stdout") -> str:
    assert proc.returncode == 0, proc
    assert "Traceback" not in proc.stdout + proc.stderr, proc
    lines = [line for line in getattr(proc, stream).splitlines() if line.strip()]
    assert len(lines) == 1, proc
    return lines[0]


def test_print_install_uninstall_keep_the_users_content(cli: Cli, repo: Path) -> None:
    before = snapshot(repo)
    shown = cli("claude-session", "hooks", "install", "--print", cwd=repo)
    assert shown.code == 0, shown
    assert "hooks run session-start" in shown.stdout and "post-checkout" in shown.stdout
    assert snapshot(repo) == before  # --print wrote nothing

    installed = cli("claude-session", "hooks", "install", cwd=repo)
    assert installed.code == 0, installed
    settings = json.loads((repo / ".claude" / "settings.json").read_text())
    assert settings["permissions"] == USER_SETTINGS["permissions"]
    assert settings["hooks"]["PreToolUse"] == USER_SETTINGS["hooks"]["PreToolUse"]
    assert settings["hooks"]["Stop"][0] == USER_SETTINGS["hooks"]["Stop"][0]  # theirs first
    for event in ("SessionStart", "Stop", "WorktreeRemove"):
        assert our_command(repo, event).endswith("hooks run " + {
            "SessionStart": "session-start", "Stop": "stop",
            "WorktreeRemove": "worktree-remove"}[event])
    hooks = repo / ".git" / "hooks"
    assert (hooks / "post-checkout.claude-db-chained").read_text() == USER_HOOK  # chained
    assert "claude-db" in (hooks / "post-checkout").read_text()

    installed_state = snapshot(repo)
    again = cli("claude-session", "hooks", "install", cwd=repo)
    assert again.code == 0 and "installed already" in again.stderr, again
    assert snapshot(repo) == installed_state  # nothing twice

    removed = cli("claude-session", "hooks", "uninstall", cwd=repo)
    assert removed.code == 0, removed
    assert snapshot(repo) == before  # exactly the user's bytes
    assert cli("claude-session", "hooks", "uninstall", cwd=repo).code == 0  # harmless again
    assert snapshot(repo) == before


def test_without_user_files_uninstall_leaves_nothing(cli: Cli, repo: Path) -> None:
    (repo / ".claude" / "settings.json").unlink()
    (repo / ".claude").rmdir()
    (repo / ".git" / "hooks" / "post-checkout").unlink()
    assert cli("claude-session", "hooks", "install", cwd=repo).code == 0
    assert (repo / ".claude" / "settings.json").exists()
    assert cli("claude-session", "hooks", "uninstall", cwd=repo).code == 0
    assert not (repo / ".claude").exists()
    assert not (repo / ".git" / "hooks" / "post-checkout").exists()


def test_settings_that_are_not_json_are_refused_and_nothing_changes(
    cli: Cli, repo: Path
) -> None:
    (repo / ".claude" / "settings.json").write_text('{"hooks": {"Stop": [}')
    before = snapshot(repo)
    result = cli("claude-session", "hooks", "install", cwd=repo)
    assert_one_line_error(result, 2)
    assert snapshot(repo) == before  # the git hook was not moved either
    (repo / ".claude" / "settings.json").write_text('{"hooks": {"Stop": "echo"}}')
    assert_one_line_error(cli("claude-session", "hooks", "install", cwd=repo), 2)
    shared = repo / "shared-settings.json"
    shared.write_text("{}\n")
    (repo / ".claude" / "settings.json").unlink()
    (repo / ".claude" / "settings.json").symlink_to(shared)
    assert_one_line_error(cli("claude-session", "hooks", "install", cwd=repo), 2)
    assert shared.read_text() == "{}\n" and (repo / ".claude" / "settings.json").is_symlink()
    outside = repo.parent / "not-a-repo"
    outside.mkdir()
    assert_one_line_error(cli("claude-session", "hooks", "install", cwd=outside), 2)
    assert not (outside / ".claude").exists()


def test_claude_code_payloads(cli: Cli, state: Path, repo: Path, tmp_path: Path) -> None:
    assert cli("claude-session", "hooks", "install", "--no-git", cwd=repo).code == 0
    tree = repo.parent / "tree-a"
    assert git(repo, "worktree", "add", "-q", "-b", "tree-a", str(tree)).returncode == 0
    name = f"{repo.name}-tree-a"
    env_file = tmp_path / "claude-env"

    # SessionStart (a new session, from a subdirectory): the database starts, one line of
    # context for the agent, the variables exported for its shell commands
    (tree / "src").mkdir()
    started = run_as_claude_code(repo, "SessionStart",
                                 payload("SessionStart", tree / "src", source="startup"),
                                 cwd=tree / "src", env={"CLAUDE_ENV_FILE": str(env_file)})
    line = one_line(started)
    assert f"session {name}" in line and "claude-db undo" in line, line
    password = session_json(state, name)["credentials"]["password"]
    assert password not in line  # the URL is shown without its password
    assert (tree / ".env").exists() and cli("claude-db", "status", cwd=tree).code == 0
    assert f"export CLAUDE_SESSION={name}" in env_file.read_text()
    # resume / compact: the same session, made sure it runs
    stopped = cli("claude-session", "stop", name)
    assert stopped.code == 0, stopped
    resumed = run_as_claude_code(repo, "SessionStart",
                                 payload("SessionStart", tree, source="resume"), cwd=tree)
    assert f"session {name}" in one_line(resumed)
    assert cli("claude-db", "status", cwd=tree).code == 0

    # Stop: a checkpoint, listed as made by a hook, one line, exit 0
    stop = run_as_claude_code(repo, "Stop", payload("Stop", tree, stop_hook_active=False),
                              cwd=tree)
    assert one_line(stop).startswith("claude-db: "), stop
    listed = cli("claude-db", "undo", "--list", "--json", cwd=tree)
    assert listed.code == 0 and "end of agent turn" in listed.stdout, listed
    assert "hook" in listed.stdout, listed
    # Stop where there is no session, and input that is not JSON: one line, exit 0
    elsewhere = tmp_path / "nowhere"
    elsewhere.mkdir()
    none_here = run_as_claude_code(repo, "Stop", payload("Stop", elsewhere), cwd=elsewhere)
    assert "no session" in one_line(none_here)
    assert one_line(run_as_claude_code(repo, "Stop", "not json", cwd=elsewhere))

    # WorktreeRemove: the worktree's session goes, its data kept for the grace period
    removed = run_as_claude_code(repo, "WorktreeRemove",
                                 payload("WorktreeRemove", repo, worktree_path=str(tree)))
    assert f"removed session {name}" in one_line(removed), removed
    assert not (state / "sessions" / name).exists()
    assert list((state / "kept").glob(f"{name}-*.reclaimed.json"))
    assert not (tree / ".env").exists()  # its block was all that .env held
    unknown = run_as_claude_code(repo, "WorktreeRemove",
                                 payload("WorktreeRemove", repo, worktree_path=str(tree)))
    assert "nothing removed" in one_line(unknown)


def test_a_failing_hook_prints_one_line_and_exits_0(cli: Cli, state: Path, repo: Path) -> None:
    """The database cannot start (no Docker engine where DOCKER_HOST points): the agent
    gets one line saying so, and goes on (exit 0)."""
    assert cli("claude-session", "hooks", "install", "--no-git", cwd=repo).code == 0
    failed = run_as_claude_code(repo, "SessionStart", payload("SessionStart", repo),
                                env={"CLAUDE_DB_RUNTIME": "docker",
                                     "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    line = one_line(failed)
    assert line.startswith("claude-db: session-start hook failed: "), line
    assert not (state / "sessions").exists() or not any((state / "sessions").iterdir())
    unknown = cli("claude-session", "hooks", "run", "bogus", cwd=repo)
    assert_one_line_error(unknown, 2)


def test_input_that_is_not_json_does_nothing_on_a_guess(state: Path, repo: Path, cli: Cli) -> None:
    """Not what an agent sends (first-time user: it started a session where the hook
    happened to run): one line, exit 0, nothing made."""
    assert cli("claude-session", "hooks", "install", "--no-git", cwd=repo).code == 0
    for event, body in (("SessionStart", "not json"), ("Stop", "[1, 2]")):
        line = one_line(run_as_claude_code(repo, event, body))
        assert line.endswith("hook failed: its input is not a JSON object"), line
    assert not (repo / ".env").exists()
    assert not (state / "sessions").exists() or not any((state / "sessions").iterdir())


def test_git_worktree_add_starts_a_session(cli: Cli, state: Path, repo: Path) -> None:
    assert cli("claude-session", "hooks", "install", "--no-claude", cwd=repo).code == 0
    tree = repo.parent / "wt-git"
    added = git(repo, "worktree", "add", "-b", "wt-git", str(tree))
    assert added.returncode == 0, added
    assert "Traceback" not in added.stderr
    name = f"{repo.name}-wt-git"
    assert f"claude-db: session {name} started" in added.stderr, added
    assert session_json(state, name)["workdir"] == str(tree.resolve())
    assert cli("claude-db", "status", cwd=tree).code == 0
    log = (repo / ".git" / "user-hook.log").read_text()
    assert "user hook 0000000000000000000000000000000000000000" in log  # chained, with args
    # a checkout in an existing work tree starts nothing
    assert git(repo, "checkout", "-q", "-b", "other").returncode == 0
    sessions = sorted(p.name for p in (state / "sessions").iterdir() if p.is_dir()
                      and not p.name.startswith("."))
    assert sessions == [name]
    assert cli("claude-session", "hooks", "uninstall", cwd=repo).code == 0
    assert (repo / ".git" / "hooks" / "post-checkout").read_text() == USER_HOOK

