#!/usr/bin/env bash
# Entrypoint honouring the official `postgres` image's environment contract:
#   POSTGRES_PASSWORD   superuser password (required unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER       superuser name (default postgres)
#   POSTGRES_DB         database created on first start (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS  extra initdb arguments
#   POSTGRES_HOST_AUTH_METHOD  pg_hba method for remote hosts (default scram-sha-256)
#   PGDATA              data directory (default /var/lib/postgresql/data, a VOLUME)
#   *_FILE variants of POSTGRES_PASSWORD/USER/DB/INITDB_ARGS read the value from a file.
# First start (empty PGDATA): initdb, then a TEMPORARY server on the unix socket
# only (no TCP, so clients cannot see a half-initialised database), create the
# database, run /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|*.sql.xz, stop it.
# Then, always: exec the real server as the postgres user, listening on all
# addresses. Existing data (restart) skips the init phase.
set -Eeuo pipefail

# VAR or VAR_FILE (for docker secrets), not both.
file_env() {
    local var=$1 fvar="${1}_FILE" def=${2:-}
    if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
        echo >&2 "error: both $var and $fvar are set (but are exclusive)"; exit 1
    fi
    local val=$def
    if [ -n "${!var:-}" ]; then val=${!var}; elif [ -n "${!fvar:-}" ]; then val=$(<"${!fvar}"); fi
    export "$var"="$val"; unset "$fvar"
}

# `docker run image -c foo=bar` means `postgres -c foo=bar`.
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi

export PGDATA=${PGDATA:-/var/lib/postgresql/data}

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    # Fix ownership (a fresh named volume is root-owned), then drop privileges.
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA" || :
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    mkdir -p /var/run/postgresql
    chown postgres:postgres /var/run/postgresql; chmod 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

psql_init() {  # psql over the temporary server's unix socket, stop on the first error
    psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" "$@"
}

init_cluster() {
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        cat >&2 <<'MSG'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".
       (Or POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password.)
MSG
        exit 1
    fi

    # The password goes through a pipe, never argv. (The <(...) must sit on the
    # initdb command line itself: its fd is closed once that command ends.)
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is word-split on purpose
    if [ -n "$POSTGRES_PASSWORD" ]; then
        initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") $POSTGRES_INITDB_ARGS
    else
        initdb --username="$POSTGRES_USER" $POSTGRES_INITDB_ARGS
    fi

    # Remote clients authenticate; the real server listens everywhere.
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

    # Temporary server: unix socket only, so nothing is reachable over TCP yet.
    PGUSER=$POSTGRES_USER pg_ctl -D "$PGDATA" -w \
        -o "-c listen_addresses='' -p ${PGPORT:-5432}" start

    if [ "$POSTGRES_DB" != postgres ]; then
        local exists
        exists=$(psql_init --dbname postgres --set db="$POSTGRES_DB" --tuples-only <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")
        if [ -z "${exists// /}" ]; then
            psql_init --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
        fi
    fi

    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
            *.sh)
                # shellcheck disable=SC1090  # init scripts are the user's
                if [ -x "$f" ]; then echo "$0: running $f"; "$f"
                else echo "$0: sourcing $f"; . "$f"; fi ;;
            *.sql) echo "$0: running $f"; psql_init --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | psql_init --dbname "$POSTGRES_DB" ;;
            *.sql.xz) echo "$0: running $f"; xzcat "$f" | psql_init --dbname "$POSTGRES_DB" ;;
            *.sql.zst) echo "$0: running $f"; zstd -dc "$f" | psql_init --dbname "$POSTGRES_DB" ;;
            *) [ ! -e "$f" ] || echo "$0: ignoring $f" ;;
        esac
    done

    pg_ctl -D "$PGDATA" -m fast -w stop
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
}

if [ "$1" = postgres ]; then
    if [ -s "$PGDATA/PG_VERSION" ]; then
        echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
    else
        init_cluster
    fi
fi

exec "$@"
