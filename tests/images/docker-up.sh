#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io if needed, start
# dockerd in the background (unix socket + tcp://127.0.0.1:2375), wait for it.
# Idempotent: exits 0 at once when `docker info` already answers.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

LOG=${CLAUDE_DB_DOCKERD_LOG:-/var/log/claude-db-dockerd.log}
PIDFILE=${CLAUDE_DB_DOCKERD_PIDFILE:-/var/run/claude-db-dockerd.pid}
TCP=${CLAUDE_DB_DOCKERD_TCP:-tcp://127.0.0.1:2375}
TIMEOUT=${CLAUDE_DB_DOCKERD_TIMEOUT:-60}

# Honours the caller's DOCKER_HOST (unix socket by default, or the tcp endpoint
# this script opens: both reach the same daemon).
engine_up() { docker info >/dev/null 2>&1; }

if engine_up; then exit 0; fi
[ "$(id -u)" = 0 ] || die "docker is not answering and starting dockerd needs root"

if ! command -v dockerd >/dev/null 2>&1; then
    log "docker-up: installing Debian's docker.io (dockerd, containerd, runc, iptables)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # docker.io brings containerd, runc, iptables; it ships its own /usr/bin/docker
    # client, but a /usr/local/bin/docker that came first on PATH stays in front.
    apt-get install -y -qq --no-install-recommends docker.io iptables ca-certificates >/dev/null
fi
command -v docker >/dev/null 2>&1 || die "no docker client on PATH after installing docker.io"

# iptables: Debian defaults to the nft backend, which works on this kernel. If
# it does not answer (kernel without nf_tables), fall back to the legacy one;
# without any iptables, dockerd cannot give bridge networks NAT/outbound access.
if ! iptables -L -n >/dev/null 2>&1 && command -v iptables-legacy >/dev/null 2>&1 \
    && iptables-legacy -L -n >/dev/null 2>&1; then
    log "docker-up: iptables-nft unusable here, switching to iptables-legacy"
    update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
    update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null 2>&1 || true
fi

start_dockerd() {  # $@: extra dockerd flags
    # A stale pidfile from a dead daemon would make dockerd refuse to start.
    if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then rm -f "$PIDFILE"; fi
    mkdir -p "$(dirname "$LOG")"
    printf '\n=== %s docker-up: dockerd %s\n' "$(date -Is)" "$*" >>"$LOG"
    # setsid+nohup: the daemon must outlive this script and its caller's session.
    # shellcheck disable=SC2086  # CLAUDE_DB_DOCKERD_ARGS: extra flags, split on purpose
    # Each docker session takes a network: Docker's default address pools hold ~30, fewer
    # than the suite's workers can hold at once (twenty worktrees on one of them); 256 here
    setsid nohup dockerd \
        --host unix:///var/run/docker.sock --host "$TCP" \
        --default-address-pool "base=${CLAUDE_DB_DOCKERD_POOL:-10.200.0.0/16},size=24" \
        --pidfile "$PIDFILE" "$@" ${CLAUDE_DB_DOCKERD_ARGS:-} >>"$LOG" 2>&1 </dev/null &
    local pid=$! i
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if engine_up; then return 0; fi
        kill -0 "$pid" 2>/dev/null || return 1   # died: let the caller try another setup
        sleep 0.2
    done
    return 2
}

# overlay2 works on this machine's ext4 root; vfs is the slow but universal
# fallback (e.g. when /var/lib/docker sits on overlayfs itself).
if start_dockerd; then :; else
    rc=$?
    if [ "$rc" = 1 ] && tail -n 30 "$LOG" | grep -iE 'overlay|storage.driver|graphdriver' >/dev/null; then
        log "docker-up: dockerd failed with the default storage driver, retrying with vfs"
        start_dockerd --storage-driver=vfs || rc=$?
    fi
    if ! engine_up; then
        log "docker-up: dockerd did not answer within ${TIMEOUT}s; last lines of $LOG:"
        tail -n 25 "$LOG" >&2
        die "could not start dockerd"
    fi
fi
log "docker-up: dockerd running (pid $(cat "$PIDFILE" 2>/dev/null || echo '?'), unix:///var/run/docker.sock and $TCP, log $LOG)"
