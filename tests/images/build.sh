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
#      mirror otherwise read from the host's apt sources; CLAUDE_DB_TEST_PREFIX
#      (default claude-db-test) names the image repositories.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

PROJECT_ROOT=$(cd "${PROJECT_ROOT:-$here/../..}" && pwd)
CACHE=${CLAUDE_DB_TEST_CACHE:-/var/cache/claude-db-test}
SUITE=bookworm
PREFIX=${CLAUDE_DB_TEST_PREFIX:-claude-db-test}   # another prefix = an independent set (cold-build timing)
LABEL=org.claude-db.test.hash
# Bump to force a rebuild of the base when the recipe below changes.
BASE_RECIPE=3

bash "$here/docker-up.sh"
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
        '!done && ($1 == m || $1 == m "/") && $2 == s { print "yes"; done = 1 }')
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
        # What debootstrap installed before the excludes above existed.
        find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
        find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
        rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
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
    # shellcheck disable=SC2013  # /proc/mounts escapes blanks in paths
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
# Containers may not reach PyPI: the project and all its dependencies are built
# into wheels here, on the host, and installed offline inside. To keep a rebuild
# after a source edit short (seconds, not a minute), two things are cached under
# $CACHE: a wheelhouse of the dependencies and of the build backends, and a
# build venv with the backends installed (so no isolated build environment is
# created per distribution). pip goes to the index only when the offline
# attempt fails (a new or changed dependency).
build_wheels() {  # out dir, project dirs...
    local out=$1; shift
    local house=$CACHE/wheelhouse wlog=$CACHE/logs/session-wheels.log breqs own benv
    mkdir -p "$house"
    : >"$wlog"
    # Build requirements, one per line (they may contain blanks), and the
    # project's own distribution names (wheel-file spelling).
    mapfile -t breqs < <(python3 - "$@" <<'PY'
import sys, tomllib
for d in sys.argv[1:]:
    with open(d + "/pyproject.toml", "rb") as f:
        print(*tomllib.load(f).get("build-system", {}).get("requires", ["setuptools"]), sep="\n")
print("wheel")  # setuptools < 70.1 asks for it at build time (no isolation here)
PY
)
    own=$(python3 - "$@" <<'PY'
import re, sys, tomllib
for d in sys.argv[1:]:
    with open(d + "/pyproject.toml", "rb") as f:
        print(re.sub(r"[-_.]+", "_", tomllib.load(f)["project"]["name"]).lower())
PY
)
    benv=$CACHE/buildenv-$(printf '%s\n' "$(python3 -VV)" "${breqs[@]}" | LC_ALL=C sort -u | sha)
    if [ ! -x "$benv/bin/pip" ]; then
        rm -rf "$benv"
        python3 -m venv "$benv.tmp" >>"$wlog" 2>&1 || { tail -n 20 "$wlog" >&2; return 1; }
        local bpip=("$benv.tmp/bin/python" -m pip --disable-pip-version-check)
        if ! "${bpip[@]}" install --quiet --no-index --find-links "$house" "${breqs[@]}" >>"$wlog" 2>&1; then
            if ! "${bpip[@]}" download --quiet --only-binary :all: --dest "$house" "${breqs[@]}" >>"$wlog" 2>&1 ||
                ! "${bpip[@]}" install --quiet --no-index --find-links "$house" "${breqs[@]}" >>"$wlog" 2>&1; then
                tail -n 30 "$wlog" >&2; rm -rf "$benv.tmp"
                log "build: could not install the build backends: ${breqs[*]}"; return 1
            fi
        fi
        mv "$benv.tmp" "$benv"
        find "$CACHE" -maxdepth 1 -name 'buildenv-*' ! -name "${benv##*/}" -exec rm -rf {} +
    fi
    local pip=("$benv/bin/python" -m pip --disable-pip-version-check wheel --quiet
        --no-build-isolation --find-links "$house" --wheel-dir "$out")
    local online=
    if ! "${pip[@]}" --no-index "$@" >>"$wlog" 2>&1; then
        online=1
        rm -f "$out"/*.whl
        # Last resort: pip's usual isolated builds (a backend that needs more
        # than its declared requirements).
        if ! "${pip[@]}" "$@" >>"$wlog" 2>&1 && { rm -f "$out"/*.whl;
            ! python3 -m pip --disable-pip-version-check wheel --quiet --find-links "$house" \
                --wheel-dir "$out" "$@" >>"$wlog" 2>&1; }; then
            tail -n 30 "$wlog" >&2
            log "build: pip wheel failed for: $*"; return 1
        fi
    fi
    # out/deps: the dependencies (byte-identical from one build to the next, so
    # the image layer installing them stays cached); out/project: our own.
    # The wheelhouse gets the dependencies, never the project's own wheels (a
    # stale one must not stand in for the sources).
    local w n
    mkdir -p "$out/deps" "$out/project"
    for w in "$out"/*.whl; do
        n=${w##*/}; n=${n%%-*}; n=${n,,}
        if grep -qxF "$n" <<<"$own"; then mv "$w" "$out/project/"
        else
            [ -z "$online" ] || cp -n "$w" "$house/"
            mv "$w" "$out/deps/"
        fi
    done
}

build_session() {
    local repo=$PREFIX/session t0 dirs=() d hash src pyver ctx
    t0=$(now)
    for d in "$PROJECT_ROOT"/core/ "$PROJECT_ROOT"/plugins/*/; do
        if [ -f "$d/pyproject.toml" ]; then dirs+=("${d%/}"); fi
    done
    src=
    for d in ${dirs[@]+"${dirs[@]}"}; do src+="${d#"$PROJECT_ROOT"/} $(tree_hash "$d")"$'\n'; done
    # Wheels are built by the host's Python and must match the image's (3.11).
    pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$pyver" = 3.11 ] || log "build: warning: host python3 is $pyver, the session image has 3.11; compiled wheels may not install"
    # build.sh itself too: it decides how the wheels are made.
    hash=$(printf '%s\n' "$BASE_ID" "$(tree_hash "$here/session")" "$(sha <"$here/build.sh")" \
        "$pyver" "$src" | sha)
    if docker image inspect "$repo:$hash" >/dev/null 2>&1; then
        docker tag "$repo:$hash" "$repo:latest"
        report "$repo:latest" reused "$t0"; return
    fi
    ctx=$(mktemp -d "$CACHE/session-ctx.XXXXXX")
    cp -a "$here/session/." "$ctx/"
    mkdir -p "$ctx/wheels/deps" "$ctx/wheels/project"
    [ ${#dirs[@]} -eq 0 ] || build_wheels "$ctx/wheels" "${dirs[@]}" || { rm -rf "$ctx"; exit 1; }
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
# The three images only share the base: build them side by side (mostly apt
# downloads and unpacking; a cold build gets much shorter).
pids=()
build_dockerfile_image "$PREFIX/postgres:15" "$here/postgres" & pids+=($!)
build_dockerfile_image "$PREFIX/mariadb:10.11" "$here/mariadb" & pids+=($!)
build_session & pids+=($!)
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || die "some images failed to build (see above)"
# Images replaced by a rebuild are left untagged: drop those no container uses
# (only ours, selected by label; the classic builder's layer cache is kept).
docker image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true
