#!/usr/bin/env bash
# Entrypoint honouring the official `mongo` image's environment contract, in front of the
# SecantusDB stand-in:
#   MONGO_INITDB_ROOT_USERNAME, MONGO_INITDB_ROOT_PASSWORD  both or neither: a root user in
#       "admin", and the server then requires authentication
#   MONGO_INITDB_DATABASE  the database /docker-entrypoint-initdb.d/*.js scripts run against
# First start (empty /data/db): a TEMPORARY server on 127.0.0.1 only (nothing outside the
# container can reach it), create the root user, run /docker-entrypoint-initdb.d/*.sh|*.js,
# stop it. Then, always: the real server on all addresses, port 27017, as user mongodb.
set -Eeuo pipefail

DATA=/data/db
if [ "${1:-}" = mongod ]; then shift; fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$DATA"
    chown -R mongodb:mongodb "$DATA"
    export HOME=/var/lib/mongodb
    cd "$HOME"
    exec setpriv --reuid=mongodb --regid=mongodb --init-groups "${BASH_SOURCE[0]}" mongod "$@"
fi

user=${MONGO_INITDB_ROOT_USERNAME:-}
password=${MONGO_INITDB_ROOT_PASSWORD:-}
if [ -n "$user" ] && [ -z "$password" ] || [ -z "$user" ] && [ -n "$password" ]; then
    echo >&2 "error: MONGO_INITDB_ROOT_USERNAME and MONGO_INITDB_ROOT_PASSWORD go together"
    exit 1
fi
server=(/opt/standin/bin/secantusd-py --storage-path "$DATA" --standalone
        --log-level WARNING --cache-size 256M)

if [ -z "$(ls -A "$DATA")" ]; then
    "${server[@]}" --host 127.0.0.1 --port 27017 &
    temporary=$!
    # The password goes through the environment, never argv.
    /opt/standin/bin/python - <<'PY'
import os, time
from pymongo import MongoClient
from pymongo.errors import PyMongoError

client = MongoClient("mongodb://127.0.0.1:27017/?directConnection=true",
                     serverSelectionTimeoutMS=1000)
deadline = time.monotonic() + 120
while True:
    try:
        client.admin.command("ping")
        break
    except PyMongoError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
if os.environ.get("MONGO_INITDB_ROOT_USERNAME"):
    client.admin.command("createUser", os.environ["MONGO_INITDB_ROOT_USERNAME"],
                         pwd=os.environ["MONGO_INITDB_ROOT_PASSWORD"], roles=["root"])
PY
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) echo "running $f"; . "$f" ;;
            *.js) echo "running $f"
                  mongosh --quiet "mongodb://127.0.0.1:27017/${MONGO_INITDB_DATABASE:-test}" "$f" ;;
            *) [ -e "$f" ] && echo "ignoring $f" ;;
        esac
    done
    kill "$temporary"
    wait "$temporary" || true
fi

auth=()
[ -z "$user" ] || auth=(--auth)
exec "${server[@]}" --host 0.0.0.0 --port 27017 "${auth[@]}" "$@"
