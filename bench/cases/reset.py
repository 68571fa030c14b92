"""``claude-db reset`` of a populated database against ``dropdb`` + ``createdb`` by hand."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from bench import pg
from bench.context import Context
from bench.harness import Case, Check, Goal, Measurement, Sample, Stopwatch, Variant, every
from bench.system import run

SESSION = "reset"


@contextlib.contextmanager
def reset(ctx: Context) -> Iterator[list[Case]]:
    workdir, env = ctx.start_session(SESSION, "--runtime", "local")
    url = env["DATABASE_URL"]
    database = env["PGDATABASE"]
    bindir = pg.bindir()
    tables, rows = ctx.options.reset_tables, ctx.options.reset_rows
    tools_env = pg.tools_env(url)
    tools_env.pop("PGDATABASE", None)

    def populate() -> dict[str, Any]:
        """Untimed, before every run: ``tables`` tables holding ``rows`` rows in all."""
        per_table = [rows // tables + (1 if i < rows % tables else 0) for i in range(tables)]
        pg.execute(url, "".join(
            f"create table t{i:03d} (id int primary key, payload text not null, "
            f"at timestamptz not null default now()); "
            f"insert into t{i:03d} (id, payload) select g, md5(g::text) "
            f"from generate_series(1, {n}) g;"
            for i, n in enumerate(per_table)
        ))
        return {"tables_before": _tables(url), "rows_before": _rows(url)}

    def after() -> dict[str, Any]:
        return {"tables_after": _tables(url), "rows_after": _rows(url)}

    def product() -> Measurement:
        before = populate()
        with Stopwatch() as sw:
            ctx.ws.cli("claude-db", "reset", "--yes", cwd=workdir)
        return sw.measurement({**before, **after()})

    no_snapshots = ctx.ws.product_env(CLAUDE_DB_AUTO_SNAPSHOTS="0")

    def product_without_snapshot() -> Measurement:
        before = populate()
        with Stopwatch() as sw:
            ctx.ws.cli("claude-db", "reset", "--yes", cwd=workdir, env=no_snapshots)
        return sw.measurement({**before, **after()})

    def baseline() -> Measurement:
        before = populate()
        with Stopwatch() as sw:
            run([str(bindir / "dropdb"), database], env=tools_env)
            run([str(bindir / "createdb"), database], env=tools_env)
        return sw.measurement({**before, **after()})

    def verify(samples: list[Sample]) -> list[Check]:
        return [
            every(samples, "populated before each run",
                  lambda w: w["tables_before"] == tables and w["rows_before"] == rows,
                  f"{tables} tables, {rows:,} rows before every run"),
            every(samples, "empty and present after each run",
                  lambda w: w["tables_after"] == 0 and w["rows_after"] == 0,
                  "the database existed and held no table after every run"),
        ]

    rounds = ctx.rounds(full=10, quick=2)
    cases = [
        Case("reset", f"reset of {tables} tables / {rows:,} rows", [
            Variant("claude-db", "product", "claude-db reset --yes (automatic snapshot "
                    "first, the default)", product),
            Variant("by-hand", "baseline", "dropdb; createdb", baseline),
        ], rounds=rounds, warmup=ctx.options.warmup, goal=Goal(max_ratio=1.3), verify=verify),
        Case("reset-no-snapshot", "the same reset without the automatic snapshot", [
            Variant("claude-db", "product", "CLAUDE_DB_AUTO_SNAPSHOTS=0 claude-db reset --yes",
                    product_without_snapshot),
            Variant("by-hand", "baseline", "dropdb; createdb", baseline),
        ], rounds=rounds, warmup=ctx.options.warmup, verify=verify,
            notes=["for information: what the automatic snapshot costs"]),
    ]
    try:
        yield cases if not ctx.options.quick else cases[:1]  # quick: the goal's case only
    finally:
        ctx.ws.cli("claude-session", "delete", "--yes", SESSION, check=False)


def _tables(url: str) -> int:
    return int(pg.scalar(url, "select count(*) from pg_tables where schemaname = 'public'"))


def _rows(url: str) -> int:
    """Rows in all public tables (0 when there are none)."""
    names = pg.scalar(url, "select coalesce(string_agg(format('select count(*) c from %I', "
                           "tablename), ' union all '), '') from pg_tables "
                           "where schemaname = 'public'")
    if not names:
        return 0
    return int(pg.scalar(url, f"select coalesce(sum(c), 0) from ({names}) s"))
