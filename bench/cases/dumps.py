"""``claude-db export``/``import`` of a large database against ``pg_dump | gzip`` and
``gunzip | psql`` by hand: the same server, the same path, the same compression."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import pg
from bench.context import Context
from bench.harness import (
    Case,
    Check,
    Goal,
    Measurement,
    Sample,
    Stopwatch,
    Variant,
    every,
    same_values,
)
from bench.system import run

SOURCE, TARGET = "dump-src", "dump-dst"
BYTES_PER_ROW = 170  # heap + both indexes of ``events``, measured on PostgreSQL 15
#: the product's dump flags (plugins/postgres engine.dump); the by-hand side uses the same
PG_DUMP_FLAGS = ["--no-owner", "--no-privileges", "--quote-all-identifiers"]
PSQL_FLAGS = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"]
CHECKSUM = ("select count(*), coalesce(sum(hashtext(e::text)::bigint), 0) from events e")


@contextlib.contextmanager
def dumps(ctx: Context) -> Iterator[list[Case]]:
    megabytes = ctx.options.dump_mb or (10 if ctx.options.quick else 200)
    rounds = ctx.rounds(full=5, quick=2)
    bindir = pg.bindir()
    try:
        _, source = ctx.start_session(SOURCE, "--runtime", "local")
        target_dir, target = ctx.start_session(TARGET, "--runtime", "local")
        size = _load(source["DATABASE_URL"], megabytes)
        expected = [int(v) for v in pg.row(source["DATABASE_URL"], CHECKSUM)]
        files = ctx.ws.dir("dumps")
        path = files / "export.sql.gz"
        source_env = pg.tools_env(source["DATABASE_URL"])
        target_env = pg.tools_env(target["DATABASE_URL"])
        source_dir = ctx.ws.root / f"work-{SOURCE}"

        def exported() -> dict[str, Any]:
            work = {"sha256": _gunzipped_sha256(path), "gz_bytes": path.stat().st_size}
            path.unlink()
            return work

        def export_product() -> Measurement:
            with Stopwatch() as sw:
                ctx.ws.cli("claude-db", "export", str(path), cwd=source_dir)
            return sw.measurement(exported())

        def export_baseline() -> Measurement:
            pipeline = (f"{bindir / 'pg_dump'} {' '.join(PG_DUMP_FLAGS)} | gzip > {path}")
            with Stopwatch() as sw:
                run(["bash", "-o", "pipefail", "-c", pipeline], env=source_env)
            return sw.measurement(exported())

        # the file every import reads: made once, by hand, untimed
        reference = files / "import.sql.gz"
        run(["bash", "-o", "pipefail", "-c",
             f"{bindir / 'pg_dump'} {' '.join(PG_DUMP_FLAGS)} | gzip > {reference}"],
            env=source_env)

        maintenance = target["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
        database = target["PGDATABASE"]

        def empty_target() -> None:  # untimed: a fresh, empty database for every import
            pg.execute(maintenance, f'drop database "{database}" with (force)')
            pg.execute(maintenance, f'create database "{database}"')

        def imported() -> dict[str, Any]:
            return {"checksum": [int(v) for v in pg.row(target["DATABASE_URL"], CHECKSUM)]}

        def import_product() -> Measurement:
            empty_target()
            with Stopwatch() as sw:
                ctx.ws.cli("claude-db", "import", str(reference), cwd=target_dir)
            return sw.measurement(imported())

        def import_baseline() -> Measurement:
            empty_target()
            pipeline = f"gunzip -c {reference} | {bindir / 'psql'} {' '.join(PSQL_FLAGS)}"
            with Stopwatch() as sw:
                run(["bash", "-o", "pipefail", "-c", pipeline], env=target_env)
            return sw.measurement(imported())

        def verify_export(samples: list[Sample]) -> list[Check]:
            return [same_values(samples, "sha256", "identical dumps (sha256 of the SQL)")]

        def verify_import(samples: list[Sample]) -> list[Check]:
            return [every(samples, "every import restored the source exactly",
                          lambda w: w["checksum"] == expected,
                          f"{expected[0]:,} rows, same row hash sum as the source")]

        data = {"database_mb": round(size / 2**20),
                "gz_mb": round(reference.stat().st_size / 2**20, 1)}
        yield [
            Case("export", f"export of a {data['database_mb']} MB database to .sql.gz", [
                Variant("claude-db", "product", "claude-db export FILE.sql.gz", export_product),
                Variant("by-hand", "baseline", "pg_dump | gzip > FILE.sql.gz", export_baseline),
            ], rounds=rounds, warmup=ctx.options.warmup, goal=Goal(max_ratio=1.1),
                verify=verify_export, metrics=lambda _: data),
            Case("import", f"import of that dump ({data['gz_mb']} MB .sql.gz)", [
                Variant("claude-db", "product", "claude-db import FILE.sql.gz", import_product),
                Variant("by-hand", "baseline", "gunzip -c FILE.sql.gz | psql --single-transaction "
                        "-v ON_ERROR_STOP=1", import_baseline),
            ], rounds=rounds, warmup=ctx.options.warmup, goal=Goal(max_ratio=1.1),
                verify=verify_import, metrics=lambda _: data,
                notes=["the by-hand psql gets the product's flags (one transaction, stop at "
                       "the first error) so both do the same work"]),
        ]
    finally:
        for name in (SOURCE, TARGET):
            ctx.ws.cli("claude-session", "delete", "--yes", name, check=False)


def _load(url: str, megabytes: int) -> int:
    """Fill the source database to about ``megabytes``; return its size in bytes."""
    rows = max(1000, megabytes * 2**20 // BYTES_PER_ROW)
    pg.execute(url, f"""
        create table accounts (id int primary key, name text not null, email text not null);
        insert into accounts select g, 'account ' || g, 'user' || g || '@example.com'
            from generate_series(1, 1000) g;
        create table events (
            id bigint primary key, account int not null references accounts,
            kind text not null, payload text not null, amount numeric(12, 2) not null,
            at timestamptz not null);
        insert into events select g, 1 + g % 1000,
            (array['click', 'view', 'buy', 'refund'])[1 + g % 4],
            md5(g::text) || md5((g + 1)::text), (g % 100000) / 100.0,
            timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
            from generate_series(1, {rows}) g;
        create index events_account on events (account);
    """)
    pg.execute(url, "vacuum analyze")
    return int(pg.scalar(url, "select pg_database_size(current_database())"))


def _gunzipped_sha256(path: Path) -> str:
    """Hash of the SQL, less pg_dump's per-run random ``\\restrict`` key (PostgreSQL >= 15.14)."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as data:
        for line in data:
            if not line.startswith((b"\\restrict ", b"\\unrestrict ")):
                digest.update(line)
    return digest.hexdigest()
