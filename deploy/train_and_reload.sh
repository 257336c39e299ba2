#!/usr/bin/env bash
# Train -> export a new versioned bundle -> point `current` at it -> POST /admin/reload
# to every API replica. Used by the compose `trainer` services and the Kubernetes Job
# (installed in both images as `magnet-train-and-reload`).
#
# Layout of the shared bundle volume (BUNDLES_ROOT):
#   v20250101T120000Z-ab12/   one directory per export, complete before it appears
#   current -> v20250101T120000Z-ab12   relative symlink; the API's MAGNET_BUNDLE points here
#
# Input data (first that applies):
#   DATASET_DIR=/data/mydata             an existing dataset directory (MMRec layout)
#   IMPORT_INTERACTIONS=/data/ratings.csv [IMPORT_ITEMS=/data/items.csv]
#     [IMPORT_NAME=mydata] [IMPORT_ARGS="--text-cols title --kcore 5"]  -> `magnet import`
#   otherwise                            the built-in synthetic demo dataset
# Events (closing the loop): with IMPORT_INTERACTIONS and MAGNET_REDIS_URL set, the service's
#   events (POST /events) are exported (`magnet events export`) and appended to the
#   interactions before `magnet import`, so the next model trains on what the service saw.
#   IMPORT_USER_COL / IMPORT_ITEM_COL / IMPORT_TIME_COL (user_id / item_id / timestamp) name
#   the CSV's columns (also passed to `magnet import`); other columns stay empty on event rows.
#   A dataset directory or the demo data get no events (their ids are internal); logged.
# Training: TRAIN_MODEL (magnet), TRAIN_EPOCHS, TRAIN_SEED, TRAIN_DEVICE (auto),
#   TRAIN_ARGS (extra `magnet train` arguments, e.g. "--set optim.lr=0.001").
# Reload: RELOAD_URLS="http://api:8000 http://10.0.0.7:8000" and/or RELOAD_HOST=name
#   [RELOAD_PORT=8000] (every address the name resolves to: a compose service or a
#   Kubernetes headless Service), MAGNET_ADMIN_TOKEN (the API's admin token),
#   RELOAD_TIMEOUT_S (120), API_BUNDLES_ROOT (BUNDLES_ROOT as the API sees it; default
#   the same path).
# Other: BUNDLES_ROOT (/bundles), WORK_DIR (/tmp/magnet-train), BUNDLE_VERSION (default
#   v<UTC time>-<random>), KEEP_BUNDLES (the 3 newest v* directories are kept, and always
#   current and the previous one; 0 keeps everything).
#
# Each replica gets POST /admin/reload {"bundle": "<API_BUNDLES_ROOT>/current"} and then
# GET /readyz must report the new model_version.
#
# Exit status: 0 when the bundle is exported, `current` points at it and every reachable
# replica serves it (or none was reachable: they load `current` when they start);
# 1 on any failure. A replica answering 409 (bundle failed verification) keeps its old
# bundle; when a replica rejects the bundle, or none could be reloaded (wrong token,
# errors), `current` is pointed back at the previous version.
set -euo pipefail

log() { printf '%s train_and_reload: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="${BUNDLES_ROOT:-/bundles}"
api_root="${API_BUNDLES_ROOT:-$root}"
work="${WORK_DIR:-/tmp/magnet-train}"
version="${BUNDLE_VERSION:-v$(date -u +%Y%m%dT%H%M%SZ)-$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')}"
keep="${KEEP_BUNDLES:-3}"

case "$version" in
  ""|current|.*|*/*) die "BUNDLE_VERSION must be a plain directory name, got '${version}'" ;;
esac
mkdir -p "$root" "$work"
[ -w "$root" ] || die "bundle root ${root} is not writable by uid $(id -u)"
[ ! -e "${root}/${version}" ] || die "bundle ${root}/${version} already exists"
if [ -e "${root}/current" ] && [ ! -L "${root}/current" ]; then
  die "${root}/current exists and is not a symlink; move it into a versioned directory first"
fi

# ------------------------------------------------------------------------- dataset
if [ -n "${DATASET_DIR:-}" ]; then
  data="$DATASET_DIR"
  [ -d "$data" ] || die "DATASET_DIR ${data} is not a directory"
  log "dataset: ${data}"
  [ -z "${MAGNET_REDIS_URL:-}" ] || log "MAGNET_REDIS_URL is set, but events are appended only to IMPORT_INTERACTIONS; skipped"
elif [ -n "${IMPORT_INTERACTIONS:-}" ]; then
  name="${IMPORT_NAME:-dataset}"
  data="${work}/data/${name}"
  rm -rf "$data"
  mkdir -p "${work}/data"
  interactions="$IMPORT_INTERACTIONS"
  user_col="${IMPORT_USER_COL:-user_id}"; item_col="${IMPORT_ITEM_COL:-item_id}"; time_col="${IMPORT_TIME_COL:-timestamp}"
  if [ -n "${MAGNET_REDIS_URL:-}" ]; then
    magnet events export --redis "$MAGNET_REDIS_URL" --out "${work}/events.csv"
    interactions="${work}/interactions_with_events.csv"
    python - "$IMPORT_INTERACTIONS" "${work}/events.csv" "$interactions" "$user_col" "$item_col" "$time_col" <<'PY'
import csv
import sys

src, events, out, user_col, item_col, time_col = sys.argv[1:]
with open(src, newline="", encoding="utf-8") as fh, open(out, "w", newline="", encoding="utf-8") as dst:
    reader = csv.reader(fh)
    header = next(reader)
    missing = [c for c in (user_col, item_col, time_col) if c not in header]
    if missing:
        sys.exit(f"{src}: no column(s) {', '.join(missing)} to append events to (set IMPORT_USER_COL/ITEM_COL/TIME_COL)")
    writer = csv.writer(dst)
    writer.writerow(header)
    writer.writerows(reader)
    at = {c: header.index(c) for c in (user_col, item_col, time_col)}
    n = 0
    with open(events, newline="", encoding="utf-8") as ev:
        for row in csv.DictReader(ev):
            line = [""] * len(header)
            line[at[user_col]], line[at[item_col]], line[at[time_col]] = row["user_id"], row["item_id"], row["timestamp"]
            writer.writerow(line)
            n += 1
print(f"appended {n} events to the interactions", file=sys.stderr)
PY
  fi
  # shellcheck disable=SC2086 # IMPORT_ARGS is a list of arguments on purpose
  magnet import --interactions "$interactions" ${IMPORT_ITEMS:+--items "$IMPORT_ITEMS"} \
    --user-col "$user_col" --item-col "$item_col" --time-col "$time_col" \
    --name "$name" --out "$data" ${IMPORT_ARGS:-}
else
  data="${work}/data/demo"
  rm -rf "$data"
  mkdir -p "${work}/data"
  log "no DATASET_DIR or IMPORT_INTERACTIONS: generating the synthetic demo dataset"
  [ -z "${MAGNET_REDIS_URL:-}" ] || log "MAGNET_REDIS_URL is set, but events are appended only to IMPORT_INTERACTIONS; skipped"
  python - "$data" <<'PY'
import sys
from pathlib import Path

from offline.dataset import write_dataset
from offline.quickstart import DEMO_SPEC
from offline.synthetic import generate

write_dataset(generate(DEMO_SPEC, name="demo").dataset, Path(sys.argv[1]))
PY
fi

# --------------------------------------------------------------------------- train
run="${work}/runs/${version}"
rm -rf "$run"
mkdir -p "${work}/runs"
train_args=(--data "$data" --out "$run" --model "${TRAIN_MODEL:-magnet}" --device "${TRAIN_DEVICE:-auto}")
[ -n "${TRAIN_EPOCHS:-}" ] && train_args+=(--epochs "$TRAIN_EPOCHS")
[ -n "${TRAIN_SEED:-}" ] && train_args+=(--seed "$TRAIN_SEED")
log "magnet train ${train_args[*]} ${TRAIN_ARGS:-}"
# shellcheck disable=SC2086 # TRAIN_ARGS is a list of arguments on purpose
magnet train "${train_args[@]}" ${TRAIN_ARGS:-}

# -------------------------------------------------- export (atomic on the volume)
incoming="${root}/.incoming-${version}"
rm -rf "$incoming"
trap 'rm -rf "$incoming"' EXIT
magnet export --run "$run" --out "$incoming"
[ -f "${incoming}/manifest.json" ] || die "export wrote no manifest.json"
# readable by the API whatever its uid (the export's temporary directory is 0700)
chmod -R u=rwX,go=rX "$incoming"
mv -T "$incoming" "${root}/${version}"
trap - EXIT
model_version="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["model_version"])' "${root}/${version}/manifest.json")"
log "bundle ${root}/${version} (model_version ${model_version})"

# --------------------------------------------------- flip `current` atomically
previous="$(readlink "${root}/current" 2>/dev/null || true)"
point_current() {  # $1: directory name inside $root
  ln -sfn "$1" "${root}/.current.tmp.$$"
  mv -Tf "${root}/.current.tmp.$$" "${root}/current"
}
point_current "$version"
log "current -> ${version} (was: ${previous:-none})"

# ------------------------------------------------------------ reload every replica
set +e
RELOAD_BUNDLE="${api_root}/current" EXPECT_VERSION="$model_version" python - <<'PY'
import json
import os
import socket
import sys
import urllib.error
import urllib.request

urls = [u.rstrip("/") for u in os.environ.get("RELOAD_URLS", "").replace(",", " ").split()]
host = os.environ.get("RELOAD_HOST", "").strip()
port = int(os.environ.get("RELOAD_PORT", "8000"))
if host:
    try:
        addrs = sorted({ai[4][0] for ai in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
    except socket.gaierror as exc:
        print(f"reload: cannot resolve {host}: {exc}", file=sys.stderr)
        addrs = []
    urls += [f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in addrs]
urls = list(dict.fromkeys(urls))
if not urls:
    print("reload: no RELOAD_URLS/RELOAD_HOST given; replicas load `current` when they start", file=sys.stderr)
    sys.exit(0)
token = os.environ.get("MAGNET_ADMIN_TOKEN", "")
if not token:
    print("reload: MAGNET_ADMIN_TOKEN is not set", file=sys.stderr)
    sys.exit(1)
timeout = float(os.environ.get("RELOAD_TIMEOUT_S", "120"))
expect = os.environ["EXPECT_VERSION"]
body = json.dumps({"bundle": os.environ["RELOAD_BUNDLE"]}).encode()

ok = rejected = failed = unreachable = 0
for url in urls:
    req = urllib.request.Request(
        f"{url}/admin/reload", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        print(f"reload: {url} unreachable ({exc})", file=sys.stderr)
        unreachable += 1
        continue
    if status == 409:
        print(f"reload: {url} rejected the bundle (409), keeps the old one: {text[:300]}", file=sys.stderr)
        rejected += 1
        continue
    if status != 200:
        print(f"reload: {url} answered {status}: {text[:300]}", file=sys.stderr)
        failed += 1
        continue
    try:  # confirm what the replica now serves
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as resp:
            serving = json.loads(resp.read()).get("model_version")
    except (OSError, ValueError) as exc:
        serving = f"unknown ({exc})"
    if serving != expect:
        print(f"reload: {url} answered 200 but serves {serving}, expected {expect}", file=sys.stderr)
        failed += 1
        continue
    print(f"reload: {url} serves {expect}", file=sys.stderr)
    ok += 1

print(f"reload: {ok} ok, {rejected} rejected, {failed} failed, {unreachable} unreachable", file=sys.stderr)
# 2: the bundle was rejected; 3: failures and no replica took it; 1: some took it
sys.exit(2 if rejected else (1 if ok else 3) if failed else 0)
PY
reload_rc=$?
set -e
if [ "$reload_rc" -eq 2 ] || [ "$reload_rc" -eq 3 ]; then
  # nothing serves the new bundle: `current` goes back to what the replicas serve
  if [ -n "$previous" ]; then
    point_current "$previous"
    log "current -> ${previous} again"
  fi
  [ "$reload_rc" -eq 2 ] && die "a replica rejected bundle ${version}; the old bundle keeps serving"
  die "no replica could be reloaded with ${version} (see above); the old bundle keeps serving"
elif [ "$reload_rc" -ne 0 ]; then
  die "reload failed on some replicas while others took ${version} (current -> ${version}; restart the rest)"
fi

# ------------------------------------------------------------ prune old bundles
if [ "$keep" -gt 0 ] 2>/dev/null; then
  find "$root" -mindepth 1 -maxdepth 1 -type d -name 'v[0-9]*' -printf '%T@ %f\n' | sort -rn |
    tail -n +"$((keep + 1))" | while read -r _ old; do
      [ "$old" = "$version" ] || [ "$old" = "$previous" ] && continue
      rm -rf "${root:?}/${old}" && log "pruned ${old}"
    done
fi
log "done: ${version} (model_version ${model_version})"
