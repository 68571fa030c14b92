#!/usr/bin/env bash
# Entrypoint honouring the official `mariadb`/`mysql` images' environment
# contract (MARIADB_* wins over MYSQL_*; *_FILE variants read a file):
#   MARIADB_ROOT_PASSWORD / MYSQL_ROOT_PASSWORD   root password (root@localhost and root@%)
#   MARIADB_ALLOW_EMPTY_ROOT_PASSWORD / MYSQL_ALLOW_EMPTY_PASSWORD   allow an empty one
#   MARIADB_RANDOM_ROOT_PASSWORD / MYSQL_RANDOM_ROOT_PASSWORD        generate and print one
#   MARIADB_ROOT_HOST / MYSQL_ROOT_HOST           host part of the remote root (default %)
#   MARIADB_DATABASE / MYSQL_DATABASE             database created on first start
#   MARIADB_USER / MYSQL_USER + MARIADB_PASSWORD / MYSQL_PASSWORD
#                                                 user@% created, ALL on that database
# Data in /var/lib/mysql (a VOLUME). First start (no mysql/ system schema there):
# mariadb-install-db, then a TEMPORARY server with --skip-networking (socket
# only, so clients cannot see a half-initialised server) sets up root, the
# database and the user and runs /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|
# *.sql.xz, then is stopped. Then, always: exec the real mariadbd as mysql,
# listening on 0.0.0.0:3306. Timezone tables are not loaded.
set -Eeuo pipefail

DATADIR=/var/lib/mysql
SOCKET=/run/mysqld/mysqld.sock

log() { printf '%s [Entrypoint]: %s\n' "$(date -u '+%F %T')" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# pick VAR MARIADB_X MYSQL_X: the first non-empty of those variables, or of
# their *_FILE variants (docker secrets), goes into VAR.
pick() {
    local var=$1 v f val=; shift
    for v in "$@"; do
        f="${v}_FILE"
        if [ -n "${!v:-}" ]; then val=${!v}; break; fi
        if [ -n "${!f:-}" ]; then val=$(<"${!f}"); break; fi
    done
    printf -v "$var" '%s' "$val"
}

# `docker run image --foo` means `mariadbd --foo`.
if [ "${1:0:1}" = '-' ]; then set -- mariadbd "$@"; fi

is_server() { [ "$1" = mariadbd ] || [ "$1" = mysqld ]; }

if is_server "$1" && [ "$(id -u)" = 0 ]; then
    # A fresh named volume is root-owned: fix ownership, then drop privileges.
    mkdir -p "$DATADIR" /run/mysqld
    find "$DATADIR" /run/mysqld \! -user mysql -exec chown mysql:mysql '{}' +
    exec setpriv --reuid=mysql --regid=mysql --init-groups "${BASH_SOURCE[0]}" "$@"
fi

sql_escape() { sed -e "s/\\\\/\\\\\\\\/g" -e "s/'/\\\\'/g" <<<"$1"; }   # for '...' literals
ident_escape() { printf '%s' "${1//\`/\`\`}"; }                       # for `...` identifiers

init_datadir() {
    pick ROOT_PASSWORD MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD
    pick ALLOW_EMPTY MARIADB_ALLOW_EMPTY_ROOT_PASSWORD MYSQL_ALLOW_EMPTY_PASSWORD
    pick RANDOM_ROOT MARIADB_RANDOM_ROOT_PASSWORD MYSQL_RANDOM_ROOT_PASSWORD
    pick ROOT_HOST MARIADB_ROOT_HOST MYSQL_ROOT_HOST
    pick DB_NAME MARIADB_DATABASE MYSQL_DATABASE
    pick DB_USER MARIADB_USER MYSQL_USER
    pick DB_PASSWORD MARIADB_PASSWORD MYSQL_PASSWORD
    : "${ROOT_HOST:=%}"

    if [ -z "$ROOT_PASSWORD" ] && [ -z "$ALLOW_EMPTY" ] && [ -z "$RANDOM_ROOT" ]; then
        die "Database is uninitialized and password option is not specified
	You need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD and MARIADB_RANDOM_ROOT_PASSWORD
	(or the MYSQL_* equivalents: MYSQL_ROOT_PASSWORD, MYSQL_ALLOW_EMPTY_PASSWORD, MYSQL_RANDOM_ROOT_PASSWORD)"
    fi
    if [ "$DB_USER" = root ]; then
        die "MYSQL_USER/MARIADB_USER=root is not allowed: root is set up with the ROOT_PASSWORD variables"
    fi
    if [ -n "$DB_USER" ] && [ -z "$DB_PASSWORD" ]; then
        die "MYSQL_USER/MARIADB_USER is set but MYSQL_PASSWORD/MARIADB_PASSWORD is not"
    fi
    if [ -n "$RANDOM_ROOT" ] && [ -z "$ROOT_PASSWORD" ]; then
        ROOT_PASSWORD=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 || :)
        log "GENERATED ROOT PASSWORD: $ROOT_PASSWORD"
    fi

    log "Initializing database files"
    mariadb-install-db --datadir="$DATADIR" --rpm --auth-root-authentication-method=normal \
        --skip-test-db --skip-name-resolve --skip-log-bin --default-time-zone=SYSTEM \
        --loose-innodb_buffer_pool_load_at_startup=0 --loose-innodb_buffer_pool_dump_at_shutdown=0
    log "Database files initialized"

    # Temporary server: socket only, invisible from the network.
    log "Starting temporary server"
    "$@" --skip-networking --socket="$SOCKET" --default-time-zone=SYSTEM --skip-log-bin \
        --wsrep_on=OFF --loose-innodb_buffer_pool_load_at_startup=0 &
    local pid=$! i
    for ((i = 0; i < 300; i++)); do
        if mariadb-admin --socket="$SOCKET" -uroot ping >/dev/null 2>&1; then break; fi
        kill -0 "$pid" 2>/dev/null || die "temporary server exited during startup"
        sleep 0.1
    done
    mariadb-admin --socket="$SOCKET" -uroot ping >/dev/null 2>&1 || die "temporary server did not start in 30s"
    log "Temporary server started."

    local rootpw userpw db_i
    rootpw=$(sql_escape "$ROOT_PASSWORD")
    {
        echo "SET @@SESSION.SQL_LOG_BIN=0;"
        echo "SET @@SESSION.SQL_MODE=REPLACE(@@SESSION.SQL_MODE, 'NO_BACKSLASH_ESCAPES', '');"
        # Only root@localhost (socket) and root@ROOT_HOST remain.
        echo "DROP USER IF EXISTS root@'127.0.0.1', root@'::1';"
        echo "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\'', @@hostname,'\'');"
        echo "DELETE FROM mysql.global_priv WHERE User = '';"
        echo "SET PASSWORD FOR 'root'@'localhost' = PASSWORD('$rootpw');"
        if [ "$ROOT_HOST" != localhost ]; then
            echo "CREATE USER 'root'@'$(sql_escape "$ROOT_HOST")' IDENTIFIED BY '$rootpw';"
            echo "GRANT ALL ON *.* TO 'root'@'$(sql_escape "$ROOT_HOST")' WITH GRANT OPTION;"
            echo "GRANT PROXY ON ''@'%' TO 'root'@'$(sql_escape "$ROOT_HOST")' WITH GRANT OPTION;"
        fi
        echo "DROP DATABASE IF EXISTS test;"
        if [ -n "$DB_NAME" ]; then
            db_i=$(ident_escape "$DB_NAME")
            echo "CREATE DATABASE IF NOT EXISTS \`$db_i\`;"
        fi
        if [ -n "$DB_USER" ]; then
            userpw=$(sql_escape "$DB_PASSWORD")
            echo "CREATE USER '$(sql_escape "$DB_USER")'@'%' IDENTIFIED BY '$userpw';"
            [ -z "$DB_NAME" ] || echo "GRANT ALL ON \`$db_i\`.* TO '$(sql_escape "$DB_USER")'@'%';"
        fi
        echo "FLUSH PRIVILEGES;"
    } | mariadb --socket="$SOCKET" -uroot --database=mysql

    # Root now has its password: give the client a private option file for the
    # init scripts (not on the command line, not in the environment).
    local cnf
    cnf=$(mktemp /run/mysqld/client.XXXXXX.cnf)
    printf '[client]\nuser=root\npassword="%s"\nsocket=%s\n' \
        "$(sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' <<<"$ROOT_PASSWORD")" "$SOCKET" >"$cnf"
    local client=(mariadb --defaults-extra-file="$cnf")
    [ -z "$DB_NAME" ] || client+=(--database="$DB_NAME")
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
            *.sh)
                # shellcheck disable=SC1090  # init scripts are the user's
                if [ -x "$f" ]; then log "running $f"; "$f"
                else log "sourcing $f"; . "$f"; fi ;;
            *.sql) log "running $f"; "${client[@]}" <"$f" ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | "${client[@]}" ;;
            *.sql.xz) log "running $f"; xzcat "$f" | "${client[@]}" ;;
            *.sql.zst) log "running $f"; zstd -dc "$f" | "${client[@]}" ;;
            *) [ ! -e "$f" ] || log "ignoring $f" ;;
        esac
    done
    rm -f "$cnf"

    log "Stopping temporary server"
    kill "$pid"            # SIGTERM = clean shutdown
    wait "$pid" || :
    log "Temporary server stopped"
    echo
    log "MariaDB init process done. Ready for start up."
    echo
}

if is_server "$1"; then
    if [ -d "$DATADIR/mysql" ]; then
        log "Database directory appears to contain a database; skipping initialization"
    else
        init_datadir "$@"
    fi
fi

exec "$@"
