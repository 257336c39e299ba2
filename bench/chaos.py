"""Faults under load: what the running service promises when things break.

Bounded runs against local servers only (127.0.0.1: `magnet serve` subprocesses, a
private redis-server, and the API image under the local Docker engine). Parts:

  fuzz    schemathesis over the whole OpenAPI document of a live server (examples,
          coverage, fuzzing and stateful phases; checks not_a_server_error,
          response_schema_conformance, content_type_conformance): 0 responses of 500,
          every response matching its documented schema. The server's own /metrics
          count of 5xx is reported beside schemathesis' verdict.
  redis   wrk, concurrency 16, --duration s (60) on a mix of /recommend and /explain;
          Redis is SIGKILLed a quarter in and restarted on the same port at 60 %:
          0 non-2xx and 0 socket errors; p50/p99 before, during and after the outage,
          from a per-request timeline (MAGNET_LOCAL_CACHE_SIZE=0, so every cache lookup
          goes to Redis).
  reload  the same wrk load while POST /admin/reload alternates two valid bundles 20
          times with a corrupt bundle (bad checksum, missing file, truncated manifest)
          after every fourth: 0 failed requests, every corrupt bundle refused with 409
          (and the served version unchanged), every valid one 200 and served.
  kill    the API image (magnet-serving:latest) run with the compose file's settings
          and healthcheck (deploy/compose_run.py) on a bind-mounted bundle:
          `docker kill` + `docker start` (what an operator or orchestrator does; a killed
          container is not restarted by its policy), then a crash (the container's
          process SIGKILLed from the host; the `unless-stopped` policy restarts it):
          seconds until /readyz answers 200 and until the healthcheck says healthy.
  events  POST /events with Redis up (every acknowledged event is in the stream), Redis
          SIGKILLed (every POST /events 503, nothing acknowledged; /recommend 200), Redis
          back and events stored again; a user's recommendations exclude its events.

Per-request latency comes from a wrk Lua script that timestamps each request with the
monotonic clock (LuaJIT ffi), one connection per wrk thread so requests and responses
pair up, one file per thread.

    python -m bench.chaos [--quick] [--parts fuzz,redis,reload,kill,events] [--duration 60]
                          [--json OUT] [--markdown OUT]

Exits 1 if any promise is broken. Needs wrk and redis-server (Debian packages); the
kill part needs a running Docker engine and the images (`SMOKE_KEEP_ENGINE=1 bash
deploy/smoke.sh` builds them and leaves the engine up) and is skipped, saying so, without.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import utc_now, write_json
from bench.serving import LUA_DONE, LUA_THREAD_IDS, ROOT, Server, _stop, machine_info, make_bundle, run_wrk, start_server
from service.server import free_port

PARTS = ("fuzz", "redis", "reload", "kill", "events")
LOOPBACK = "127.0.0.1"
CONCURRENCY = 16

# One connection per wrk thread (-t C -c C): request() and response() alternate per thread,
# so the time between them is that request's latency. Lines "start_s latency_us status".
LUA_TIMELINE = LUA_THREAD_IDS + r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } magnet_chaos_timespec;
int clock_gettime(int clk_id, magnet_chaos_timespec *tp);
]]
local ts = ffi.new("magnet_chaos_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC, Python's time.monotonic()
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local reqs, n, i, t0, out = {}, 0, 0, 0, nil
init = function(args)
  for line in io.lines(args[1]) do reqs[#reqs + 1] = wrk.format("GET", line) end
  n = #reqs
  i = ((tid or 0) * 7919) % n
  out = io.open(args[2] .. "." .. (tid or 0), "w")
  out:setvbuf("line")  -- wrk's threads never close their files: nothing may wait in a buffer
end
request = function()
  i = i % n + 1
  t0 = now()
  return reqs[i]
end
response = function(status, headers, body)
  out:write(string.format("%.6f %d %d\n", t0, (now() - t0) * 1e6, status))
end
""" + LUA_DONE


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    """A wrk run in a background thread, with its per-request timeline."""

    url: str
    paths: Path
    duration: float
    tmp: Path
    result: dict[str, Any] | None = None
    error: BaseException | None = None

    def start(self) -> "Load":
        self.script = self.tmp / "timeline.lua"
        self.script.write_text(LUA_TIMELINE)
        self.prefix = self.tmp / f"timeline-{time.monotonic_ns()}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = run_wrk(self.url, self.script, [str(self.paths), str(self.prefix)], CONCURRENCY,
                                  self.duration, threads=CONCURRENCY)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def join(self) -> dict[str, Any]:
        self.thread.join(self.duration + 120)
        if self.error is not None:
            raise self.error
        assert self.result is not None, "wrk did not finish"
        return self.result

    def timeline(self) -> np.ndarray:
        """[n, 3]: start (monotonic s), latency (ms), status of every answered request."""
        rows = [np.loadtxt(f, ndmin=2) for f in sorted(self.tmp.glob(self.prefix.name + ".*")) if f.stat().st_size]
        if not rows:
            return np.zeros((0, 3))
        t = np.concatenate(rows)
        return np.column_stack([t[:, 0], t[:, 1] / 1e3, t[:, 2]])


def window(timeline: np.ndarray, start: float, end: float) -> dict[str, Any]:
    """Requests started in [start, end): count, non-2xx, p50/p99/max latency (ms)."""
    sel = timeline[(timeline[:, 0] >= start) & (timeline[:, 0] < end)]
    if not len(sel):
        return {"requests": 0, "non_2xx": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    start, end = max(start, float(sel[:, 0].min())), min(end, float(sel[:, 0].max()))  # the span requests cover
    lat, status = sel[:, 1], sel[:, 2]
    return {"requests": int(len(sel)), "non_2xx": int(((status < 200) | (status >= 300)).sum()),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(lat.max()), 2), "seconds": round(end - start, 1)}


def mixed_paths(tmp: Path, user_ids: list[str], item_ids: list[str], n: int, seed: int) -> Path:
    """GET /recommend and /explain (alternating) over random users and pairs."""
    rng = random.Random(seed)
    lines = []
    for j in range(n):
        u = rng.choice(user_ids)
        lines.append(f"/recommend/{u}?k=10" if j % 2 == 0 else f"/explain/{u}/{rng.choice(item_ids)}")
    path = tmp / f"paths-{seed}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk_summary(res: dict[str, Any]) -> dict[str, Any]:
    return {k: res[k] for k in ("requests", "rps", "p50_ms", "p99_ms", "max_ms", "errors", "non_2xx")}


# --------------------------------------------------------------------------- helpers


def request(url: str, method: str = "GET", path: str = "/", body: dict | None = None,
            token: str | None = None, timeout: float = 60) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    assert host == LOOPBACK, f"chaos runs target loopback only, not {host}"
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw or b"{}")
        except ValueError:
            return resp.status, {"raw": raw[:200].decode(errors="replace")}
    finally:
        conn.close()


def status_counts(server: Server) -> dict[str, float]:
    """magnet_http_requests_total summed by status, from the server's /metrics."""
    conn = server.conn()
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("magnet_http_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            out[status] = out.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def redis_proc(tmp: Path, port: int) -> subprocess.Popen:
    """redis-server on loopback `port` (a cache: no persistence), answering PING."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found on PATH (apt-get install redis-server)")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=(tmp / f"redis-{port}.log").open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=2)
            if out.stdout.strip() == "PONG":
                return proc
        except (OSError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"redis-server did not start on port {port}")


def corrupt_copies(bundle: Path, tmp: Path) -> list[Path]:
    """Three broken copies of `bundle`: a flipped byte, a missing file, a truncated manifest."""
    out = []
    for kind in ("checksum", "missing", "manifest"):
        dest = tmp / f"corrupt-{kind}"
        shutil.copytree(bundle, dest)
        if kind == "checksum":
            data = bytearray((dest / "item_emb.npy").read_bytes())
            data[-1] ^= 0xFF
            (dest / "item_emb.npy").write_bytes(bytes(data))
        elif kind == "missing":
            (dest / "user_emb.npy").unlink()
        else:
            text = (dest / "manifest.json").read_text()
            (dest / "manifest.json").write_text(text[: len(text) // 2])
        out.append(dest)
    return out


# --------------------------------------------------------------------------- parts


def part_fuzz(server: Server, token: str, examples: int, seed: int, tmp: Path) -> dict[str, Any]:
    st = shutil.which("st") or shutil.which("schemathesis")
    if st is None:
        return {"skipped": "schemathesis is not installed (pip install schemathesis)"}
    before = status_counts(server)
    report = tmp / "schemathesis.json"
    cmd = [st, "run", f"{server.url}/openapi.json", "--checks",
           "not_a_server_error,response_schema_conformance,content_type_conformance",
           "--max-examples", str(examples), "--seed", str(seed), "--workers", "1", "--no-color",
           "--header", f"Authorization: Bearer {token}", "--request-timeout", "30",
           "--report", "json", "--report-json-path", str(report), "--suppress-health-check", "all"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=tmp)  # its cache dir goes there
    seconds = time.monotonic() - t0
    after = status_counts(server)
    statuses = {s: int(after.get(s, 0) - before.get(s, 0)) for s in sorted(after) if after.get(s, 0) > before.get(s, 0)}
    summary = [line for line in proc.stdout.splitlines() if "generated" in line or "passed" in line or "failures" in line]
    out = {"command": " ".join(cmd[:2] + ["<url>/openapi.json"] + cmd[3:]).replace(token, "<token>"),
           "exit_code": proc.returncode, "seconds": round(seconds, 1), "server_statuses": statuses,
           "server_5xx": sum(v for s, v in statuses.items() if s.startswith("5")), "summary": summary[-3:]}
    try:
        rep = json.loads(report.read_text())
        out["report"] = {k: rep[k] for k in rep if k in ("summary", "failures", "stats", "operations")} or None
    except (OSError, ValueError):
        out["report"] = None
    out["ok"] = proc.returncode == 0 and out["server_5xx"] == 0
    if not out["ok"]:
        out["output_tail"] = proc.stdout[-4000:]
    return out


def part_redis(server: Server, redis_port: int, paths: Path, duration: float, tmp: Path,
               rproc_box: list[subprocess.Popen]) -> dict[str, Any]:
    load = Load(server.url, paths, duration, tmp).start()
    t_kill = load.started + duration * 0.25
    t_back = load.started + duration * 0.60
    time.sleep(max(0.0, t_kill - time.monotonic()))
    killed_at = time.monotonic()
    os.killpg(rproc_box[0].pid, signal.SIGKILL)
    rproc_box[0].wait(timeout=10)
    time.sleep(max(0.0, t_back - time.monotonic()))
    restarted_at = time.monotonic()
    rproc_box[0] = redis_proc(tmp, redis_port)
    up_at = time.monotonic()
    res = load.join()
    tl = load.timeline()
    end = float(tl[:, 0].max()) + 1e-6 if len(tl) else up_at  # wrk starts a little after the thread
    metrics = server.metrics()
    out = {"wrk": wrk_summary(res), "concurrency": CONCURRENCY, "duration_s": duration,
           "outage_s": round(up_at - killed_at, 1),
           "before": window(tl, load.started, killed_at), "during_outage": window(tl, killed_at, up_at),
           "after": window(tl, up_at, end), "timeline_requests": int(len(tl)),
           "cache_errors": metrics.get("errors", 0.0), "cache_bypassed": metrics.get("bypassed", 0.0),
           "restart_s": round(up_at - restarted_at, 2)}
    out["timeline_complete"] = out["timeline_requests"] == res["requests"]
    out["ok"] = res["errors"] == 0 and res["non_2xx"] == 0 and out["during_outage"]["requests"] > 0
    return out


def part_reload(server: Server, token: str, bundles: list[Path], corrupt: list[Path], paths: Path,
                duration: float, tmp: Path) -> dict[str, Any]:
    versions = {b: json.loads((b / "manifest.json").read_text())["model_version"] for b in bundles}
    plan: list[Path] = []
    for n in range(20):
        plan.append(bundles[n % 2])
        if n % 4 == 3:
            plan.append(corrupt[(n // 4) % len(corrupt)])
    load = Load(server.url, paths, duration, tmp).start()
    time.sleep(min(2.0, duration / 10))
    gap = max(0.0, (duration * 0.8) / len(plan))
    results, serving = [], request(server.url, path="/readyz")[1].get("model_version")
    for bundle in plan:
        t0 = time.monotonic()
        status, body = request(server.url, "POST", "/admin/reload", {"bundle": str(bundle)}, token=token)
        took = time.monotonic() - t0
        now_serving = request(server.url, path="/readyz")[1].get("model_version")
        valid = bundle in versions
        ok = (status == 200 and now_serving == versions[bundle]) if valid else (status == 409 and now_serving == serving)
        results.append({"bundle": bundle.name, "valid": valid, "status": status, "seconds": round(took, 3),
                        "serving": now_serving, "ok": ok, "detail": None if ok else body})
        serving = now_serving
        time.sleep(gap)
    res = load.join()
    valid = [r for r in results if r["valid"]]
    bad = [r for r in results if not r["valid"]]
    out = {"wrk": wrk_summary(res), "concurrency": CONCURRENCY, "duration_s": duration,
           "reloads": len(valid), "reloads_ok": sum(r["ok"] for r in valid),
           "corrupt": len(bad), "corrupt_409": sum(r["status"] == 409 for r in bad),
           "reload_s_median": round(float(np.median([r["seconds"] for r in valid])), 3),
           "reload_s_max": round(max(r["seconds"] for r in valid), 3),
           "during_reloads": window(load.timeline(), 0.0, float("inf")),
           "failures": [r for r in results if not r["ok"]]}
    out["ok"] = (res["errors"] == 0 and res["non_2xx"] == 0 and out["reloads_ok"] == out["reloads"]
                 and out["corrupt_409"] == out["corrupt"] and all(r["ok"] for r in bad))
    return out


def _docker() -> str | None:
    for exe in ("/usr/bin/docker", shutil.which("docker")):
        if exe and os.access(exe, os.X_OK):
            try:
                if subprocess.run([exe, "info"], capture_output=True, timeout=20).returncode == 0:
                    return exe
            except (OSError, subprocess.TimeoutExpired):
                pass
    return None


def _wait(cond: Any, timeout: float, step: float = 0.1) -> float | None:
    """Seconds until cond() is true, or None after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if cond():
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(step)
    return None


def part_kill(bundle: Path, redis_port: int, tmp: Path) -> dict[str, Any]:
    docker = _docker()
    if docker is None:
        return {"skipped": "no Docker engine answers (SMOKE_KEEP_ENGINE=1 bash deploy/smoke.sh starts one and builds the images)"}
    image = "magnet-serving:latest"
    if subprocess.run([docker, "image", "inspect", image], capture_output=True).returncode != 0:
        return {"skipped": f"no {image} image (bash deploy/smoke.sh builds it)"}
    project, port = "magnet-chaos", free_port()
    env = {**os.environ, "API_PORT": str(port), "REDIS_PORT": str(redis_port)}
    args = subprocess.run([sys.executable, str(ROOT / "deploy" / "compose_run.py"), "run", "api", "--project", project,
                           "--env", f"MAGNET_HOST={LOOPBACK}", "--env", "MAGNET_BUNDLE=/bundle",
                           "--volume", f"{bundle}:/bundle:ro"],
                          env=env, capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    name = f"{project}-api"
    url = f"http://{LOOPBACK}:{port}"

    def ready() -> bool:
        return request(url, path="/readyz", timeout=2)[0] == 200

    def gone() -> bool:
        try:
            return not ready()
        except OSError:  # connection refused: nothing listens
            return True

    def health() -> str:
        return subprocess.run([docker, "inspect", "-f", "{{.State.Health.Status}}", name],
                              capture_output=True, text=True).stdout.strip()

    subprocess.run([docker, "rm", "-f", name], capture_output=True)
    try:
        subprocess.run([docker, "run", "--detach", *args], check=True, capture_output=True)
        t0 = time.monotonic()
        first = {"ready_s": _until(ready, t0, 120), "healthy_s": _until(lambda: health() == "healthy", t0, 120, 0.5)}
        out: dict[str, Any] = {"image": image, "healthcheck": "the compose api service's (interval 15 s)",
                               "first_start": first}
        # docker kill: a manual stop, so no restart policy; started again by hand
        t0 = time.monotonic()
        subprocess.run([docker, "kill", name], check=True, capture_output=True)
        down = _wait(gone, 10) is not None
        subprocess.run([docker, "start", name], check=True, capture_output=True)
        out["docker_kill_then_start"] = {"was_down": down, "ready_s": _until(ready, t0, 120),
                                         "healthy_s": _until(lambda: health() == "healthy", t0, 120, 0.5)}
        # a crash: SIGKILL to the container's process from the host; the restart policy acts
        pid = int(subprocess.run([docker, "inspect", "-f", "{{.State.Pid}}", name],
                                 capture_output=True, text=True, check=True).stdout)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        crashed = _wait(gone, 10) is not None
        crash = {"ready_s": _until(ready, t0, 120), "healthy_s": _until(lambda: health() == "healthy", t0, 120, 0.5)}
        restarts = subprocess.run([docker, "inspect", "-f", "{{.RestartCount}}", name],
                                  capture_output=True, text=True).stdout.strip()
        out["crash_restart_policy"] = {"was_down": crashed, **crash, "restart_count": int(restarts or 0)}
        timings = [first, out["docker_kill_then_start"], crash]
        out["ok"] = down and crashed and all(t["ready_s"] is not None and t["healthy_s"] is not None for t in timings)
        return out
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)
        subprocess.run([docker, "volume", "rm", "-f", f"{project}_bundles"], capture_output=True)  # compose's volume


def _until(cond: Any, t0: float, timeout: float, step: float = 0.1) -> float | None:
    """Seconds from `t0` until cond() holds, or None after `timeout`."""
    return None if _wait(cond, timeout, step) is None else round(time.monotonic() - t0, 1)


def part_events(server: Server, redis_port: int, rproc_box: list[subprocess.Popen], user_ids: list[str],
                item_ids: list[str], tmp: Path, batches: int = 200) -> dict[str, Any]:
    """POST /events with Redis up (every 202's events in the stream), Redis SIGKILLed (every
    POST /events 503, every /recommend 200), Redis back (empty: no persistence here) and events
    again 202 and stored; a user's recommendations then exclude its event items."""
    import redis

    rng = np.random.default_rng(7)
    store = redis.Redis(host=LOOPBACK, port=redis_port, socket_timeout=5)

    def post(n: int) -> tuple[int, int]:
        events = [{"user_id": f"chaos-{int(rng.integers(50))}", "item_id": item_ids[int(rng.integers(len(item_ids)))]}
                  for _ in range(n)]
        status, body = request(server.url, "POST", "/events", {"events": events})
        return status, int(body.get("accepted", 0)) if status == 202 else 0

    up = [post(10) for _ in range(batches)]
    acked_up = sum(a for _, a in up)
    stored_up = int(store.xlen("magnet:events"))
    os.killpg(rproc_box[0].pid, signal.SIGKILL)
    rproc_box[0].wait(timeout=10)
    down = [post(10) for _ in range(batches // 4)]
    rec_down = [request(server.url, path=f"/recommend/{user_ids[n]}?k=10")[0] for n in range(50)]
    rproc_box[0] = redis_proc(tmp, redis_port)
    time.sleep(1.5)  # past the event reads' back-off
    back = [post(10) for _ in range(batches // 4)]
    acked_back = sum(a for _, a in back)
    stored_back = int(redis.Redis(host=LOOPBACK, port=redis_port, socket_timeout=5).xlen("magnet:events"))
    item = item_ids[0]
    request(server.url, "POST", "/events", {"events": [{"user_id": user_ids[0], "item_id": item}]})
    _, rec = request(server.url, path=f"/recommend/{user_ids[0]}?k=1000")
    excluded = item not in {it["item_id"] for it in rec.get("items", [])}
    out = {"batches_up": len(up), "status_up": dict(Counter(s for s, _ in up)), "acked_up": acked_up,
           "stored_up": stored_up, "status_down": dict(Counter(s for s, _ in down)),
           "recommend_down": dict(Counter(rec_down)), "status_back": dict(Counter(s for s, _ in back)),
           "acked_back": acked_back, "stored_back": stored_back, "event_item_excluded": excluded}
    out["ok"] = (acked_up == stored_up == 10 * len(up) and set(out["status_down"]) == {503}
                 and set(out["recommend_down"]) == {200} and acked_back == stored_back == 10 * len(back) and excluded)
    return out


# --------------------------------------------------------------------------- main


def markdown(result: dict[str, Any]) -> str:
    lines = ["| part | result | key figures |", "| --- | --- | --- |"]
    for name, part in result["parts"].items():
        if "skipped" in part:
            lines.append(f"| {name} | skipped | {part['skipped']} |")
            continue
        verdict = "pass" if part.get("ok") else "FAIL"
        if name == "fuzz":
            fig = f"{sum(part['server_statuses'].values())} requests, statuses {part['server_statuses']}, 5xx: {part['server_5xx']}"
        elif name == "redis":
            d = part["during_outage"]
            fig = (f"{part['wrk']['requests']} requests, non-2xx {part['wrk']['non_2xx']}, errors {part['wrk']['errors']}; "
                   f"outage {part['outage_s']} s: p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms "
                   f"(before: p99 {part['before']['p99_ms']} ms, after: {part['after']['p99_ms']} ms)")
        elif name == "reload":
            fig = (f"{part['wrk']['requests']} requests, non-2xx {part['wrk']['non_2xx']}, errors {part['wrk']['errors']}; "
                   f"{part['reloads_ok']}/{part['reloads']} reloads served, {part['corrupt_409']}/{part['corrupt']} corrupt -> 409; "
                   f"reload median {part['reload_s_median']} s; p99 {part['during_reloads']['p99_ms']} ms")
        elif name == "kill":
            k, c = part["docker_kill_then_start"], part["crash_restart_policy"]
            fig = (f"docker kill + start: /readyz 200 after {k['ready_s']} s, healthy after {k['healthy_s']} s; "
                   f"crash (policy restart): {c['ready_s']} s / {c['healthy_s']} s")
        elif name == "events":
            fig = (f"Redis up: {part['acked_up']} acknowledged, {part['stored_up']} in the stream; killed: POST /events "
                   f"{part['status_down']}, /recommend {part['recommend_down']}; back: {part['acked_back']} acknowledged, "
                   f"{part['stored_back']} stored; event item excluded: {part['event_item_excluded']}")
        else:
            fig = json.dumps(part)[:200]
        lines.append(f"| {name} | {verdict} | {fig} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 s wrk runs, 20 fuzz examples per operation")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--duration", type=float, help="seconds of each wrk run (default 60; quick 20)")
    p.add_argument("--examples", type=int, help="schemathesis examples per operation (default 100; quick 20)")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.add_argument("--markdown", type=Path, help="write the summary table as Markdown")
    a = p.parse_args(argv)
    parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    duration = a.duration or (20.0 if a.quick else 60.0)
    examples = a.examples or (20 if a.quick else 100)
    if {"redis", "reload"} & set(parts) and shutil.which("wrk") is None:
        raise SystemExit("wrk not found on PATH (apt-get install wrk)")

    started = time.monotonic()
    result: dict[str, Any] = {"date": utc_now(), "machine": machine_info(), "duration_s": duration,
                              "examples": examples, "users": a.users, "items": a.items, "parts": {}}
    token = "chaos-" + os.urandom(6).hex()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            bundle_a = make_bundle(tmp / "a", a.users, a.items, 32, 4, a.seed)
            bundle_b = make_bundle(tmp / "b", a.users, a.items, 32, 4, a.seed + 1)
            user_ids = json.loads((bundle_a / "user_ids.json").read_text())
            item_ids = json.loads((bundle_a / "item_ids.json").read_text())
            paths = mixed_paths(tmp, user_ids, item_ids, 20_000, a.seed)
            redis_port = free_port()
            rproc = [redis_proc(tmp, redis_port)]
            settings = {"MAGNET_ADMIN_TOKEN": token, "MAGNET_REDIS_URL": f"redis://{LOOPBACK}:{redis_port}/0",
                        "MAGNET_LOCAL_CACHE_SIZE": "0"}
            server = start_server("chaos", bundle_a, tmp, settings)
            procs.append(server.proc)
            print(f"server {server.url} (pid {server.proc.pid}), redis 127.0.0.1:{redis_port}, "
                  f"bundles {a.users} users x {a.items} items", flush=True)
            for name in parts:
                t0 = time.monotonic()
                print(f"--- {name}", flush=True)
                if name == "fuzz":
                    out = part_fuzz(server, token, examples, a.seed, tmp)
                elif name == "redis":
                    out = part_redis(server, redis_port, paths, duration, tmp, rproc)
                elif name == "reload":
                    corrupt = corrupt_copies(bundle_a, tmp)
                    out = part_reload(server, token, [bundle_a, bundle_b], corrupt, paths, duration, tmp)
                    request(server.url, "POST", "/admin/reload", {"bundle": str(bundle_a)}, token=token)
                elif name == "kill":
                    out = part_kill(bundle_a, redis_port, tmp)
                else:
                    out = part_events(server, redis_port, rproc, user_ids, item_ids, tmp)
                out["wall_s"] = round(time.monotonic() - t0, 1)
                result["parts"][name] = out
                print(json.dumps(out, indent=1, default=str)[:3000], flush=True)
        finally:
            for proc in procs:
                _stop(proc)
            for proc in rproc if "rproc" in locals() else []:
                _stop(proc)
    result["wall_s"] = round(time.monotonic() - started, 1)
    table = markdown(result)
    print(table)
    if a.json:
        write_json(result, a.json)
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(table)
    failed = [n for n, part in result["parts"].items() if "skipped" not in part and not part.get("ok")]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
