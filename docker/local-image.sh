#!/usr/bin/env bash
# Build fedunlearn:latest on a machine whose containers reach no registry: the base image
# from Debian's packages (debootstrap) and every Python package from a local wheel folder.
# On a machine with network, `docker build -f docker/Dockerfile -t fedunlearn .` is enough.
#
#   docker/local-image.sh            # base image, wheels, then the image
#
# Needs a running Docker engine, `debootstrap` (apt-get install debootstrap) and the
# project's .venv (scripts/setup.sh), whose pip knows where this machine's torch lies.
# Nothing is written into the repository: the root file system, the wheels and the
# build's log go under $WORK (default /var/tmp/fedunlearn-image). Each step is skipped
# when its result is already there; remove $WORK or the image to redo it.
#
# Environment: DOCKER (the docker CLI; default `docker`), WORK, BASE_IMAGE (the tag of the
# imported base image; default fedunlearn-base:bookworm), IMAGE (default fedunlearn:latest),
# SUITE (default bookworm: its python3.11 is the one the project needs), PORT (the wheels'
# HTTP port on 127.0.0.1; default 8765).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DOCKER=${DOCKER:-docker}
WORK=${WORK:-/var/tmp/fedunlearn-image}
BASE_IMAGE=${BASE_IMAGE:-fedunlearn-base:bookworm}
IMAGE=${IMAGE:-fedunlearn:latest}
SUITE=${SUITE:-bookworm}
PORT=${PORT:-8765}
WHEELS=$WORK/wheels
mkdir -p "$WORK"

log() { printf '%s local-image: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# 1. The base image: a minimal Debian with python3.11 and its venv module, imported from
#    a root file system that debootstrap makes from Debian's packages.
if ! $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    rootfs=$WORK/rootfs
    rm -rf "$rootfs"
    log "debootstrap $SUITE into $rootfs"
    # python3.11-venv needs python3.11-distutils, a virtual package that debootstrap does
    # not resolve: python3-distutils provides it.
    debootstrap --variant=minbase \
        --include=python3.11,python3.11-venv,python3-distutils,python3-pip-whl,python3-setuptools-whl \
        "$SUITE" "$rootfs"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    log "import $rootfs as $BASE_IMAGE"
    tar --numeric-owner -C "$rootfs" -c . | $DOCKER import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi

# 2. The wheels: the project's dependencies (and the build backend for `pip install -e .`)
#    downloaded on this machine, where pip's configuration names the local torch wheels,
#    pinned to what the project's .venv runs. A source-only package is built to a wheel.
if ! compgen -G "$WHEELS/torch-2.14.1-*.whl" >/dev/null; then
    mkdir -p "$WHEELS"
    reqs=$WORK/requirements.txt
    .venv/bin/python - >"$reqs" <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(project["project"]["dependencies"]
                + project["build-system"]["requires"] + ["wheel"]))
EOF
    .venv/bin/python -m pip freeze --exclude-editable \
        | grep -v -E '^(fedunlearn|pytest|ruff|pluggy|iniconfig)==' >"$WORK/constraints.txt"
    log "pip download into $WHEELS"
    .venv/bin/python -m pip download -q -d "$WHEELS" -r "$reqs" -c "$WORK/constraints.txt"
fi
for sdist in "$WHEELS"/*.tar.gz; do
    [ -e "$sdist" ] || continue
    log "build a wheel of $(basename "$sdist")"
    .venv/bin/python -m pip wheel -q --no-deps -w "$WHEELS" "$sdist"
    rm -f "$sdist"
done

# 3. The image: the wheels served on 127.0.0.1 (pip trusts plain HTTP there) to a build
#    on the host's network, so that no build step needs to reach anything else.
log "serve $WHEELS on 127.0.0.1:$PORT"
python3 -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$PORT" \
    >"$WORK/http.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" \
        2>/dev/null && break
    sleep 0.1
done
log "build $IMAGE from $BASE_IMAGE"
started=$(date +%s)
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-1} $DOCKER build --network host \
    -f docker/Dockerfile -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg WHEELS="http://127.0.0.1:$PORT/" \
    "$ROOT"
log "built $IMAGE in $(( $(date +%s) - started )) s"
$DOCKER image ls "$IMAGE"
