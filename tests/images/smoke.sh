#!/usr/bin/env bash
# End-to-end check of the images from build.sh against a real daemon: env
# contracts, auth over TCP on a user-defined network (DNS alias), init scripts,
# no TCP during the init phase, data kept across restarts. Everything it creates
# carries the label claude-db-test.smoke=<run id> and is removed on exit.
# Usage: bash tests/images/smoke.sh   (runs build.sh first; exits non-zero on any failure)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$here/build.sh" >/dev/null

P=${CLAUDE_DB_TEST_PREFIX:-claude-db-test}   # image repositories, as in build.sh
RUN=cdbsmoke$$
LBL=claude-db-test.smoke=$RUN
NET=$RUN-net
tmp=$(mktemp -d)
passed=0 failed=0

cleanup() {
    # -v: containers without a named volume got anonymous ones (the images declare VOLUMEs).
    docker ps -aq --filter "label=$LBL" | xargs -r docker rm -f -v >/dev/null 2>&1 || true
    docker network ls -q --filter "label=$LBL" | xargs -r docker network rm >/dev/null 2>&1 || true
    docker volume ls -q --filter "label=$LBL" | xargs -r docker volume rm >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

ok() { passed=$((passed + 1)); echo "ok   - $*"; }
nok() { failed=$((failed + 1)); echo "FAIL - $*"; }
check() {  # description, command...: passes when the command succeeds
    local d=$1; shift
    if "$@" >"$tmp/out" 2>&1; then ok "$d"; else nok "$d"; sed 's/^/       /' "$tmp/out" | tail -n 15; fi
}
refute() {  # description, command...: passes when the command fails
    local d=$1; shift
    if "$@" >"$tmp/out" 2>&1; then nok "$d (unexpectedly succeeded)"; sed 's/^/       /' "$tmp/out" | tail -n 5; else ok "$d"; fi
}
run() { docker run -d --label "$LBL" --network "$NET" "$@" >/dev/null; }
cx() { docker exec "$RUN-client" "$@"; }            # command in the client container
wait_for() {  # seconds, command...: poll every 50 ms
    local end=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do [ $SECONDS -lt "$end" ] || return 1; sleep 0.05; done
}
log_has() { docker logs "$1" 2>&1 | grep -- "$2" >/dev/null; }  # not -q: SIGPIPE + pipefail

docker network create --label "$LBL" "$NET" >/dev/null
run --name "$RUN-client" $P/session:latest
check "DOCKER_HOST=tcp://127.0.0.1:2375 reaches the daemon" \
    env DOCKER_HOST=tcp://127.0.0.1:2375 docker inspect "$RUN-client"

# Init scripts: a slow one (a window to probe TCP during init) and a .sql one.
mkdir -p "$tmp/pginit" "$tmp/myinit"
printf 'echo "smoke: init script running"; sleep 4\n' >"$tmp/pginit/10-slow.sh"
printf 'CREATE TABLE from_init (x int); INSERT INTO from_init VALUES (7);\n' >"$tmp/pginit/20-table.sql"
cp "$tmp/pginit/10-slow.sh" "$tmp/myinit/10-slow.sh"
cp "$tmp/pginit/20-table.sql" "$tmp/myinit/20-table.sql"
chmod -R a+rX "$tmp"

# ---------------------------------------------------------------- PostgreSQL
docker volume create --label "$LBL" "$RUN-pgdata" >/dev/null
run --name "$RUN-pg" --network-alias "$RUN-pgalias" -v "$RUN-pgdata:/var/lib/postgresql/data" \
    -v "$tmp/pginit:/docker-entrypoint-initdb.d:ro" \
    -e POSTGRES_PASSWORD=s3cret -e POSTGRES_DB=appdb $P/postgres:15
PGURL="postgresql://postgres:s3cret@$RUN-pgalias:5432/appdb"
check "pg: init script started" wait_for 30 log_has "$RUN-pg" "smoke: init script running"
check "pg: during init the temporary server answers on the unix socket" docker exec "$RUN-pg" pg_isready
# pg_isready exit 2 = "no response" (refused); the alias itself must resolve.
check "pg: during init nothing listens on TCP" cx bash -c \
    "getent hosts $RUN-pgalias && { pg_isready -h $RUN-pgalias -t 2; [ \$? = 2 ]; }"
check "pg: ready over TCP after init" wait_for 60 cx psql "$PGURL" -c 'select 1'
check "pg: alias and container name resolve" cx getent hosts "$RUN-pgalias" "$RUN-pg"
check "pg: select 1 with the right password" cx psql "$PGURL" -c 'select 1'
refute "pg: wrong password is refused" cx psql "postgresql://postgres:WRONG@$RUN-pgalias:5432/appdb" -c 'select 1'
check "pg: .sql init script ran in POSTGRES_DB" \
    bash -c "[ \"\$(docker exec $RUN-client psql '$PGURL' -Atc 'select x from from_init')\" = 7 ]"
cx psql "$PGURL" -qc 'create table kept (v text); insert into kept values ($$still here$$)' >/dev/null
docker restart "$RUN-pg" >/dev/null
check "pg: ready again after restart" wait_for 60 cx psql "$PGURL" -c 'select 1'
check "pg: restart skipped init" log_has "$RUN-pg" "Skipping initialization"
check "pg: data kept across restart" \
    bash -c "[ \"\$(docker exec $RUN-client psql '$PGURL' -Atc 'select v from kept')\" = 'still here' ]"
check "pg: psql/pg_dump/pg_isready via docker exec" bash -c \
    "docker exec $RUN-pg pg_dump -U postgres appdb | grep -q 'CREATE TABLE public.kept' && docker exec $RUN-pg pg_isready -q"
check "pg: server runs as postgres" bash -c "docker exec $RUN-pg ps -o user= -p 1 2>/dev/null | grep -qx postgres || docker exec $RUN-pg grep -q '^Uid:[[:space:]]*100[[:space:]]' /proc/1/status"

run --name "$RUN-pg2" --network-alias "$RUN-pg2alias" -e POSTGRES_USER=alice -e POSTGRES_PASSWORD=pw2 \
    $P/postgres:15
check "pg: POSTGRES_USER without POSTGRES_DB gets a database named after the user" \
    wait_for 60 cx psql "postgresql://alice:pw2@$RUN-pg2alias:5432/alice" -c 'select 1'
docker run --label "$LBL" --name "$RUN-pg3" $P/postgres:15 >/dev/null 2>&1 || true
check "pg: no POSTGRES_PASSWORD -> exits with an error" bash -c \
    "[ \"\$(docker inspect -f '{{.State.ExitCode}}' $RUN-pg3)\" != 0 ] && docker logs $RUN-pg3 2>&1 | grep -q 'superuser password is not specified'"

# ------------------------------------------------------------------- MariaDB
docker volume create --label "$LBL" "$RUN-mydata" >/dev/null
run --name "$RUN-my" --network-alias "$RUN-myalias" -v "$RUN-mydata:/var/lib/mysql" \
    -v "$tmp/myinit:/docker-entrypoint-initdb.d:ro" \
    -e MYSQL_ROOT_PASSWORD=r00t -e MYSQL_DATABASE=appdb -e MYSQL_USER=app -e MYSQL_PASSWORD=s3cret \
    $P/mariadb:10.11
MY=(mysql -h "$RUN-myalias" -P 3306)
check "my: init script started" wait_for 60 log_has "$RUN-my" "smoke: init script running"
check "my: during init the temporary server answers on the socket" \
    docker exec "$RUN-my" mariadb-admin --socket=/run/mysqld/mysqld.sock -uroot -pr00t ping
# A raw TCP connect to the resolved alias must be refused (nothing listens yet).
check "my: during init nothing listens on TCP" cx bash -c \
    "getent hosts $RUN-myalias && ! timeout 3 bash -c 'exec 3<>/dev/tcp/$RUN-myalias/3306' 2>/tmp/err; grep -q 'Connection refused' /tmp/err"
check "my: ready over TCP after init" wait_for 60 cx "${MY[@]}" -uapp -ps3cret appdb -e 'select 1'
check "my: user gets the database" cx "${MY[@]}" -uapp -ps3cret appdb -e 'create table kept (v text); insert into kept values ("still here")'
refute "my: user has nothing outside its database" cx "${MY[@]}" -uapp -ps3cret -e 'create database other'
refute "my: wrong user password is refused" cx "${MY[@]}" -uapp -pWRONG appdb -e 'select 1'
check "my: root over TCP with MYSQL_ROOT_PASSWORD" cx "${MY[@]}" -uroot -pr00t -e 'select 1'
refute "my: wrong root password is refused" cx "${MY[@]}" -uroot -pWRONG -e 'select 1'
check "my: .sql init script ran in MYSQL_DATABASE" \
    bash -c "[ \"\$(docker exec $RUN-client mysql -h $RUN-myalias -uapp -ps3cret appdb -Ne 'select x from from_init')\" = 7 ]"
docker restart "$RUN-my" >/dev/null
check "my: ready again after restart" wait_for 60 cx "${MY[@]}" -uapp -ps3cret appdb -e 'select 1'
check "my: restart skipped init" log_has "$RUN-my" "skipping initialization"
check "my: data kept across restart" \
    bash -c "[ \"\$(docker exec $RUN-client mysql -h $RUN-myalias -uapp -ps3cret appdb -Ne 'select v from kept')\" = 'still here' ]"
check "my: mysql/mysqldump/mariadb-dump/mysqladmin via docker exec" bash -c \
    "docker exec $RUN-my mysqldump -uroot -pr00t appdb | grep -q 'CREATE TABLE .kept.' && docker exec $RUN-my mariadb-dump -uroot -pr00t appdb >/dev/null && docker exec $RUN-my mysqladmin -uroot -pr00t status && docker exec $RUN-my mysql -uroot -pr00t -e 'select 1'"

run --name "$RUN-my2" --network-alias "$RUN-my2alias" -e MARIADB_RANDOM_ROOT_PASSWORD=1 \
    -e MARIADB_DATABASE=db2 -e MARIADB_USER=bob -e MARIADB_PASSWORD="it's \"q\"" $P/mariadb:10.11
check "my: MARIADB_* vars, password with quotes" \
    wait_for 60 cx mysql -h "$RUN-my2alias" -ubob "-pit's \"q\"" db2 -e 'select 1'
rootpw=$(docker logs "$RUN-my2" 2>&1 | sed -n 's/.*GENERATED ROOT PASSWORD: //p' | head -n1)
check "my: MARIADB_RANDOM_ROOT_PASSWORD is printed and works" cx mysql -h "$RUN-my2alias" -uroot "-p$rootpw" -e 'select 1'
docker run --label "$LBL" --name "$RUN-my3" $P/mariadb:10.11 >/dev/null 2>&1 || true
check "my: no root password option -> exits with an error" bash -c \
    "[ \"\$(docker inspect -f '{{.State.ExitCode}}' $RUN-my3)\" != 0 ] && docker logs $RUN-my3 2>&1 | grep -q 'password option is not specified'"

# ------------------------------------------------------------------- session
check "session: python 3.11, clients and tools on PATH" cx bash -c \
    'python3 -c "import sys; assert sys.version_info[:2] == (3, 11)" && command -v psql mariadb mysql ping ps pip >/dev/null && [ "$(command -v python3)" = /opt/claude-db/bin/python3 ]'

if [ -f "${PROJECT_ROOT:-$here/../..}/core/pyproject.toml" ]; then
    check "session: the project's claude-db CLI is installed" cx claude-db --help
fi

echo "smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
