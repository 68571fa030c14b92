"""The engine contract suite (:class:`EngineContract`): every contract test, run through
the real CLIs on each runtime an engine supports."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import pytest

from claude_db.errors import ClaudeDbError
from claude_db.testing.cli import ClaudeCli, CliResult, assert_one_line_error
from claude_db.testing.fixtures import traversable_tmpdir
from claude_db.testing.leaks import leftovers, runtime_class

#: how much more memory ``query`` may take for :attr:`QueryStreamingContract.big_query` than for
#: one row: a million rows held at once take >500 MB as Python objects; streamed, ~nothing
STREAMING_BOUND = 100 << 20
#: run by :func:`peak_rss`: the peak RSS of its only child
PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.stderr.buffer.write(done.stderr)
"""


def peak_rss(argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> int:
    """The peak RSS in bytes of the program ``argv`` (its output dropped), measured by a
    parent of its own (``RUSAGE_CHILDREN``: nothing else of the test's counts); it must
    succeed."""
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    code, peak = proc.stdout.split()
    assert code == "0", f"{' '.join(argv)} failed: {proc.stderr}"
    return int(peak)


#: the password every contract session gets: each of these characters must be encoded in URLs
CONTRACT_PASSWORD = "p@ss:w/rd%?#x"


@dataclass
class ContractSession:
    """One running session of the engine under test, made by ``claude-session start``."""

    name: str
    engine: str
    runtime: str
    cli: ClaudeCli
    started: dict[str, Any]

    @property
    def workdir(self) -> Path:
        return self.cli.workdir

    def db(self, *argv: str, **kwargs: Any) -> CliResult:
        """``claude-db ARGV`` in the session's work directory (found through its ``.env``)."""
        return self.cli.db(*argv, **kwargs)

    def env(self) -> dict[str, str]:
        result = self.cli.ok("claude-session", "env", self.name, "-f", "json")
        values: dict[str, str] = result.json()
        return values


class EngineContract:
    """The contract every engine keeps, run through the real CLIs on each runtime.

    Subclass with a ``Test`` name and set :attr:`engine_name` (and :attr:`runtimes`).
    """

    #: the engine's name (what ``--db`` takes)
    engine_name: ClassVar[str]
    #: runtimes to run the suite on; cases on a runtime that runs containers are marked
    #: ``@pytest.mark.docker`` (they need a container engine and the test images)
    runtimes: ClassVar[Sequence[str]] = ("local",)
    #: the database image on docker (default: ``$CLAUDE_DB_IMAGE``)
    docker_image: ClassVar[str | None] = None

    #: statements that create a small data set (run one by one with ``claude-db query``)
    seed_queries: ClassVar[Sequence[str]] = (
        "CREATE TABLE contract_items (id integer PRIMARY KEY, label varchar(100))",
        "INSERT INTO contract_items (id, label) VALUES (1, 'one'), (2, 'it''s ünïcode ✓')",
    )
    #: a query returning the seeded data (``query --json``); fails or returns [] when empty
    probe_query: ClassVar[str] = "SELECT id, label FROM contract_items ORDER BY id"
    #: what ``query --json probe_query`` prints after seeding
    expected_rows: ClassVar[list[Any]] = [
        {"id": 1, "label": "one"},
        {"id": 2, "label": "it's ünïcode ✓"},
    ]
    #: a query the server rejects
    invalid_query: ClassVar[str] = "SELEKT nothing FROM nowhere"
    #: fed to ``claude-db shell`` on stdin, and a text its output must contain (None: no check)
    shell_input: ClassVar[str | None] = "SELECT 40 + 2 AS answer;\n"
    shell_expected: ClassVar[str] = "42"

    # -- parametrisation and fixtures -----------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "contract_runtime" not in metafunc.fixturenames:
            return
        params = [
            pytest.param(runtime, id=runtime,
                         marks=[pytest.mark.docker] if _runs_containers(runtime)
                         else [])
            for runtime in self.runtimes
        ]
        metafunc.parametrize("contract_runtime", params, scope="class")

    @pytest.fixture(scope="class")
    @classmethod
    def contract_bin_dir(cls) -> Path:
        """Where ``claude-db``/``claude-session`` are installed (default: this Python's)."""
        return Path(sys.executable).parent

    @pytest.fixture(scope="class")
    @classmethod
    def contract_state_dir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return traversable_tmpdir(tmp_path_factory, "contract-state")

    @pytest.fixture(scope="class")
    @classmethod
    def contract_cli_factory(
        cls, contract_bin_dir: Path, contract_state_dir: Path, contract_runtime: str,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Callable[[], ClaudeCli]:
        env = {"CLAUDE_DB_PASSWORD": CONTRACT_PASSWORD, "CLAUDE_DB_RUNTIME": contract_runtime}
        if _runs_containers(contract_runtime):
            image = cls.docker_image or os.environ.get("CLAUDE_DB_IMAGE")
            if not image:
                raise pytest.UsageError(
                    f"{cls.__name__}: set docker_image or CLAUDE_DB_IMAGE for docker cases"
                )
            env["CLAUDE_DB_IMAGE"] = image

        def make() -> ClaudeCli:
            workdir = tmp_path_factory.mktemp(f"contract-{contract_runtime}-work")
            return ClaudeCli(contract_state_dir, workdir, contract_bin_dir, dict(env))

        return make

    @pytest.fixture(scope="class")
    @classmethod
    def contract_session(
        cls, contract_cli_factory: Callable[[], ClaudeCli], contract_runtime: str
    ) -> Iterator[ContractSession]:
        """A session shared by the contract tests of one runtime (each test resets it)."""
        with cls.started_session(contract_cli_factory(), contract_runtime) as session:
            yield session

    @classmethod
    @contextlib.contextmanager
    def started_session(cls, cli: ClaudeCli, runtime: str) -> Iterator[ContractSession]:
        name = f"contract-{runtime}-{secrets.token_hex(3)}"[:48]
        result = cli.session(
            "start", name, "--db", cls.engine_name, "--runtime", runtime, "--json"
        )
        try:
            assert result.code == 0, result
            yield ContractSession(name, cls.engine_name, runtime, cli, result.json())
        finally:
            # whatever a test did, nothing of the session may outlive it
            if (Path(cli.state_dir) / "sessions" / name).exists():
                cli.session("delete", name, "--yes")

    # -- helpers an engine may override ---------------------------------------------------

    def seed(self, session: ContractSession) -> None:
        for text in self.seed_queries:
            result = session.db("query", text)
            assert result.code == 0, result

    def probe(self, session: ContractSession) -> CliResult:
        return session.db("query", "--json", self.probe_query)

    def assert_seeded_rows(self, rows: Any) -> None:
        assert rows == self.expected_rows

    def assert_seeded(self, session: ContractSession) -> None:
        result = self.probe(session)
        assert result.code == 0, result
        self.assert_seeded_rows(result.json())

    def assert_empty(self, session: ContractSession) -> None:
        """The seeded data is gone: the probe fails cleanly (no such table) or finds nothing."""
        result = self.probe(session)
        if result.code == 0:
            assert result.json() in ([], None), result
        else:
            assert_one_line_error(result, 1)

    def reset(self, session: ContractSession) -> None:
        """Empty the database between steps (without the automatic snapshot: faster; the
        reset test itself runs ``reset`` as users do)."""
        result = session.db("reset", "--yes", env={"CLAUDE_DB_AUTO_SNAPSHOTS": "0"})
        assert result.code == 0, result

    # -- the contract ---------------------------------------------------------------------

    def test_start_gives_a_ready_session(
        self, contract_session: ContractSession, contract_runtime: str
    ) -> None:
        started = contract_session.started
        assert started["name"] == contract_session.name
        assert (started["engine"], started["runtime"]) == (self.engine_name, contract_runtime)
        assert started["status"] == "running"
        status = contract_session.db("status", "--json")
        assert status.code == 0, status
        report = status.json()
        assert report["ready"] is True and report["engine"] == self.engine_name
        assert report["version"], status
        listed = contract_session.cli.ok("claude-session", "list", "--json").json()
        mine = [s for s in listed if s["name"] == contract_session.name]
        assert len(mine) == 1 and mine[0]["status"] == "running", listed

    def test_database_url_encodes_credentials(self, contract_session: ContractSession) -> None:
        env = contract_session.env()
        url = env["DATABASE_URL"]
        scheme, rest = url.split("://", 1)
        assert scheme, url
        # every special character of the password is percent-encoded, and decodes back
        assert f":{quote(CONTRACT_PASSWORD, safe='')}@" in rest, url
        parts = urlsplit(url)
        assert parts.password is not None and parts.username is not None
        from urllib.parse import unquote

        assert unquote(parts.password) == env["DB_PASSWORD"] == CONTRACT_PASSWORD
        assert unquote(parts.username) == env["DB_USER"]
        assert parts.hostname == env["DB_HOST"] and str(parts.port) == env["DB_PORT"]
        assert unquote(parts.path.lstrip("/")) == env["DB_NAME"]
        assert env["CLAUDE_SESSION"] == contract_session.name
        # the .env beside the work holds the same URL, and only the owner may read it
        from dotenv import dotenv_values

        dotenv = contract_session.workdir / ".env"
        assert dotenv_values(dotenv)["DATABASE_URL"] == url
        assert dotenv.stat().st_mode & 0o077 == 0
        # the URL alone (no session, no .env) reaches the database: claude-db parses it back
        info = contract_session.db("info", "--json", "--show-password")
        assert info.code == 0, info
        host_url = info.json().get("HOST_DATABASE_URL") or info.json()["DATABASE_URL"]
        elsewhere = contract_session.workdir.parent
        masked = contract_session.db("info")  # without --show-password: in no form at all
        assert masked.code == 0, masked
        for secret in (CONTRACT_PASSWORD, quote(CONTRACT_PASSWORD, safe="")):
            assert secret not in masked.stdout + masked.stderr, masked
        bare = contract_session.cli.db("status", cwd=elsewhere, env={"DATABASE_URL": host_url})
        assert bare.code == 0, bare

    def test_query(self, contract_session: ContractSession) -> None:
        self.reset(contract_session)
        self.seed(contract_session)
        self.assert_seeded(contract_session)
        # by name, from anywhere
        named = contract_session.cli.db(
            "query", "--json", "--session", contract_session.name, self.probe_query,
            cwd=contract_session.workdir.parent,
        )
        assert named.code == 0, named
        self.assert_seeded_rows(named.json())
        csv = contract_session.db("query", "--csv", self.probe_query)
        assert csv.code == 0 and csv.stdout.strip(), csv
        table = contract_session.db("query", self.probe_query)
        assert table.code == 0 and table.stdout.strip(), table
        assert_one_line_error(contract_session.db("query", self.invalid_query), 1)

    def test_export_reset_import_round_trip(
        self, contract_session: ContractSession, tmp_path: Path
    ) -> None:
        self.reset(contract_session)
        self.seed(contract_session)
        dump = tmp_path / "dump.sql.gz"
        exported = contract_session.db("export", str(dump))
        assert exported.code == 0, exported
        assert dump.read_bytes()[:2] == b"\x1f\x8b", "a .gz export is gzip-compressed"
        to_stdout = contract_session.db("export", "-")
        assert to_stdout.code == 0 and to_stdout.stdout, to_stdout
        assert not [p for p in tmp_path.iterdir() if p.name != dump.name], "temporary files left"

        self.reset(contract_session)
        self.assert_empty(contract_session)
        imported = contract_session.db("import", str(dump))
        assert imported.code == 0, imported
        self.assert_seeded(contract_session)

        self.reset(contract_session)
        piped = contract_session.db("import", "-", input=to_stdout.raw_stdout)
        assert piped.code == 0, piped
        self.assert_seeded(contract_session)

    def test_reset_empties_and_asks_first(self, contract_session: ContractSession) -> None:
        self.reset(contract_session)
        self.seed(contract_session)
        # no terminal and no --yes: refused, nothing destroyed
        assert_one_line_error(contract_session.db("reset"), 6)
        self.assert_seeded(contract_session)
        emptied = contract_session.db("reset", "--yes")
        assert emptied.code == 0, emptied
        self.assert_empty(contract_session)
        self.seed(contract_session)  # the reset database is usable as before
        self.assert_seeded(contract_session)

    def test_shell_runs_the_engines_client(self, contract_session: ContractSession) -> None:
        if self.shell_input is None:
            pytest.skip(f"{type(self).__name__} declares no shell_input")
        result = contract_session.db("shell", input=self.shell_input)
        assert result.code == 0, result
        assert self.shell_expected in result.stdout, result

    def test_status_on_a_stopped_server_exits_4(self, contract_session: ContractSession) -> None:
        self.reset(contract_session)
        self.seed(contract_session)
        contract_session.cli.ok("claude-session", "stop", contract_session.name)
        assert_one_line_error(contract_session.db("status"), 4)
        assert_one_line_error(contract_session.db("query", self.probe_query), 4)
        contract_session.cli.ok("claude-session", "attach", contract_session.name, "--no-shell")
        assert contract_session.db("status").code == 0
        self.assert_seeded(contract_session)  # stop keeps the data

    def test_delete_leaves_nothing(
        self, contract_cli_factory: Callable[[], ClaudeCli], contract_runtime: str
    ) -> None:
        cli = contract_cli_factory()
        with self.started_session(cli, contract_runtime) as session:
            env = session.env()
            record = json.loads(
                (cli.state_dir / "sessions" / session.name / "session.json").read_text()
            )
            deleted = cli.session("delete", session.name, "--yes")
            assert deleted.code == 0, deleted
            assert leftovers(cli.state_dir, session.name, env, record) == []
            # and as the runtime itself finds them, where the CLIs run (its plugin may be
            # installed only there)
            swept = cli.ok("claude-session", "gc", "--dry-run", "--json").json()
            assert [o for o in swept if session.name in json.dumps(o)] == [], swept
            dotenv = cli.workdir / ".env"
            assert not dotenv.exists() or "DATABASE_URL" not in dotenv.read_text()
            listed = cli.ok("claude-session", "list", "--json").json()
            assert session.name not in [s["name"] for s in listed]
            assert_one_line_error(cli.db("status", "--session", session.name), 3)


def _runs_containers(runtime: str) -> bool:
    """Whether ``runtime`` runs containers (needs Docker and an image); a runtime this
    Python does not know (one installed only where ``contract_bin_dir`` points) runs none."""
    try:
        return runtime_class(runtime).runs_containers
    except ClaudeDbError:
        return False


class QueryStreamingContract:
    """Mixed into an :class:`EngineContract` subclass whose engine streams ``query``
    results from the server (an engine that keeps them in the client leaves it out):
    ``class TestMyContract(QueryStreamingContract, EngineContract)``."""

    #: a query of a million rows of ~200 bytes: ``query``'s peak memory for it stays within
    #: :data:`STREAMING_BOUND` of a one-row query's, in every output format
    big_query: ClassVar[str]
    probe_query: ClassVar[str]

    def test_query_streams(self, contract_session: ContractSession) -> None:
        assert isinstance(self, EngineContract), "mixed into an EngineContract subclass"
        self.reset(contract_session)
        self.seed(contract_session)  # the probe query's rows, whatever ran before
        cli = contract_session.cli
        for output in ("--csv", "--json", "table"):
            flags = [] if output == "table" else [output]
            small = peak_rss([str(cli.bin_dir / "claude-db"), "query", self.probe_query, *flags],
                             cwd=cli.workdir, env=cli.environment())
            big = peak_rss([str(cli.bin_dir / "claude-db"), "query", self.big_query, *flags],
                           cwd=cli.workdir, env=cli.environment())
            assert big - small < STREAMING_BOUND, (output, small, big)
