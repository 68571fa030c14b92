"""Helpers for the safety-net tests: fresh state directories, data checksums, and
everything a state directory's sessions could leak (processes, ports, entries)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psutil

from claude_db.testing.cli import BIN, OUR_VARIABLES, TEST_ENV, Cli
from claude_db.testing.leaks import port_listeners

#: the data every snapshot test seeds, per engine: several tables, a second schema or
#: table with other types, a view, enough rows that a half-restored copy would show
SEED: dict[str, list[str]] = {
    "postgres": [
        "CREATE SCHEMA extra",
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2))",
        "INSERT INTO items (name, price) SELECT md5(g::text), g / 7.0 "
        "FROM generate_series(1, 5000) g",
        "CREATE TABLE extra.notes (id int PRIMARY KEY, body text, at timestamptz DEFAULT now())",
        "INSERT INTO extra.notes (id, body) SELECT g, repeat('x', g % 50) "
        "FROM generate_series(1, 300) g",
        "CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 10",
    ],
    "mysql": [
        "CREATE TABLE items (id int AUTO_INCREMENT PRIMARY KEY, name text NOT NULL, "
        "price decimal(10,2))",
        "INSERT INTO items (name, price) SELECT md5(seq), seq / 7.0 FROM seq_1_to_5000",
        "CREATE TABLE notes (id int PRIMARY KEY, body text, at timestamp DEFAULT now())",
        "INSERT INTO notes (id, body) SELECT seq, repeat('x', seq % 50) FROM seq_1_to_300",
        "CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 10",
    ],
}


def fresh_state(root: Path, shared_state: Path) -> Path:
    """A state directory of its own (to prove nothing is left in it) that reuses the
    test run's cached server templates (building them again costs seconds)."""
    root.mkdir(parents=True, exist_ok=True)
    for part in (root, *root.parents):
        if str(part).startswith("/tmp/") and part.stat().st_uid == os.geteuid():
            os.chmod(part, part.stat().st_mode | 0o111)  # the server user must get through
    state = root / "state"
    state.mkdir(mode=0o711)
    os.chmod(state, 0o711)
    templates = shared_state / "templates"
    templates.mkdir(exist_ok=True)
    os.chmod(templates, 0o711)
    (state / "templates").symlink_to(templates)
    return state


def wait_for(condition: str, probe: Callable[[], object], timeout: float = 120) -> None:
    """Poll ``probe()`` until true; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {condition}")
        time.sleep(0.01)


def seed(cli: Cli, engine: str, *, session: str) -> None:
    """Create :data:`SEED`'s tables (``engine`` may name a runtime: ``postgres@docker``).
    PostgreSQL takes them in one ``query`` (one CLI run instead of six: tests seed often)."""
    db = engine.partition("@")[0]
    batches = [";\n".join(SEED[db])] if db == "postgres" else SEED[db]
    for statements in batches:
        result = cli("claude-db", "query", statements, "--session", session)
        assert result.code == 0, result


def database_url(cli: Cli, session: str) -> str:
    """The session's database as reached from here (with a session container, the
    DATABASE_URL its programs get names a host only its network knows)."""
    info = cli("claude-db", "info", "--json", "--show-password", "--session", session)
    assert info.code == 0, info
    details = json.loads(info.stdout)
    url: str = details.get("HOST_DATABASE_URL") or details["DATABASE_URL"]
    return url


def fingerprint(cli: Cli, engine: str, *, session: str) -> dict[str, Any]:
    """Every table, view (and sequence) with its row count and a checksum of its rows,
    read with the engine's driver (fast: no process per table)."""
    url = database_url(cli, session)
    if engine.partition("@")[0] == "postgres":
        return pg_fingerprint(url)
    import pymysql

    parts = urlsplit(url)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                           user=unquote(parts.username or ""),
                           password=unquote(parts.password or ""),
                           database=unquote(parts.path.lstrip("/")))
    found: dict[str, Any] = {}
    with conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = database() ORDER BY 1")
        for (name,) in cur.fetchall():
            cur.execute(f"SELECT * FROM `{name}`")
            rows = sorted(repr(row) for row in cur.fetchall())
            found[name] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
    return found


def pg_fingerprint(url: str) -> dict[str, Any]:
    """Every relation of a PostgreSQL database with its count and checksum (psycopg: fast),
    plus its sequences' positions."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        relations = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'v', 'm', 'S') AND n.nspname NOT IN "
            "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
            "ORDER BY 1, 2"
        ).fetchall()
        found: dict[str, Any] = {}
        for schema, name, kind in relations:
            ident = f'"{schema}"."{name}"'
            if kind == "S":
                found[f"{schema}.{name}"] = conn.execute(
                    f"SELECT last_value, is_called FROM {ident}").fetchone()
            else:
                found[f"{schema}.{name}"] = conn.execute(
                    f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), "
                    f"'')) FROM {ident} t").fetchone()
        return found


def server_processes(state: Path) -> list[tuple[int, str]]:
    """Processes with an argument inside ``state`` (servers of its sessions)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            text = [a.decode(errors="replace") for a in args if a]
            if any(str(state) in a for a in text):
                found.append((int(entry.name), " ".join(text)))
    return found


def listening(port: int, state: Path) -> bool:
    """Whether a server of ``state`` (a process whose command line names it) listens on
    ``port``; a listener this user cannot see counts too. Another server on that port is
    not ours: a port a deleted session freed may be taken at once by a server another test
    starts meanwhile (pytest-xdist runs tests side by side)."""
    return any(pid is None or str(state) in cmdline for pid, cmdline in port_listeners(port))


def state_leftovers(state: Path, ports: list[int]) -> dict[str, Any]:
    """Everything a state directory's sessions could leak; all empty when nothing leaked."""
    sessions = state / "sessions"
    return {
        # (the local runtime's background copy of a server template is a cache, not a leak)
        "processes": [p for p in server_processes(state) if f"{sessions}/" in p[1]],
        "ports": [p for p in ports if listening(p, state)],
        "session entries": session_entries(sessions),
        "kept": sorted(p.name for p in (state / "kept").iterdir())
        if (state / "kept").exists() else [],
    }


def session_entries(sessions: Path) -> list[str]:
    """What a sessions directory holds, lock files (in its private ``.locks``) included."""
    if not sessions.exists():
        return []
    locks = sessions / ".locks"
    entries = [p.name for p in sessions.iterdir() if p != locks]
    entries += [f".locks/{p.name}" for p in locks.iterdir()] if locks.exists() else []
    return sorted(entries)


NOTHING_LEFT: dict[str, Any] = {"processes": [], "ports": [], "session entries": [], "kept": []}


def session_json(state: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state / "sessions" / name / "session.json").read_text())
    return data


def cli_env(state: Path) -> dict[str, str]:
    """The environment of a CLI run by hand (Popen): ours, with only this state directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    return {**env, **TEST_ENV, "CLAUDE_DB_STATE_DIR": str(state), "CLAUDE_DB_RUNTIME": "local"}


def session_leader_servers(state: Path, name: str) -> list[int]:
    """Server processes (session leaders, as the local runtime starts them) of one session.

    Not their children: PostgreSQL's children are session leaders too (``setsid`` at their
    start), and until one sets its process title its command line is the server's (a full
    run caught one so)."""
    prefix = f"{state}/sessions/{name}/"
    found = [pid for pid, command in server_processes(state) if prefix in command]
    pids = []
    for pid in found:
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getsid(pid) == pid and psutil.Process(pid).ppid() not in found:
                pids.append(pid)
    return pids


def start_with_frozen_server(
    state: Path, name: str, workdir: Path, *, attempts: int = 3
) -> tuple[subprocess.Popen[bytes], int, str]:
    """Run ``claude-session start NAME`` until its server process exists, then freeze that
    server (SIGSTOP): the start can then never become ready, so it is caught half-way
    for certain. Returns the CLI (its own process group), the frozen server's pid, once
    the start has recorded it in ``session.json``, and the session's name.

    If a start outruns us and finishes (its server answered before we saw it), that
    session is deleted and the next attempt uses another name.
    """
    for attempt in range(attempts):
        session = name if attempt == 0 else f"{name}-{attempt}"
        proc = subprocess.Popen(
            [str(BIN / "claude-session"), "start", session], cwd=workdir, env=cli_env(state),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,  # like a terminal's foreground job: a group to signal
        )
        deadline = time.monotonic() + 120  # a safety net against hanging, not a measurement
        while time.monotonic() < deadline and proc.poll() is None:
            if pids := session_leader_servers(state, session):
                os.kill(pids[0], signal.SIGSTOP)
                # the start records its server just after spawning it: a caller reads that
                wait_for("the start to record its server",
                         partial(_recorded_or_ended, state, session, pids[0], proc))
                if proc.poll() is not None:
                    raise AssertionError(f"start ended ({proc.returncode}) with its server frozen")
                return proc, pids[0], session
            time.sleep(0.002)
        _, err = proc.communicate(timeout=300)  # a guard against a hang
        if proc.returncode != 0:
            raise AssertionError(f"start failed before its server appeared: {err.decode()}")
        subprocess.run([str(BIN / "claude-session"), "delete", session, "--yes"],
                       env=cli_env(state), capture_output=True, check=True)
    raise AssertionError(f"{attempts} starts finished before their servers could be caught")


def _recorded_or_ended(state: Path, name: str, pid: int, proc: subprocess.Popen[bytes]) -> bool:
    """Whether session ``name`` records ``pid`` as its server, or its start ended."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        if session_json(state, name)["runtime_state"].get("pid") == pid:
            return True
    return proc.poll() is not None


def locks_waited_for_by(pid: int) -> bool:
    """Whether ``pid`` is blocked waiting for a file lock (/proc/locks marks waiters ``->``)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[fields.index("->") + 4] == str(pid):
            return True
    return False


def cleanup(state: Path) -> None:
    """Delete every session of ``state`` (a failed test must not leave servers running)."""
    sessions = state / "sessions"
    for path in sorted(sessions.iterdir()) if sessions.exists() else []:
        if not path.name.startswith("."):
            subprocess.run([str(BIN / "claude-session"), "delete", path.name, "--yes"],
                           env=cli_env(state), capture_output=True, timeout=120)
    subprocess.run([str(BIN / "claude-session"), "gc"], env=cli_env(state),
                   capture_output=True, timeout=120)
