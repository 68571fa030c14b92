#!/usr/bin/env bash
# A private Docker engine for the tests, standing in for "another machine":
#
#   private-dockerd.sh up DIR         start it; DIR (new or empty) holds all its state
#   private-dockerd.sh start DIR      start its dockerd again after it stopped (same roots)
#   private-dockerd.sh down DIR       stop what `up` started (by pid), remove it all
#
# In a network namespace of its own: a veth pair 10.213.X.Y+1/30 (here) <->
# 10.213.X.Y+2/30 (there; X.Y from DIR's hash, so parallel runs differ; override with
# CLAUDE_DB_PRIVATE_NET=10.a.b.c, a /30's base), and
# in the namespace a dockerd on tcp://ADDR:2376 with TLS (--tlsverify, certificates made
# here with openssl) plus an sshd on ADDR:22 (own config, host key, authorized key) whose
# logins talk to that dockerd. It has its own data root, exec root (and so its own
# containerd), pidfile, socket (DIR/docker.sock: "its own machine's" view, as a local
# engine) and bridge. Its containers' networks are routed from here through the veth (a
# route that goes with the veth) and let in by a rule in the namespace's iptables, so a
# local client on its unix socket reaches them as it reaches a local engine's. Nothing here
# touches the machine's main daemon, its docker0 or this machine's iptables.
# `up` writes DIR/env (shell assignments: SOCKET, ADDR, POOL, CERTS, SSH_KEY, SSH_KNOWN_HOSTS).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

TIMEOUT=${CLAUDE_DB_DOCKERD_TIMEOUT:-90}

usage() { die "usage: $0 up|start|down DIR"; }
[ $# -ge 2 ] || usage
action=$1 dir=$2
[ "$(id -u)" = 0 ] || die "a private dockerd needs root"

# Names derive from DIR, so `down` finds what `up` made without any other record.
id=$(printf '%s' "$(realpath -m "$dir")" | sha256sum | cut -c1-6)
ns=cdbremote-$id
veth_here=cdb${id}h veth_there=cdb${id}n
bridge=cdbbr${id}
exec_root=/run/cdb-dockerd-$id  # short: containerd's socket paths must fit sun_path

up() {
    mkdir -p "$dir"
    dir=$(realpath "$dir")
    trap 'status=$?; [ "$status" = 0 ] || down; exit "$status"' EXIT  # a failed up leaves nothing
    local net=${CLAUDE_DB_PRIVATE_NET:-10.213.$((16#${id:0:2})).$((16#${id:2:2} / 4 * 4))}
    local base=${net%.*} last=${net##*.}
    local addr_here=$base.$((last + 1)) addr=$base.$((last + 2))
    local socket=$dir/docker.sock
    local run=(nsenter "--net=/run/netns/$ns")  # how to run a command "there"
    # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts
    local hosts=(--host "unix://$socket")
    # the networks it makes (apart from the main daemon's), routed from here: one /16 per
    # DIR, so private daemons of concurrent test runs do not take each other's route
    local pool=10.$((216 + 16#${id:0:2} % 32)).0.0/16
    ip netns add "$ns"
    ip link add "$veth_here" type veth peer name "$veth_there"
    ip link set "$veth_there" netns "$ns"
    ip addr add "$addr_here/30" dev "$veth_here"
    ip link set "$veth_here" up
    "${run[@]}" ip link set lo up
    "${run[@]}" ip addr add "$addr/30" dev "$veth_there"
    "${run[@]}" ip link set "$veth_there" up
    # its own bridge in its own namespace (the name alone keeps it apart from docker0)
    "${run[@]}" ip link add "$bridge" type bridge
    "${run[@]}" ip addr add 10.214.255.1/24 dev "$bridge"
    "${run[@]}" ip link set "$bridge" up
    make_certs "$dir/certs" "$addr"
    hosts+=(--host "tcp://$addr:2376" --tlsverify --tlscacert "$dir/certs/ca.pem"
            --tlscert "$dir/certs/server-cert.pem" --tlskey "$dir/certs/server-key.pem")
    mkdir -p "$dir/data"
    # the command, kept for `start` (a test that stops the daemon brings it back)
    printf '%q ' "${run[@]}" setsid dockerd "${hosts[@]}" \
        --data-root "$dir/data" --exec-root "$exec_root" --pidfile "$dir/dockerd.pidfile" \
        --bridge "$bridge" --default-address-pool "base=$pool,size=24" \
        >"$dir/dockerd.cmd"
    start_dockerd
    ip route add "$pool" via "$addr" dev "$veth_here"  # goes when the veth goes
    start_sshd "$addr" "$socket"
    {
        echo "SOCKET=$socket"
        echo "ADDR=$addr"
        echo "POOL=$pool"
        echo "CERTS=$dir/certs/client"
        echo "SSH_KEY=$dir/ssh/id_ed25519"
        echo "SSH_KNOWN_HOSTS=$dir/ssh/known_hosts"
    } >"$dir/env"
}

start_dockerd() {  # run DIR/dockerd.cmd in the background, wait until it answers
    local socket=$dir/docker.sock
    mkdir -p "$exec_root"
    rm -f "$dir/dockerd.pidfile"
    eval "$(cat "$dir/dockerd.cmd")" >>"$dir/dockerd.log" 2>&1 </dev/null &
    local pid=$! i
    echo "$pid" >"$dir/dockerd.pid"  # nsenter and setsid exec (no fork): dockerd's pid
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if DOCKER_HOST=unix://$socket docker info >/dev/null 2>&1; then break; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 5 "$dir/dockerd.log" >&2; die "the private dockerd died"
        fi
        sleep 0.2
    done
    DOCKER_HOST=unix://$socket docker info >/dev/null 2>&1 \
        || { tail -n 5 "$dir/dockerd.log" >&2; die "the private dockerd did not answer"; }
    cp "$dir/dockerd.pidfile" "$dir/dockerd.pid"  # the daemon's own word, for `down`
    # from this machine (the veth) into its containers' networks: its FORWARD policy
    # drops what it was not told about (DOCKER-USER: the chain dockerd leaves to us)
    local run=(nsenter "--net=/run/netns/$ns")
    "${run[@]}" iptables -C DOCKER-USER -i "$veth_there" -j ACCEPT 2>/dev/null \
        || "${run[@]}" iptables -I DOCKER-USER -i "$veth_there" -j ACCEPT
}

make_certs() {  # $1: directory, $2: the server's address
    local certs=$1 addr=$2
    mkdir -p "$certs/client"
    (
        cd "$certs"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=claude-db test CA" \
            -keyout ca-key.pem -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=$addr" \
            -keyout server-key.pem -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$addr" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 2 -extfile server.ext -out server-cert.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=claude-db test client" \
            -keyout client/key.pem -out client.csr 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 2 -extfile client.ext -out client/cert.pem 2>/dev/null
        cp ca.pem client/ca.pem  # the docker CLI's and SDK's DOCKER_CERT_PATH layout
    )
}

start_sshd() {  # $1: the address to listen on, $2: the private dockerd's socket
    local addr=$1 socket=$2 ssh=$dir/ssh
    mkdir -p "$ssh" /run/sshd  # /run/sshd: sshd's privilege-separation directory
    ssh-keygen -q -t ed25519 -N '' -f "$ssh/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$ssh/id_ed25519"
    cp "$ssh/id_ed25519.pub" "$ssh/authorized_keys"
    echo "$addr $(cat "$ssh/host_key.pub")" >"$ssh/known_hosts"
    cat >"$ssh/sshd_config" <<EOF
ListenAddress $addr:22
HostKey $ssh/host_key
PidFile $ssh/sshd.pid
AuthorizedKeysFile $ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
# the login's docker CLI (docker system dial-stdio) talks to the private daemon
SetEnv DOCKER_HOST=unix://$socket
EOF
    nsenter "--net=/run/netns/$ns" /usr/sbin/sshd -f "$ssh/sshd_config" -E "$ssh/sshd.log"
    local i
    for ((i = 0; i < 50; i++)); do [ -s "$ssh/sshd.pid" ] && return 0; sleep 0.1; done
    die "sshd did not start (see $ssh/sshd.log)"
}

stop_pid() {  # $1: pidfile of a process `up` started
    [ -s "$1" ] || return 0
    local pid i
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < TIMEOUT * 5; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

down() {
    [ -d "$dir" ] || return 0
    dir=$(realpath "$dir")
    stop_pid "$dir/ssh/sshd.pid"
    stop_pid "$dir/dockerd.pid"  # stops its containers and its own containerd with it
    # the veth first: deleting this end takes the pair at once, while a deleted namespace
    # frees its devices later, in the kernel's background (a `show` then `del` after it
    # raced: "Cannot find device"); gone by any hand counts as done
    ip link del "$veth_here" 2>/dev/null || ! ip link show "$veth_here" >/dev/null 2>&1 \
        || die "could not delete $veth_here"
    if ip netns list | grep -qw "$ns"; then ip netns del "$ns"; fi
    # what dockerd mounted under its roots goes with it, and with its containerd, which may
    # still be unmounting for a moment after dockerd exits; anything left then is not ours
    # to force
    local i
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        grep -qF -e " $dir/" -e " $exec_root" /proc/mounts || break
        sleep 0.2
    done
    if ! grep -qF -e " $dir/" -e " $exec_root" /proc/mounts; then
        rm -rf "$exec_root" "$dir"
    else
        die "mounts under $dir or $exec_root remain; left in place:" \
            "$(grep -F -e " $dir/" -e " $exec_root" /proc/mounts | cut -d' ' -f2 | head -5)"
    fi
}

case $action in
    up) up ;;
    start) dir=$(realpath "$dir"); start_dockerd ;;
    down) down ;;
    *) usage ;;
esac
