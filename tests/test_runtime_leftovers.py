"""``gc`` asks each registered runtime what it holds (``Runtime.leftovers``) instead of
knowing any runtime's resources itself; it removes a session's part only while it holds
that session's lock and the session is gone. A plugin runtime proves it: core knows
nothing of where it keeps things (files in a directory of its own here).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest

from claude_db import Engine, Runtime, hookimpl
from claude_db.app import App
from claude_db.gc import collect_garbage
from claude_db.lifecycle import delete_session, start_session
from claude_db.runtime import Orphan
from claude_db.runtimes.local import LocalRuntime
from claude_db_postgres import PostgresEngine

Register = Callable[..., str]


@pytest.fixture
def engine_class() -> type[Engine]:
    return PostgresEngine


class LedgerRuntime(LocalRuntime):
    """The local runtime under another name, which also "holds" a file per session in a
    directory of its own (``shelf``): what core cannot know about."""

    name = "ledger"
    auto_priority = -1
    cheap_leftovers = False  # as if it asked a remote service
    shelf: ClassVar[Path]
    asked: ClassVar[list[Path]] = []

    def leftovers(self, state_dir: Path) -> dict[str, list[Orphan]]:
        type(self).asked.append(state_dir)
        return {path.name: [Orphan("file", str(path), f"ledger entry of {path.name}",
                                   remove=partial(path.unlink))]
                for path in sorted(self.shelf.iterdir())}


class LedgerPlugin:
    @hookimpl
    def register_runtimes(self, register: Callable[[type[Runtime]], None]) -> None:
        register(LedgerRuntime)


@pytest.fixture
def ledger(register_plugin: Register, tmp_path: Path) -> Path:
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    LedgerRuntime.shelf, LedgerRuntime.asked = shelf, []
    register_plugin(LedgerPlugin(), name="ledger")
    return shelf


def test_gc_asks_each_runtime_and_takes_only_gone_sessions_parts(
    claude_app: App, registered_engine: Engine, ledger: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    for name in ("lg-gone", "lg-busy"):
        (ledger / name).touch()
    state = claude_app.settings.state_dir

    # the cheap sweep (every start) asks no costly runtime that no live session uses
    collect_garbage(claude_app, cheap=True)
    assert LedgerRuntime.asked == []
    # ...but the one a start names
    planned = collect_garbage(claude_app, cheap=True, dry_run=True, runtimes=["ledger"])
    assert LedgerRuntime.asked == [state]
    assert {o.what for o in planned} == {str(ledger / "lg-gone"), str(ledger / "lg-busy")}
    assert not any(o.removed for o in planned) and len(list(ledger.iterdir())) == 2

    with claude_app.store.lock("lg-busy"):  # a session being started right now
        session, notes = start_session(claude_app, "lg-live", engine_name="postgres",
                                       runtime_name="ledger", workdir=workdir)
        try:
            # the start's own sweep asked the runtime it uses: the gone session's part went
            assert sorted(p.name for p in ledger.iterdir()) == ["lg-busy"]
            (ledger / "lg-live").touch()  # what the runtime holds for the live session
            assert any("removed 1 leftover of gone sessions" in note for note in notes), notes
            LedgerRuntime.asked.clear()
            assert collect_garbage(claude_app, cheap=True) == []
            assert LedgerRuntime.asked == [state]  # a live session uses it now
        except BaseException:
            delete_session(claude_app, "lg-live")
            raise
    try:
        found = collect_garbage(claude_app)  # the lock is free: lg-busy is gone too
        assert [(o.what, o.removed) for o in found if o.kind == "file"] == [
            (str(ledger / "lg-busy"), True)]
        assert [p.name for p in ledger.iterdir()] == ["lg-live"]  # live: never touched
        assert claude_app.runtime("ledger").status(session) == "running"
    finally:
        delete_session(claude_app, "lg-live")


def test_gc_of_a_runtime_that_is_not_available_asks_it_nothing(
    claude_app: App, registered_engine: Engine, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ledger / "lg-gone").touch()
    monkeypatch.setattr(LedgerRuntime, "available", lambda self: False)
    assert [o for o in collect_garbage(claude_app) if o.kind == "file"] == []
    assert LedgerRuntime.asked == [] and (ledger / "lg-gone").exists()
