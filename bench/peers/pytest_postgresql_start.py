"""Peer: pytest-postgresql's process fixture, then its client fixture, then the first query.

Does what ``postgresql_proc`` + ``postgresql`` do for a test, without pytest around it:
``PostgreSQLExecutor.start()`` (initdb every time, ``pg_ctl start -w``, TCP check),
``wait_for_postgres()``, the template database, the test database made from it, a
connection and the query. Prints ``READY <json>`` once answered, waits for a line on
stdin, then tears down like the fixtures do. Runs as the unprivileged server user.
Argument: JSON with ``pg_ctl``, ``base`` (a directory it owns), ``dbname``, ``query``.
"""

import json
import sys
from pathlib import Path

import port_for
import psycopg
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

args = json.loads(sys.argv[1])
base = Path(args["base"])
port = port_for.get_port(None)  # the fixture's port=None: any free port
assert port is not None
executor = PostgreSQLExecutor(
    executable=args["pg_ctl"], host="127.0.0.1", port=port,
    datadir=str(base / f"data-{port}"), unixsocketdir=str(base),
    logfile=str(base / f"postgresql.{port}.log"), startparams="-w", dbname=args["dbname"],
    user="postgres", password=None, options="", postgres_options="",
)
executor.start()
executor.wait_for_postgres()
template = DatabaseJanitor(
    user=executor.user, host=executor.host, port=executor.port,
    dbname=executor.template_dbname, maintenance_dbname=executor.maintenance_dbname,
    as_template=True, password=executor.password,
)
template.init()
database = DatabaseJanitor(
    user=executor.user, host=executor.host, port=executor.port, dbname=executor.dbname,
    template_dbname=executor.template_dbname, maintenance_dbname=executor.maintenance_dbname,
    password=executor.password,
)
database.init()
conn = psycopg.connect(dbname=executor.dbname, user=executor.user, password=executor.password,
                       host=executor.host, port=executor.port, options=executor.options)
row = conn.execute(args["query"]).fetchone()
assert row is not None
keys = ("user", "database", "version", "backend_pid")
print("READY " + json.dumps(dict(zip(keys, row, strict=True))), flush=True)
sys.stdin.readline()
conn.close()
database.drop()
template.drop()
executor.stop()
executor.clean_directory()
