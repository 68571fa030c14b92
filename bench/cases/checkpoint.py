"""``claude-db checkpoint`` and ``undo --to`` of a ~100 MB database against the raw
floor in the same run: PostgreSQL's ``CREATE DATABASE ... TEMPLATE`` (what a checkpoint
is at heart) and a rename plus a template copy (what ``undo --to`` is); with a client
connected, ``pg_dump | psql`` by hand; MariaDB against ``mariadb-dump | gzip``.

The CLI variants pay the Python CLI's start-up (see the ``help`` case); the ``api``
references time the same work inside one process (``claude_db.snapshots``), which is
what the goal (issue 16.4: checkpoint <= 150 ms, undo <= 1 s, MariaDB <= 3 s) is about
once the command runs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import pg
from bench.context import Context
from bench.harness import Case, Check, Measurement, Sample, Stopwatch, Variant, every
from bench.system import run

PG_SESSION, MARIADB_SESSION = "ckpt-pg", "ckpt-maria"
#: every checkpoint kept (no eviction in the time measured: checkpoint-evicting has it)
KEEP = {"CLAUDE_DB_CHECKPOINTS": "100", "CLAUDE_DB_SNAPSHOT_SPACE": "0",
        "CLAUDE_DB_AUTO_SNAPSHOTS": "2"}
#: the template copy's strategy claude-db asks for (PostgreSQL >= 15; the default, WAL_LOG,
#: writes every page into the WAL too)
FILE_COPY = " strategy file_copy"
ROW_BYTES = 170  # one ``events`` row with its indexes, as bench.cases.dumps loads it


@contextlib.contextmanager
def checkpoint(ctx: Context) -> Iterator[list[Case]]:
    megabytes = ctx.options.dump_mb or (10 if ctx.options.quick else 100)
    rounds = ctx.rounds(full=7, quick=2)
    env = ctx.ws.product_env(**KEEP)
    try:
        workdir, dotenv = ctx.start_session(PG_SESSION, "--runtime", "local")
        url, database = dotenv["DATABASE_URL"], dotenv["PGDATABASE"]
        from bench.cases.dumps import _load

        size = _load(url, megabytes)
        tools = pg.tools_env(url)
        tools["PGDATABASE"] = "postgres"
        psql = [str(pg.bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        counter = iter(range(1_000_000))

        def sql(*statements: str) -> None:
            run([*psql, *(a for s in statements for a in ("-c", s))], env=tools)

        def rows() -> int:
            return int(pg.scalar(url, "select count(*) from events"))

        expected = rows()

        def cli_checkpoint(env: dict[str, str] = env) -> Measurement:
            with Stopwatch() as sw:
                out = ctx.ws.cli("claude-db", "checkpoint", cwd=workdir, env=env).stdout
            return sw.measurement({"rows": rows(), "bytes": size, "one_line":
                                   len(out.decode().splitlines()) == 1})

        def floor_checkpoint(strategy: str = "") -> Measurement:
            copy = f"bench_floor_{next(counter)}"
            with Stopwatch() as sw:
                sql(f"create database {copy} template {database}{strategy}")
            work = {"rows": rows(), "bytes": size, "one_line": True}
            sql(f"drop database {copy}")
            return sw.measurement(work)

        def cli_start() -> Measurement:
            """The CLI's own floor: start-up, settings, plugins, the session resolved."""
            off = {**env, "CLAUDE_DB_CHECKPOINTS": "0"}
            with Stopwatch() as sw:
                out = ctx.ws.cli("claude-db", "checkpoint", cwd=workdir, env=off).stdout
            return sw.measurement({"rows": rows(), "bytes": size, "one_line":
                                   len(out.decode().splitlines()) == 1})

        def api_checkpoint() -> Measurement:
            with _in_process(env, workdir) as (app, target):
                from claude_db import snapshots

                with Stopwatch() as sw:
                    snapshots.take_checkpoint(app, target, "bench")
            return sw.measurement({"rows": rows(), "bytes": size, "one_line": True})

        # what undo --to goes back to: a checkpoint, and the floor's own template
        to = ctx.ws.cli("claude-db", "checkpoint", "--label", "undo target", cwd=workdir,
                        env=env).stdout.decode().split()[1]
        sql(f"create database bench_floor_source template {database}")

        def cli_undo() -> Measurement:
            with Stopwatch() as sw:
                ctx.ws.cli("claude-db", "undo", "--to", to, "--yes", cwd=workdir, env=env)
            return sw.measurement({"rows": rows()})

        def floor_undo(strategy: str = "") -> Measurement:
            aside = f"bench_floor_{next(counter)}"
            with Stopwatch() as sw:
                sql(f"alter database {database} rename to {aside}",
                    f"create database {database} template bench_floor_source{strategy}")
            work = {"rows": rows()}
            sql(f"drop database {aside}")
            return sw.measurement(work)

        def api_undo() -> Measurement:
            with _in_process(env, workdir) as (app, target):
                from claude_db import snapshots

                with Stopwatch() as sw:
                    snapshots.restore(app, target, to)
            return sw.measurement({"rows": rows()})

        def cli_busy_checkpoint() -> Measurement:
            import psycopg

            with psycopg.connect(url, autocommit=True) as client:  # an app's idle pool
                with Stopwatch() as sw:
                    ctx.ws.cli("claude-db", "checkpoint", cwd=workdir, env=env)
                client.execute("select 1")  # still connected
            return sw.measurement({"rows": rows(), "client_kept": True})

        def dump_by_hand() -> Measurement:
            copy = f"bench_floor_{next(counter)}"
            sql(f"create database {copy} template template0")
            dump_env = {**tools, "PGDATABASE": database}
            with Stopwatch() as sw:
                dump = subprocess.Popen([str(pg.bindir() / "pg_dump"), "--quote-all-identifiers"],
                                        env=dump_env, stdout=subprocess.PIPE)
                subprocess.run([*psql, "--single-transaction", "-d", copy, "-f", "-"],
                               env=tools, stdin=dump.stdout, stdout=subprocess.DEVNULL,
                               check=True)
                assert dump.wait() == 0
            work = {"rows": int(pg.scalar(url.rsplit("/", 1)[0] + f"/{copy}",
                                          "select count(*) from events")), "client_kept": True}
            sql(f"drop database {copy}")
            return sw.measurement(work)

        def same_rows(samples: list[Sample]) -> list[Check]:
            return [every(samples, "same data", lambda w: w["rows"] == expected,
                          f"{expected:,} events rows after every run")]

        def one_line(samples: list[Sample]) -> list[Check]:
            return [*same_rows(samples),
                    every(samples, "one line", lambda w: w["one_line"],
                          "claude-db checkpoint printed one line")]

        mb = f"{size / 2**20:.0f} MB"
        cases = [
            Case("checkpoint", f"checkpoint of a {mb} PostgreSQL database", [
                Variant("claude-db", "product", "claude-db checkpoint", cli_checkpoint),
                Variant("template-floor", "baseline",
                        "psql -c 'CREATE DATABASE copy TEMPLATE db'", floor_checkpoint),
                Variant("file-copy-floor", "reference",
                        "psql -c 'CREATE DATABASE copy TEMPLATE db STRATEGY FILE_COPY' (what "
                        "claude-db does)", lambda: floor_checkpoint(FILE_COPY)),
                Variant("api", "reference", "snapshots.take_checkpoint() in-process (no CLI "
                        "start-up)", api_checkpoint),
                Variant("cli-start", "reference", "CLAUDE_DB_CHECKPOINTS=0 claude-db checkpoint "
                        "(the CLI's start-up alone: no server work)", cli_start),
            ], rounds=rounds, warmup=ctx.options.warmup, verify=one_line,
                notes=["goal (16.4): <= 150 ms median; the floor is the template copy itself "
                       "(PostgreSQL 15's default strategy, WAL_LOG)"]),
            Case("undo-to", f"undo --to a checkpoint, {mb} PostgreSQL database", [
                Variant("claude-db", "product", "claude-db undo --to ID --yes", cli_undo),
                Variant("rename-template-floor", "baseline",
                        "psql -c 'ALTER DATABASE db RENAME TO x' -c 'CREATE DATABASE db "
                        "TEMPLATE snap'", floor_undo),
                Variant("file-copy-floor", "reference", "the same, STRATEGY FILE_COPY (what "
                        "claude-db does)", lambda: floor_undo(FILE_COPY)),
                Variant("api", "reference", "snapshots.restore() in-process", api_undo),
            ], rounds=rounds, warmup=ctx.options.warmup, verify=same_rows,
                notes=["goal (16.4): <= 1 s median"]),
            Case("checkpoint-evicting", f"checkpoint of {mb} that evicts the previous one", [
                Variant("claude-db", "product", "CLAUDE_DB_CHECKPOINTS=1 claude-db checkpoint",
                        lambda: cli_checkpoint({**env, "CLAUDE_DB_CHECKPOINTS": "1"})),
                Variant("template-floor", "baseline",
                        "psql -c 'CREATE DATABASE copy TEMPLATE db'", floor_checkpoint),
            ], rounds=rounds, warmup=1, verify=one_line,
                notes=["steady state once CLAUDE_DB_CHECKPOINTS are kept: the oldest is "
                       "dropped (DROP DATABASE) in the same command"]),
            Case("checkpoint-busy", f"checkpoint with a client connected, {mb}", [
                Variant("claude-db", "product", "claude-db checkpoint (one idle client "
                        "connected: a consistent pg_dump | psql copy)", cli_busy_checkpoint),
                Variant("dump-by-hand", "baseline", "pg_dump | psql --single-transaction",
                        dump_by_hand),
            ], rounds=ctx.rounds(full=3, quick=1), warmup=0, verify=same_rows,
                notes=["CREATE DATABASE ... TEMPLATE refuses a source with other clients; "
                       "claude-db never ends them for a checkpoint"]),
        ]
        cases += _mariadb(ctx, megabytes, env)
        yield cases
    finally:
        for name in (PG_SESSION, MARIADB_SESSION):
            ctx.ws.cli("claude-session", "delete", "--yes", name, check=False)


def _mariadb(ctx: Context, megabytes: int, env: dict[str, str]) -> list[Case]:
    """MariaDB on the local runtime: physical (table files) checkpoints and undo --to."""
    workdir, dotenv = ctx.start_session(MARIADB_SESSION, "--runtime", "local", "--db", "mysql")
    client = ["mariadb", f"--host={dotenv['DB_HOST']}", f"--port={dotenv['DB_PORT']}",
              f"--user={dotenv['DB_USER']}", f"--password={dotenv['DB_PASSWORD']}",
              dotenv["DB_NAME"]]
    rows = max(1000, megabytes * 2**20 // ROW_BYTES)
    run([*client, "-e",
         "create table events (id bigint primary key, account int not null, kind text not "
         "null, payload text not null, amount decimal(12,2) not null, at datetime not null, "
         "key (account)) engine=InnoDB; "
         f"insert into events select seq, 1 + seq % 1000, elt(1 + seq % 4, 'click', 'view', "
         "'buy', 'refund'), concat(md5(seq), md5(seq + 1)), (seq % 100000) / 100.0, "
         f"'2024-01-01' + interval seq second from seq_1_to_{rows}; analyze table events"])

    def count() -> int:
        out = run([*client, "-N", "-e", "select count(*) from events"]).stdout
        return int(out.decode().strip())

    def physical(name: str) -> bool:
        snapshots = ctx.ws.state / "sessions" / MARIADB_SESSION / "snapshots" / name
        return (snapshots / "tablespaces.json").exists()

    def cli_checkpoint() -> Measurement:
        with Stopwatch() as sw:
            out = ctx.ws.cli("claude-db", "checkpoint", cwd=workdir, env=env).stdout.decode()
        return sw.measurement({"rows": count(), "physical": physical(out.split()[1])})

    def dump_by_hand() -> Measurement:
        target = ctx.ws.root / "maria-dump.sql.gz"
        with Stopwatch() as sw, target.open("wb") as out:
            dump = subprocess.Popen(["mariadb-dump", "--single-transaction", *client[1:]],
                                    stdout=subprocess.PIPE)
            subprocess.run(["gzip", "-1"], stdin=dump.stdout, stdout=out, check=True)
            assert dump.wait() == 0
        target.unlink()
        return sw.measurement({"rows": count(), "physical": files})

    to = ctx.ws.cli("claude-db", "checkpoint", cwd=workdir, env=env).stdout.decode().split()[1]
    expected = count()

    def cli_undo() -> Measurement:
        with Stopwatch() as sw:
            ctx.ws.cli("claude-db", "undo", "--to", to, "--yes", cwd=workdir, env=env)
        return sw.measurement({"rows": count(), "physical": physical(to)})

    # below MIN_BYTES (32 MB, --quick) a dump is as fast and taken instead
    files = megabytes >= 32

    def checks(samples: list[Sample]) -> list[Check]:
        return [every(samples, "same data", lambda w: w["rows"] == expected,
                      f"{expected:,} rows after every run"),
                every(samples, "physical", lambda w: w["physical"] == files,
                      "every checkpoint was " + ("table files" if files else "a dump"))]

    rounds = ctx.rounds(full=5, quick=1)
    return [
        Case("checkpoint-mariadb", f"checkpoint of a ~{megabytes} MB MariaDB database", [
            Variant("claude-db", "product", "claude-db checkpoint (table files)", cli_checkpoint),
            Variant("dump-by-hand", "baseline", "mariadb-dump --single-transaction | gzip -1",
                    dump_by_hand),
        ], rounds=rounds, warmup=ctx.options.warmup, verify=checks,
            notes=["goal (16.4): <= 3 s median"]),
        Case("undo-to-mariadb", f"undo --to a checkpoint, ~{megabytes} MB MariaDB", [
            Variant("claude-db", "product", "claude-db undo --to ID --yes", cli_undo),
            Variant("checkpoint", "baseline", "claude-db checkpoint (for scale)",
                    cli_checkpoint),
        ], rounds=rounds, warmup=ctx.options.warmup,
            notes=["goal (16.4): <= 3 s median"]),
    ]


@contextlib.contextmanager
def _in_process(env: dict[str, str], workdir: Path) -> Iterator[tuple[Any, Any]]:
    """The product's app and target in this process, with the product's environment."""
    from claude_db.app import get_app, reset_app
    from claude_db.database import resolve

    saved, cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(workdir)
    reset_app()
    try:
        app = get_app()
        yield app, resolve(app, None)
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
        reset_app()
