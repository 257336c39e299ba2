#!/usr/bin/env bash
# The deployment, really run: builds the images and runs what a user runs, with a real
# Docker engine. Called by .ci/run; by hand: `bash deploy/smoke.sh` (as root, or with a
# running engine you may use).
#
#  1. engine: uses a running one; else (root) installs Debian's docker.io if needed and
#     starts dockerd in the background (overlay2, no bridge, no iptables: every build and
#     container uses --network host, so all traffic stays on this machine's network stack).
#     Only when no engine can start does it print a `SKIP:` line and exit 0
#     (SMOKE_REQUIRE_ENGINE=1 makes that a failure).
#  2. base image: Debian minbase + python3, venv, ca-certificates, libgomp1, passwd, from
#     Debian's packages (mmdebstrap | docker import), carrying the host's trusted CA
#     certificates (the package registries may sit behind a TLS proxy the host trusts).
#     Rebuilt only when the package list or the host's certificates change.
#  3. images: magnet-redis, magnet-serving (the API: no torch) and magnet-train:cpu, with the
#     arguments deploy/docker-compose.yml gives them (deploy/compose_run.py reads them) and
#     the base-image argument pointing at that base. The training image's CPU torch comes
#     from the torch wheel this host's pip finds locally (served to the build on loopback);
#     never PyPI's multi-GB CUDA build.
#  4. runs the compose services with `docker run` from the compose file's own settings
#     (compose v2 is not assumed): Redis; the API without a bundle (/healthz 200, /readyz
#     503, healthcheck healthy, uid 10001, no torch); the trainer (demo data -> train ->
#     export into the shared bundles volume -> reload); the API serving it read-only
#     (/readyz 200, /recommend, /explain, "cached": true the second time, from Redis; the
#     dashboard's page, script and /ui/api/model);
#     `magnet serve` in the API image on a bind-mounted bundle; a second training run
#     under load: the API switches bundles with no failed request.
#  5. stops and removes every container and the volume it made, also on failure, and
#     stops the dockerd it started (SMOKE_KEEP_ENGINE=1 leaves it running).
# Last line: `images: api <N> MB, train <M> MB`.
#
# Settings: SMOKE_TRAIN_EPOCHS (2), SMOKE_API_MAX_MB (600: fail above), SMOKE_PROJECT
# (magnet-smoke: container/volume prefix), DOCKER (client; default the engine's own),
# PYTHON (python with PyYAML; default .venv/bin/python, else python3), TORCH_VERSION.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start_s=$(date +%s)

log() { printf '%s smoke: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

project="${SMOKE_PROJECT:-magnet-smoke}"
epochs="${SMOKE_TRAIN_EPOCHS:-2}"
api_max_mb="${SMOKE_API_MAX_MB:-600}"
torch_version="${TORCH_VERSION:-2.13.0}"
base_tag="magnet-base:bookworm"
base_packages="python3,python3-venv,python-is-python3,ca-certificates,libgomp1,passwd"
if [ -n "${PYTHON:-}" ]; then py="$PYTHON"; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
"$py" -c 'import yaml' 2>/dev/null || die "${py} cannot import yaml (PyYAML reads the compose file): run .ci/install.sh first"

work="$(mktemp -d /tmp/magnet-smoke.XXXXXX)"
dockerd_pid="" http_pid="" load_pid=""

skip() {
  if [ "${SMOKE_REQUIRE_ENGINE:-0}" = 1 ]; then die "no Docker engine: $*"; fi
  echo "SKIP: deploy/smoke.sh: no Docker engine can start here: $*"
  exit 0
}

cleanup() {
  local rc=$?
  set +e
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
  [ -n "$http_pid" ] && kill "$http_pid" 2>/dev/null
  if [ -n "${DOCKER:-}" ] && "$DOCKER" info >/dev/null 2>&1; then
    ids="$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=${project}")"
    # shellcheck disable=SC2086 # a list of ids
    [ -n "$ids" ] && "$DOCKER" rm -f $ids >/dev/null
    "$DOCKER" volume rm -f "${project}_bundles" >/dev/null 2>&1
  fi
  if [ -n "$dockerd_pid" ] && [ "${SMOKE_KEEP_ENGINE:-0}" != 1 ]; then
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    log "stopped the dockerd it started"
  fi
  rm -rf "$work"
  [ "$rc" -ne 0 ] && log "exit ${rc} after $(( $(date +%s) - start_s )) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------- 1. engine
pick_client() {  # the engine's own client when Debian's docker.io provides one
  if [ -n "${DOCKER:-}" ]; then return; fi
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER="$(command -v docker || true)"; fi
}

start_engine() {
  pick_client
  if [ -n "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then
    log "using the running engine ($("$DOCKER" version --format '{{.Server.Version}}'))"
    return
  fi
  [ "$(id -u)" = 0 ] || skip "no engine answers and starting dockerd needs root"
  if ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || skip "no dockerd, and no apt-get to install docker.io"
    log "installing docker.io (Debian package)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; } \
      || skip "apt-get install docker.io failed"
    DOCKER=""; pick_client
  fi
  [ -n "$DOCKER" ] || skip "dockerd is installed but no docker client is"
  log "starting dockerd (log: /tmp/magnet-smoke-dockerd.log)"
  setsid dockerd --storage-driver=overlay2 --bridge=none --iptables=false --ip6tables=false \
    --ip-masq=false --ip-forward=false >/tmp/magnet-smoke-dockerd.log 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { dockerd_pid=""; skip "dockerd exited: $(tail -3 /tmp/magnet-smoke-dockerd.log)"; }
    sleep 1
  done
  "$DOCKER" info >/dev/null 2>&1 || skip "dockerd did not answer within 60 s: $(tail -3 /tmp/magnet-smoke-dockerd.log)"
  log "dockerd $("$DOCKER" version --format '{{.Server.Version}}') up (storage $("$DOCKER" info --format '{{.Driver}}'))"
}

pick_builder() {
  # The engine's built-in BuildKit (no frontend image: the Dockerfiles have no `# syntax=`)
  # through a client that still speaks to it directly (< 23) or has buildx; else the
  # classic builder (the Dockerfiles use nothing BuildKit-only).
  local major
  major="$("$DOCKER" version --format '{{.Client.Version}}' | cut -d. -f1)"
  if [ "$major" -lt 23 ] 2>/dev/null || "$DOCKER" buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=1
  else
    export DOCKER_BUILDKIT=0
  fi
  log "builder: $([ "$DOCKER_BUILDKIT" = 1 ] && echo "BuildKit (engine built-in frontend)" || echo classic)"
}

# --------------------------------------------------------------------- 2. base image
host_cas() {  # the host's trusted certificates: the bundle, and local CAs update-ca-certificates adds
  cat /etc/ssl/certs/ca-certificates.crt
  cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
}

build_base() {
  local suite key have
  # shellcheck disable=SC1091 # the host's own file
  suite="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
  [ -n "$suite" ] || suite=bookworm
  [ -f /etc/ssl/certs/ca-certificates.crt ] || die "the host has no /etc/ssl/certs/ca-certificates.crt to carry into the image"
  key="$( { echo "$suite $base_packages v1"; host_cas; } | sha256sum | cut -c1-16)"
  have="$("$DOCKER" image inspect -f '{{ index .Config.Labels "org.magnet.base-key" }}' "$base_tag" 2>/dev/null || true)"
  if [ "$have" = "$key" ]; then
    log "base image ${base_tag} is current (key ${key})"
    return
  fi
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    log "installing mmdebstrap (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
  fi
  log "building ${base_tag} from Debian ${suite} packages (mmdebstrap minbase + ${base_packages})"
  local t0=$SECONDS
  # shellcheck disable=SC2016 # "$1" is the chroot, expanded by mmdebstrap's hook shell
  # the customize hook copies the host's CAs in: the local ones (kept by later
  # update-ca-certificates runs inside images) and the host's whole bundle
  mmdebstrap --quiet --variant=minbase --include="$base_packages" \
    --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
    --customize-hook='if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"; fi' \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
    --customize-hook='cat /etc/ssl/certs/ca-certificates.crt > "$1/etc/ssl/certs/ca-certificates.crt"' \
    --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*.bin "$1/usr/share/doc/"* "$1/usr/share/man/"*' \
    "$suite" - 2>"$work/mmdebstrap.log" \
  | "$DOCKER" import \
      --change 'ENV LANG=C.UTF-8' \
      --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
      --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
      --change "LABEL org.magnet.base-key=${key}" \
      --change 'CMD ["python3"]' \
      - "$base_tag" >/dev/null \
    || { tail -20 "$work/mmdebstrap.log" >&2; die "could not build the base image"; }
  log "base image built in $(( SECONDS - t0 )) s"
}

# ---------------------------------------------------------------- 3. the torch wheel
serve_local_torch() {
  # The torch wheel this host's pip finds without any index (find-links, local files):
  # served on loopback as a one-package index for the training image's build.
  local dir="$work/torch-index/torch" wheel port
  mkdir -p "$dir"
  if ! "$py" -m pip download --quiet --no-index --no-deps --dest "$dir" "torch==${torch_version}" >"$work/pip-download.log" 2>&1; then
    log "no local torch==${torch_version} wheel: the training image takes torch from the compose file's TORCH_INDEX_URL"
    return
  fi
  wheel="$(ls "$dir"/*.whl)"
  if "$py" - "$wheel" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
sys.exit(0 if any(l.lower().startswith("requires-dist: nvidia-") for l in z.read(meta).decode().splitlines()) else 1)
PY
  then
    die "the local wheel $(basename "$wheel") is a CUDA build; the images need the CPU one"
  fi
  # a stable port: the URL is a build argument, part of the install layer's cache key
  port="$("$py" -c 'import socket
for port in range(39017, 39117):
    try:
        socket.create_server(("127.0.0.1", port)).close(); print(port); break
    except OSError:
        pass')"
  "$py" -m http.server --bind 127.0.0.1 "$port" --directory "$work/torch-index" >"$work/http.log" 2>&1 &
  http_pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:${port}/torch/" >/dev/null && break; sleep 0.1; done
  torch_index="http://127.0.0.1:${port}/"
  log "torch for the training image: $(basename "$wheel") ($(( $(stat -c %s "$wheel") / 1000000 )) MB, local) via ${torch_index}"
}

# ------------------------------------------------------------------------ helpers
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

compose_args() {  # compose_run.py's NUL-separated arguments into the array named $1
  local -n out="$1"; shift
  "$py" deploy/compose_run.py "$@" >"$work/args" || die "deploy/compose_run.py $*"
  # shellcheck disable=SC2034 # a nameref: this sets the caller's array
  mapfile -d '' -t out <"$work/args"
}

build_image() {  # service [extra compose_run build options]
  local svc="$1" args t0=$SECONDS; shift
  compose_args args build "$svc" --base "$base_tag" "$@"
  log "docker build ${svc} -> ${args[3]}"
  "$DOCKER" build "${args[@]}" >"$work/build-${svc}.log" 2>&1 \
    || { tail -40 "$work/build-${svc}.log" >&2; die "building ${svc}"; }
  log "built ${args[3]} in $(( SECONDS - t0 )) s"
}

run_service() {  # service [compose_run run options] -- detached container
  local svc="$1" args; shift
  compose_args args run "$svc" --project "$project" "$@"
  "$DOCKER" run --detach "${args[@]}" >/dev/null || die "docker run ${svc}"
}

status_of() { curl -s -o "$work/body" -w '%{http_code}' --max-time 10 "$1" || true; }

expect_status() {  # url code
  local got
  got="$(status_of "$1")"
  [ "$got" = "$2" ] || die "GET $1 answered ${got}, expected $2: $(head -c 300 "$work/body" 2>/dev/null)"
  log "GET ${1#http://127.0.0.1:*/} -> $2"
}

wait_status() {  # url code timeout_s
  local deadline=$(( SECONDS + $3 ))
  until [ "$(status_of "$1")" = "$2" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "GET $1 did not answer $2 within $3 s (last: $(head -c 300 "$work/body" 2>/dev/null))"
    sleep 0.5
  done
}

wait_healthy() {  # container timeout_s
  local deadline=$(( SECONDS + $2 )) state
  while :; do
    state="$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null || echo gone)"
    [ "$state" = healthy ] && break
    [ "$SECONDS" -lt "$deadline" ] && [ "$state" != gone ] || {
      "$DOCKER" logs --tail 20 "$1" >&2 || true; die "$1 is ${state}, not healthy, after $2 s"; }
    sleep 1
  done
  log "$1: healthcheck healthy"
}

json_field() { "$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/body" "$1"; }

image_mb() { "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{printf "%d", $1 / 1000000}'; }

# --------------------------------------------------------------------------- run it
start_engine
pick_builder
build_base
torch_index=""
serve_local_torch
build_image redis
build_image api
if [ -n "$torch_index" ]; then
  build_image trainer --build-arg "TORCH_INDEX_URL=${torch_index}"
else
  build_image trainer
fi
[ -n "$http_pid" ] && { kill "$http_pid"; http_pid=""; }

api_mb="$(image_mb magnet-serving:latest)"
train_mb="$(image_mb magnet-train:cpu)"
[ "$api_mb" -le "$api_max_mb" ] || die "the API image is ${api_mb} MB, above ${api_max_mb} MB"
"$DOCKER" run --rm --network host --entrypoint python magnet-serving:latest -c 'import torch' >/dev/null 2>&1 \
  && die "the API image can import torch"
log "API image: ${api_mb} MB, no torch; training image: ${train_mb} MB"

# The compose file's variables: the ports each service listens on (host networking), the
# trainer's input and epochs, a fresh admin token.
API_PORT="$(free_port)"; REDIS_PORT="$(free_port)"
MAGNET_ADMIN_TOKEN="smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
HOST_DATA_DIR="$work/data"; TRAIN_EPOCHS="$epochs"
export API_PORT REDIS_PORT MAGNET_ADMIN_TOKEN HOST_DATA_DIR TRAIN_EPOCHS
mkdir -p "$HOST_DATA_DIR"
api="http://127.0.0.1:${API_PORT}"
"$DOCKER" volume rm -f "${project}_bundles" >/dev/null 2>&1 || true

# Redis (loopback only: the host network is this machine's)
run_service redis -- --bind 127.0.0.1
wait_healthy "${project}-redis" 60

# The API, no bundle yet: live, not ready
run_service api --env MAGNET_HOST=127.0.0.1
wait_status "$api/healthz" 200 60
expect_status "$api/healthz" 200
expect_status "$api/readyz" 503
wait_healthy "${project}-api" 90
uid="$("$DOCKER" exec "${project}-api" id -u)"
[ "$uid" = 10001 ] || die "the API runs as uid ${uid}, not 10001"

# Training run 1: demo data -> train -> export into the bundles volume -> reload the API
log "trainer: demo data, ${epochs} epochs, export, reload"
targs=()
compose_args targs run trainer --project "$project"
"$DOCKER" run --rm "${targs[@]}" >"$work/trainer-1.log" 2>&1 \
  || { tail -30 "$work/trainer-1.log" >&2; die "training run 1"; }
expect_status "$api/readyz" 200
v1="$(json_field model_version)"
log "API serves ${v1} from the read-only volume, as uid ${uid}"

# /recommend, /explain (computed, then from the cache), the cache being Redis
user="$("$DOCKER" exec "${project}-api" python -c 'import json; print(json.load(open("/bundles/current/user_ids.json"))[0])')"
expect_status "$api/recommend/${user}?k=5" 200
item="$("$py" -c 'import json, sys; b = json.load(open(sys.argv[1])); assert len(b["items"]) == 5, b; print(b["items"][0]["item_id"])' "$work/body")"
expect_status "$api/explain/${user}/${item}" 200
[ "$(json_field cached)" = False ] || die "the first /explain of a pair came from the cache"
expect_status "$api/explain/${user}/${item}" 200
[ "$(json_field cached)" = True ] || die "the second /explain was not cached"
keys="$("$DOCKER" exec "${project}-redis" redis-cli -p "$REDIS_PORT" dbsize)"
[ "${keys:-0}" -gt 0 ] || die "Redis holds no keys after /explain"
log "/explain cached on the second call; Redis holds ${keys} keys"

# The dashboard: the image ships its static files (package data) and its helpers answer
expect_status "$api/ui/" 200
expect_status "$api/ui/static/app.js" 200
expect_status "$api/ui/api/model" 200
[ "$(json_field model_version)" = "$v1" ] || die "/ui/api/model reports $(json_field model_version), not ${v1}"

# `magnet serve` (the contract's CLI) in the API image, on a bundle bind-mounted read-only
version_dir="$("$DOCKER" exec "${project}-api" readlink /bundles/current)"
"$DOCKER" cp "${project}-api:/bundles/${version_dir}/." "$work/bundle"
chmod -R go+rX "$work/bundle"
cli_port="$(free_port)"
"$DOCKER" run --detach --name "${project}-cli" --label "com.docker.compose.project=${project}" --network host \
  -v "$work/bundle:/bundle:ro" magnet-serving:latest \
  magnet serve --bundle /bundle --host 127.0.0.1 --port "$cli_port" >/dev/null
wait_status "http://127.0.0.1:${cli_port}/readyz" 200 60
[ "$(json_field model_version)" = "$v1" ] || die "magnet serve in the image serves $(json_field model_version)"
expect_status "http://127.0.0.1:${cli_port}/recommend/${user}?k=3" 200
"$DOCKER" rm -f "${project}-cli" >/dev/null

# Training run 2 under load: the API swaps bundles with no failed request
"$py" - "$api" "$user" "$item" "$work/load.json" <<'PY' &
import http.client, json, signal, sys, threading, urllib.parse
url, user, item, out = sys.argv[1:5]
host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
lock, stats = threading.Lock(), {"ok": 0, "failed": 0, "errors": [], "versions": []}
def worker(n):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    paths = [f"/recommend/{user}?k=10", f"/explain/{user}/{item}"]
    i = n
    while not stop.is_set():
        path = paths[i % 2]; i += 1
        try:
            conn.request("GET", path); r = conn.getresponse(); body = r.read()
            v = json.loads(body).get("model_version") if r.status == 200 else None
            with lock:
                if r.status == 200:
                    stats["ok"] += 1
                    if v not in stats["versions"]: stats["versions"].append(v)
                else:
                    stats["failed"] += 1; stats["errors"].append(f"{path}: {r.status}")
        except Exception as exc:  # a failed request, whatever the cause
            with lock:
                stats["failed"] += 1; stats["errors"].append(f"{path}: {exc!r}")
            conn = http.client.HTTPConnection(host, port, timeout=10)
        stop.wait(0.01)  # ~100 requests/s per connection: load, without starving the trainer of CPU
threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
stats["errors"] = stats["errors"][:10]
json.dump(stats, open(out, "w"))
PY
load_pid=$!
sleep 2
log "trainer again, under load (4 connections, ~100 requests/s each, on /recommend and /explain)"
"$DOCKER" run --rm "${targs[@]}" >"$work/trainer-2.log" 2>&1 \
  || { tail -30 "$work/trainer-2.log" >&2; die "training run 2"; }
sleep 2
kill "$load_pid"; wait "$load_pid" || true; load_pid=""
expect_status "$api/readyz" 200
v2="$(json_field model_version)"
[ "$v2" != "$v1" ] || die "the API still serves ${v1} after the second training run"
"$py" - "$work/load.json" "$v1" "$v2" <<'PY' || die "requests failed during the reload (above)"
import json, sys
s, v1, v2 = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
print(f"load during training run 2: {s['ok']} ok, {s['failed']} failed, versions seen {s['versions']}", file=sys.stderr)
sys.exit(0 if s["failed"] == 0 and s["ok"] > 0 and s["versions"] == [v1, v2] else 1)
PY
log "reloaded ${v1} -> ${v2} under load with no failed request"
log "passed in $(( $(date +%s) - start_s )) s"
echo "images: api ${api_mb} MB, train ${train_mb} MB"
