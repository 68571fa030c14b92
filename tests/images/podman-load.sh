#!/usr/bin/env bash
# Copy the locally built test images (tests/images/build.sh) from Docker into Podman's store:
# no registry is reachable, and Podman keeps its own store (rootful: root's; rootless: each
# user's). Run as the user whose store should get them (as root for rootful Podman):
#   bash tests/images/podman-load.sh                          # rootful
#   runuser -u USER -- bash tests/images/podman-load.sh       # rootless; docker runs as root
# With DOCKER_SAVE_DIR set, the archives are read from there (NAME.tar, written by a run as
# root) instead of from `docker save`, for a user who may not talk to Docker.
# Images Podman already has (same id) are skipped.
set -euo pipefail

log() { printf '[podman-load] %s\n' "$*" >&2; }

command -v podman >/dev/null || { log "podman is not installed"; exit 1; }
images=("$@")
if ((${#images[@]} == 0)); then
    mapfile -t images < <(docker images --format '{{.Repository}}:{{.Tag}}' \
        | grep '^claude-db-test/' | grep -v ':<none>$' | sort -u)
fi
for image in "${images[@]}"; do
    archive="${DOCKER_SAVE_DIR:+$DOCKER_SAVE_DIR/$(printf %s "$image" | tr '/:' '__').tar}"
    if [[ -z "$archive" ]]; then
        want="$(docker image inspect --format '{{.Id}}' "$image")"
        have="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
        [[ -n "$have" && "sha256:$have" == "$want" || "$have" == "$want" ]] && continue
        log "loading $image"
        docker save "$image" | podman load -q >/dev/null
    else
        podman image exists "$image" && continue
        log "loading $image from $archive"
        podman load -q -i "$archive" >/dev/null
    fi
done
