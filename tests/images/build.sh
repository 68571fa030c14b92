#!/usr/bin/env bash
# Build the local test images (no registry is reachable, so nothing is pulled):
#   claude-db-test/debian:bookworm   debootstrap'ed base, `docker import`ed
#   claude-db-test/postgres:15       Debian's postgresql-15, official-image env contract
#   claude-db-test/mariadb:10.11     Debian's mariadb-server, official-image env contract
#   claude-db-test/session:latest    python3 + db clients + this project in /opt/claude-db
# Idempotent: every image carries a content-hash label and is skipped when the
# tag already has that hash. One line per image on stdout: built/reused + time.
#
# Env: PROJECT_ROOT (default: the repo holding this script) - where core/ and
#      plugins/*/ are read from; CLAUDE_DB_TEST_CACHE (default /var/cache/claude-db-test);
#      CLAUDE_DB_DEBIAN_MIRROR / CLAUDE_DB_DEBIAN_SECURITY_MIRROR override the
#      mirror otherwise read from the host's apt sources.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

PROJECT_ROOT=$(cd "${PROJECT_ROOT:-$here/../..}" && pwd)
CACHE=${CLAUDE_DB_TEST_CACHE:-/var/cache/claude-db-test}
SUITE=bookworm
PREFIX=claude-db-test
LABEL=org.claude-db.test.hash
# Bump to force a rebuild of the base when the recipe below changes.
BASE_RECIPE=2

"$here/docker-up.sh"
mkdir -p "$CACHE/logs"

# Concurrent test runs (e.g. pytest-xdist workers) must not build the same image twice.
exec 9>"$CACHE/build.lock"
flock 9

now() { date +%s%N; }
report() {  # tag, built|reused, start time from now()
    local ms=$((($(now) - $3) / 1000000))
    printf '%-34s %-7s %4d.%ds\n' "$1" "$2" $((ms / 1000)) $((ms % 1000 / 100))
}
label_of() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
image_id() { docker image inspect -f '{{ .Id }}' "$1"; }
sha() { sha256sum | cut -c1-16; }
# Content hash of a directory tree: paths + contents, minus build/editor junk.
tree_hash() {
    (cd "$1" && find . \( -name .git -o -name __pycache__ -o -name '*.egg-info' -o -name build \
            -o -name dist -o -name .pytest_cache -o -name .venv -o -name .mypy_cache \
            -o -name .ruff_cache -o -name .tox \) -prune -o -type f ! -name '*.py[co]' -print0 |
        LC_ALL=C sort -z | xargs -0 -r sha256sum) | sha
}

# docker build with the classic builder: the daemon is Debian's 20.10 and no
# buildx plugin is installed; output goes to a log shown only on failure.
docker_build() {  # name, hash, context dir, extra args...
    local name=$1 hash=$2 ctx=$3; shift 3
    local logf="$CACHE/logs/${name//[:\/]/_}.log"
    if ! DOCKER_BUILDKIT=0 docker build --rm --force-rm --label "$LABEL=$hash" \
        -t "$name" "$@" "$ctx" >"$logf" 2>&1; then
        tail -n 40 "$logf" >&2
        die "docker build of $name failed (full log: $logf)"
    fi
}

# --- base: debootstrap + docker import -------------------------------------
build_base() {
    local tag=$PREFIX/debian:$SUITE t0 mirror sec updates valid key tarball
    t0=$(now)
    mirror=$(debian_mirror "$SUITE")
    sec=$(debian_security_mirror "$SUITE")
    # Only list <suite>-updates when the host's mirror serves it.
    updates=$(host_apt_sources | awk -F'\t' -v m="$mirror" -v s="$SUITE-updates" \
        '($1 == m || $1 == m "/") && $2 == s { print "yes"; exit }')
    # The host's mirror may be a dated snapshot whose Release files are past
    # Valid-Until; the host's apt is then configured to accept that, and so must
    # the image's apt be.
    valid=$(apt-config dump 2>/dev/null | awk '$1 == "Acquire::Check-Valid-Until" { gsub(/[";]/, "", $2); print $2 }')
    key=$(printf '%s\n' "$BASE_RECIPE" "$SUITE" "$mirror" "$sec" "$updates" "$valid" | sha)
    BASE_ID=
    if [ "$(label_of "$tag")" = "$key" ]; then
        BASE_ID=$(image_id "$tag"); report "$tag" reused "$t0"; return
    fi
    tarball=$CACHE/debian-$SUITE-$key.tar
    if [ ! -s "$tarball" ]; then
        if ! command -v debootstrap >/dev/null 2>&1; then
            log "build: installing debootstrap"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        fi
        local rootfs include=
        case $mirror in https:*) include=--include=ca-certificates ;; esac
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        # shellcheck disable=SC2064
        trap "cleanup_rootfs '$rootfs'" EXIT
        if ! debootstrap --variant=minbase $include "$SUITE" "$rootfs" "$mirror" \
            >"$CACHE/logs/debootstrap.log" 2>&1; then
            tail -n 30 "$CACHE/logs/debootstrap.log" >&2
            die "debootstrap failed (log: $CACHE/logs/debootstrap.log)"
        fi
        {
            echo "deb $mirror $SUITE main"
            [ -z "$updates" ] || echo "deb $mirror $SUITE-updates main"
            [ -z "$sec" ] || echo "deb $sec $SUITE-security main"
        } >"$rootfs/etc/apt/sources.list"
        # Same small-image apt/dpkg settings Debian's official docker images use.
        cat >"$rootfs/etc/apt/apt.conf.d/90claude-db-test" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
APT
        [ "$valid" != false ] || echo 'Acquire::Check-Valid-Until "false";' >>"$rootfs/etc/apt/apt.conf.d/90claude-db-test"
        cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90claude-db-test" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
        # No init system in a container: package scripts must not try to start services.
        printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
        chmod +x "$rootfs/usr/sbin/policy-rc.d"
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log "$rootfs/etc/hostname"
        : >"$rootfs/etc/resolv.conf"   # docker bind-mounts its own
        tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        cleanup_rootfs "$rootfs"; trap - EXIT
        # Keep only the current tarball: older ones belong to another mirror/recipe.
        find "$CACHE" -maxdepth 1 -name "debian-$SUITE-*.tar" ! -name "${tarball##*/}" -delete
    fi
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["bash"]' \
        --change "LABEL $LABEL=$key" \
        "$tarball" "$tag" >/dev/null
    BASE_ID=$(image_id "$tag")
    report "$tag" built "$t0"
}

# debootstrap mounts /proc, /sys (and may bind /dev) inside the rootfs: unmount
# whatever is left before deleting, and never cross into another filesystem.
cleanup_rootfs() {
    local root=$1 m
    [ -d "$root" ] || return 0
    for m in $(awk -v r="$root" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$root"
}

# --- images built FROM the base with a Dockerfile ---------------------------
build_dockerfile_image() {  # tag, context dir
    local tag=$1 ctx=$2 t0 hash
    t0=$(now)
    hash=$(printf '%s\n' "$BASE_ID" "$(tree_hash "$ctx")" | sha)
    if [ "$(label_of "$tag")" = "$hash" ]; then report "$tag" reused "$t0"; return; fi
    docker_build "$tag" "$hash" "$ctx" --build-arg "BASE=$PREFIX/debian:$SUITE"
    report "$tag" built "$t0"
}

# --- session image: this project's distributions, installed from wheels -----
build_session() {
    local repo=$PREFIX/session t0 dirs=() d hash src pyver ctx
    t0=$(now)
    [ -f "$PROJECT_ROOT/core/pyproject.toml" ] && dirs+=("$PROJECT_ROOT/core")
    for d in "$PROJECT_ROOT"/plugins/*/; do
        [ -f "$d/pyproject.toml" ] && dirs+=("${d%/}")
    done
    src=
    for d in ${dirs[@]+"${dirs[@]}"}; do src+="${d#"$PROJECT_ROOT"/} $(tree_hash "$d")"$'\n'; done
    # Wheels are built by the host's Python and must match the image's (3.11).
    pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$pyver" = 3.11 ] || log "build: warning: host python3 is $pyver, the session image has 3.11; compiled wheels may not install"
    hash=$(printf '%s\n' "$BASE_ID" "$(tree_hash "$here/session")" "$pyver" "$src" | sha)
    if docker image inspect "$repo:$hash" >/dev/null 2>&1; then
        docker tag "$repo:$hash" "$repo:latest"
        report "$repo:latest" reused "$t0"; return
    fi
    ctx=$(mktemp -d "$CACHE/session-ctx.XXXXXX")
    cp -a "$here/session/." "$ctx/"
    mkdir -p "$ctx/wheels"
    if [ ${#dirs[@]} -gt 0 ]; then
        # Containers may not reach PyPI: resolve and build everything (the
        # project and its dependencies) here, install offline inside.
        if ! python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$ctx/wheels" \
            "${dirs[@]}" >"$CACHE/logs/session-wheels.log" 2>&1; then
            tail -n 30 "$CACHE/logs/session-wheels.log" >&2
            rm -rf "$ctx"; die "pip wheel failed for: ${dirs[*]}"
        fi
    fi
    docker_build "$repo:$hash" "$hash" "$ctx" --build-arg "BASE=$PREFIX/debian:$SUITE" -t "$repo:latest"
    rm -rf "$ctx"
    # Older source-hash tags are dead weight: untag them (layers shared with
    # :latest stay).
    docker image ls --format '{{.Repository}}:{{.Tag}}' "$repo" |
        grep -v -e ":latest$" -e ":$hash$" | xargs -r docker rmi >/dev/null 2>&1 || true
    report "$repo:latest" built "$t0"
    log "build: session image also tagged $repo:$hash (${#dirs[@]} project distribution(s))"
}

build_base
build_dockerfile_image "$PREFIX/postgres:15" "$here/postgres"
build_dockerfile_image "$PREFIX/mariadb:10.11" "$here/mariadb"
build_session
