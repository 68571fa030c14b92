"""Peer: testcontainers-python's ``PostgresContainer`` started, then the first query.

Prints ``READY <json>`` once answered, waits for a line on stdin, then stops the
container. Argument: JSON with ``image``, ``password``, ``dbname``, ``query``.
Ryuk (testcontainers' reaper container) is off: no registry is reachable to pull it,
and the container is removed here anyway.
"""

import json
import os
import sys

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import psycopg

try:  # testcontainers >= 4.9 moved the module; the old path still works, with a warning
    from testcontainers.community.postgres import PostgresContainer
except ImportError:
    from testcontainers.postgres import PostgresContainer

args = json.loads(sys.argv[1])
container = PostgresContainer(
    args["image"], username="postgres", password=args["password"], dbname=args["dbname"],
    driver=None,
)
container.start()
try:
    with psycopg.connect(container.get_connection_url()) as conn:
        row = conn.execute(args["query"]).fetchone()
    assert row is not None
    keys = ("user", "database", "version", "backend_pid")
    answer = dict(zip(keys, row, strict=True))
    answer["container"] = container.get_wrapped_container().id
    print("READY " + json.dumps(answer), flush=True)
    sys.stdin.readline()
finally:
    container.stop()
