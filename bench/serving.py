"""Serving cost: requests/s and p50/p95/p99 latency of the real HTTP server under `wrk`.

A bundle of realistic size is fabricated (offline/synthetic.make_run + offline/export.py,
default 10k users x 20k items, d=64, 4 experts; --quick: 2k x 5k), served by
`magnet serve` (uvicorn, one worker) in a subprocess on a free loopback port, and
driven by `wrk` from a separate process with generated Lua scripts that spread the
requests over many user ids / pairs and print wrk's latency percentiles as JSON.

Production settings, stated: MAGNET_ACCESS_LOG=false (per-route counts and latency
histograms are in /metrics; a log line per request is the ingress' job), JSON logs
on for everything else (the default), one uvicorn worker (2 shared CPU cores here:
one for the server, one for wrk), every other MAGNET_* at its default.

Two servers run side by side on the same bundle:
  * "default": production defaults (recommendations cached). Its cache is warmed
    before the runs: every user's k=20 list, and a fixed set of explain pairs.
  * "nocache": MAGNET_CACHE_RECOMMENDATIONS=false, for /recommend computed on every
    request (FAISS search + rescoring), and for /explain over random pairs drawn
    from users x items (a pair space far larger than the LRU, so ~every request is
    a miss; it runs here so it never evicts the default server's warm entries).
The cache hit ratio (and, with --redis, cache errors/skips and the share answered by
the in-process front tier, MAGNET_LOCAL_CACHE_SIZE; --local-cache-size 0 turns it off)
of each run is read from the server's /metrics and reported, as is the server's CPU
time per request.
A third process, the control app (`floor_app`), runs the same framework stack with a
route shaped like /recommend that returns a constant: what FastAPI alone charges.

Scenarios x concurrency 1, 16, 64 (wrk -t1 -c C); the matrix is repeated --rounds
times and each cell is the median over rounds. The bars are ratios against /healthz
measured in the same run (the machine is shared and noisy): at concurrency 16,
GET /recommend and cached /explain >= 0.6x /healthz requests/s, /recommend p99
<= 1.5x /healthz p99, and POST /recommend/{user_id} with a 50-item history (a new user
folded in, never cached) >= 0.5x /healthz requests/s. At concurrency 16 each scenario's run is paired with a /healthz
run right before it, and the ratio reported is the median of the paired ratios.
The process exits 1 if any request failed (non-2xx, timeout, socket error).

    python -m bench.serving [--quick] [--redis] [--json OUT] [--plot docs/bench_serving.png]
                            [--markdown OUT.md] [--only recommend,explain_cached] [--access-log]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import Query, Request  # module level: the control app's annotations resolve here

from bench.common import machine_info as _common_machine_info
from bench.common import utc_now, write_json
from service.responses import OrjsonResponse
from service.server import free_port

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 16, 64)
K = 20
BATCH_USERS = 16
BAR_THROUGHPUT = 0.6   # x /healthz requests/s at concurrency 16
BAR_P99 = 1.5          # x /healthz p99 at concurrency 16
BAR_CONCURRENCY = 16
BAR_HISTORY = 0.5      # POST /recommend/{user_id} with a HISTORY-item history, x /healthz requests/s at 16
HISTORY = 50

# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """bench.common's machine description plus the serving stack's versions and wrk's."""
    info = _common_machine_info(packages=("numpy", "faiss", "fastapi", "starlette", "uvicorn", "uvloop",
                                          "httptools", "orjson", "redis"))
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        info["wrk"] = (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, IndexError):
        info["wrk"] = None
    redis = shutil.which("redis-server")
    if redis:
        out = subprocess.run([redis, "--version"], capture_output=True, text=True)
        info["redis_server"] = out.stdout.strip()
    return info


# --------------------------------------------------------------------------- processes


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


@dataclass
class Server:
    """One `magnet serve` subprocess."""

    name: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def cpu_seconds(self) -> float:
        """user + system CPU time of the server process (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict[str, float]:
        c = self.conn()
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        out = {}
        for line in text.splitlines():
            m = re.match(r'magnet_cache_(hits|misses)_total\{backend="([^"]*)",kind="([^"]*)"\} (\S+)', line)
            if m:  # summed over backends: with Redis, the in-process front tier's hits count as "local"
                key = f"{m.group(1)}:{m.group(3)}"
                out[key] = out.get(key, 0.0) + float(m.group(4))
                if m.group(1) == "hits" and m.group(2) == "local":
                    out[f"local_hits:{m.group(3)}"] = float(m.group(4))
            m = re.match(r'magnet_cache_(errors|bypassed)_total\{[^}]*\} (\S+)', line)
            if m:  # summed over ops (get, set)
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
        return out

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_server(name: str, bundle: Path, workdir: Path, settings: dict[str, str]) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGNET_")}  # hermetic settings
    env.update({"MAGNET_ACCESS_LOG": "false", "MAGNET_LOG_JSON": "true", "MAGNET_LOG_LEVEL": "INFO"})
    env.update(settings)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log_path = workdir / f"server-{name}.log"
    cmd = [sys.executable, "-m", "offline", "serve", "--bundle", str(bundle), "--host", "127.0.0.1",
           "--port", str(port)]  # = `magnet serve`
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = Server(name, port, proc, log_path, {k: v for k, v in env.items() if k.startswith("MAGNET_")})
    return _wait_until_answering(server, "/readyz", timeout_s=120)


def _wait_until_answering(server: Server, path: str, timeout_s: float) -> Server:
    """Polls `path` until it answers 200; stops the process and raises with its log
    tail if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server {server.name} exited with {server.proc.returncode}:\n{server.tail()}")
        try:
            c = server.conn()
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            _stop(server.proc)
            raise RuntimeError(f"server {server.name} not ready after {timeout_s:.0f} s:\n{server.tail()}")
        time.sleep(0.2)


def floor_app(body_bytes: int = 1200) -> Any:
    """Control app: the service's framework stack (FastAPI routers, our request middleware,
    orjson responses) with a /healthz and a /recommend/{user_id}?k= route of the same
    shape as the real one, answering a constant body of a real response's size. Its
    /recommend : /healthz ratio is what the framework charges for the route's shape alone,
    i.e. the ceiling for any handler work at all."""
    from fastapi import APIRouter, FastAPI

    from service.metrics import Metrics
    from service.middleware import RequestContextMiddleware

    body = json.dumps({"user_id": "u", "model_version": "m", "fallback": None,
                       "items": [{"item_id": f"i{n}", "score": 0.5} for n in range(K)]}).encode()
    body = body[:-1] + b" " * max(0, body_bytes - len(body)) + b"}"
    health, rec = APIRouter(), APIRouter()

    @health.get("/healthz")
    async def healthz() -> OrjsonResponse:
        return OrjsonResponse({"status": "ok"})

    @rec.get("/recommend/{user_id}")
    async def recommend(user_id: str, request: Request,
                        k: Annotated[int, Query(ge=1, le=1000)] = 10) -> OrjsonResponse:
        return OrjsonResponse(body, headers={"x-cache": "hit"})

    app = FastAPI(default_response_class=OrjsonResponse)
    app.include_router(health)
    app.include_router(rec)
    app.add_middleware(RequestContextMiddleware, metrics=Metrics(), access_log=False)
    return app


def floor_serve(port: int) -> None:
    """Serves `floor_app` with the uvicorn options service.server.serve uses."""
    import uvicorn

    uvicorn.run(floor_app(), host="127.0.0.1", port=port, log_config=None, access_log=False,
                proxy_headers=True, log_level="warning")


def start_floor(workdir: Path) -> Server:
    port = free_port()
    log_path = workdir / "server-floor.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", f"from bench.serving import floor_serve; floor_serve({port})"],
                            env=env, cwd=ROOT, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = Server("floor", port, proc, log_path)
    return _wait_until_answering(server, "/healthz", timeout_s=60)


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("--redis needs redis-server on PATH")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), "--protected-mode", "yes"],
                            stdout=(workdir / "redis.log").open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    raise RuntimeError("redis-server did not answer PING")


# --------------------------------------------------------------------------- wrk + Lua

LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"mean_us":%.1f,"max_us":%d,"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99)))
end
"""

# Numbers wrk's threads 0, 1, ... (as the global `tid` in each thread's Lua state).
LUA_THREAD_IDS = r"""
local threads = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
"""

# Requests read from a file (one path, or one POST body, per line), pre-formatted in
# init() and cycled from a per-thread offset, so request() costs wrk nothing.
LUA_CYCLE = r"""
local reqs, n, i = {}, 0, 0
""" + LUA_THREAD_IDS + r"""
init = function(args)
  local file, method = args[1], args[2]
  for line in io.lines(file) do
    if method == "POST" then
      reqs[#reqs + 1] = wrk.format("POST", args[3], {["Content-Type"] = "application/json"}, line)
    else
      reqs[#reqs + 1] = wrk.format("GET", line)
    end
  end
  n = #reqs
  i = ((tid or 0) * 7919) % n
end
request = function()
  i = i % n + 1
  return reqs[i]
end
""" + LUA_DONE

# Uniformly random pairs from users x items (a space far larger than any cache).
LUA_RANDOM_PAIRS = r"""
local users, items = {}, {}
""" + LUA_THREAD_IDS + r"""
init = function(args)
  for line in io.lines(args[1]) do users[#users + 1] = line end
  for line in io.lines(args[2]) do items[#items + 1] = line end
  math.randomseed(tonumber(args[3]) + 1000003 * (tid or 0))
end
request = function()
  return wrk.format("GET", "/explain/" .. users[math.random(#users)] .. "/" .. items[math.random(#items)])
end
""" + LUA_DONE


def run_wrk(url: str, script: Path, args: list[str], connections: int, duration: float,
            threads: int = 1) -> dict[str, Any]:
    threads = max(1, min(threads, connections))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "-s", str(script), url, "--", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    raw = json.loads(line.split(" ", 1)[1])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[x] for x in ("connect", "read", "write", "status", "timeout"))
    return {"requests": raw["requests"], "seconds": seconds, "rps": raw["requests"] / seconds,
            "p50_ms": raw["p50_us"] / 1e3, "p90_ms": raw["p90_us"] / 1e3, "p95_ms": raw["p95_us"] / 1e3,
            "p99_ms": raw["p99_us"] / 1e3, "mean_ms": raw["mean_us"] / 1e3, "max_ms": raw["max_us"] / 1e3,
            "errors": errors, "non_2xx": raw["status"], "kb_per_request": raw["bytes"] / max(1, raw["requests"]) / 1024}


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str           # row label
    label: str          # what it is, for the table
    server: str         # "default" | "nocache"
    script: Path
    args: Callable[[int], list[str]]   # round/concurrency-dependent Lua args (seed)
    path: str = "/"     # URL path wrk connects to (POST target for bodies)
    cache_kind: str | None = None      # which /metrics cache counters to read
    baseline: str = "healthz"          # row whose req/s and p99 this one is compared with
    concurrency: tuple[int, ...] = CONCURRENCY


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def build_scenarios(tmp: Path, user_ids: list[str], item_ids: list[str], explain_pairs: list[tuple[str, str]],
                    seed: int) -> list[Scenario]:
    rng = random.Random(seed)
    q = urllib.parse.quote
    cycle = tmp / "cycle.lua"
    cycle.write_text(LUA_CYCLE)
    pairs_lua = tmp / "random_pairs.lua"
    pairs_lua.write_text(LUA_RANDOM_PAIRS)

    users = list(user_ids)
    rng.shuffle(users)
    health = _write_lines(tmp / "healthz.txt", ["/healthz"])
    rec = _write_lines(tmp / "recommend.txt", [f"/recommend/{q(u, safe='')}?k={K}" for u in users])
    bodies = [json.dumps({"user_ids": rng.sample(user_ids, BATCH_USERS), "k": K}, separators=(",", ":"))
              for _ in range(2000)]
    batch = _write_lines(tmp / "batch.txt", bodies)
    histories = _write_lines(tmp / "history.txt", [json.dumps({"k": K, "history": rng.sample(item_ids, HISTORY)},
                                                              separators=(",", ":")) for _ in range(2000)])
    exp = _write_lines(tmp / "explain_cached.txt", [f"/explain/{q(u, safe='')}/{q(i, safe='')}"
                                                     for u, i in explain_pairs])
    all_users = _write_lines(tmp / "users.txt", [q(u, safe="") for u in user_ids])
    all_items = _write_lines(tmp / "items.txt", [q(i, safe="") for i in item_ids])
    counter = iter(range(1, 1 << 30))

    def fixed(file: Path, method: str = "GET", target: str = "/") -> Callable[[int], list[str]]:
        return lambda _c: [str(file), method, target]

    return [
        Scenario("healthz", "GET /healthz (baseline)", "default", cycle, fixed(health)),
        Scenario("recommend", f"GET /recommend k={K}, cache warm (default)", "default", cycle, fixed(rec),
                 cache_kind="recommend"),
        Scenario("recommend_computed", f"GET /recommend k={K}, computed (rec cache off)", "nocache", cycle,
                 fixed(rec), cache_kind="recommend"),
        Scenario("batch", f"POST /recommend {BATCH_USERS} users k={K}, cache warm", "default", cycle,
                 fixed(batch, "POST", "/recommend"), path="/recommend", cache_kind="recommend"),
        Scenario("batch_computed", f"POST /recommend {BATCH_USERS} users k={K}, computed", "nocache", cycle,
                 fixed(batch, "POST", "/recommend"), path="/recommend", cache_kind="recommend"),
        Scenario("history", f"POST /recommend/{{new user}} {HISTORY}-item history k={K} (fold-in)", "default",
                 cycle, fixed(histories, "POST", "/recommend/new-visitor"), path="/recommend/new-visitor"),
        Scenario("explain_cached", f"GET /explain, {len(explain_pairs)} warm pairs", "default", cycle, fixed(exp),
                 cache_kind="explain"),
        Scenario("explain_uncached", "GET /explain, random pairs (miss)", "nocache", pairs_lua,
                 lambda _c: [str(all_users), str(all_items), str(seed * 7 + next(counter))], cache_kind="explain"),
        # Control: the same framework stack answering constants (see floor_app), at the bar's concurrency.
        Scenario("floor_healthz", "control app: GET /healthz", "floor", cycle, fixed(health),
                 baseline="floor_healthz", concurrency=(BAR_CONCURRENCY,)),
        Scenario("floor_route", f"control app: GET /recommend/{{id}}?k={K} returning a constant", "floor", cycle,
                 fixed(rec), baseline="floor_healthz", concurrency=(BAR_CONCURRENCY,)),
    ]


def warm(default: Server, user_ids: list[str], explain_pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Fills the default server's cache: every user's top-K (batched), every explain pair once."""
    started = time.perf_counter()
    c = default.conn()
    for n in range(0, len(user_ids), 1000):
        body = json.dumps({"user_ids": user_ids[n:n + 1000], "k": K})
        c.request("POST", "/recommend", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"warming /recommend: HTTP {r.status}")
    rec_s = time.perf_counter() - started
    q = urllib.parse.quote
    for u, i in explain_pairs:
        c.request("GET", f"/explain/{q(u, safe='')}/{q(i, safe='')}")
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"warming /explain: HTTP {r.status}")
    c.close()
    return {"recommend_s": rec_s, "explain_s": time.perf_counter() - started - rec_s}


def sanity_check(server: Server, user_id: str, item_id: str) -> None:
    """The endpoints answer 200 with the contract's shape before we time them."""
    c = server.conn()
    for path in (f"/recommend/{urllib.parse.quote(user_id, safe='')}?k={K}",
                 f"/explain/{urllib.parse.quote(user_id, safe='')}/{urllib.parse.quote(item_id, safe='')}"):
        c.request("GET", path)
        r = c.getresponse()
        body = json.loads(r.read())
        if r.status != 200:
            raise RuntimeError(f"{server.name} {path}: HTTP {r.status} {body}")
    if len(body["experts"]) == 0 or abs(body["base"] + sum(e["contribution"] for e in body["experts"])
                                        - body["score"]) > 1e-4 * max(1.0, abs(body["score"])):
        raise RuntimeError(f"{server.name}: explanation does not add up: {body}")
    c.request("POST", "/recommend/new-visitor", body=json.dumps({"k": K, "history": [item_id]}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = json.loads(r.read())
    if r.status != 200 or body["fallback"] != "history" or len(body["items"]) != K:
        raise RuntimeError(f"{server.name} POST /recommend/new-visitor: HTTP {r.status} {body}")
    c.close()


def measure(scenario: Scenario, server: Server, concurrency: int, duration: float, threads: int) -> dict[str, Any]:
    before_m = server.metrics() if scenario.cache_kind else {}
    cpu0 = server.cpu_seconds()
    res = run_wrk(server.url + scenario.path, scenario.script, scenario.args(concurrency), concurrency, duration,
                  threads)
    cpu1 = server.cpu_seconds()
    res["server_cpu_us_per_request"] = (cpu1 - cpu0) / max(1, res["requests"]) * 1e6
    res["server_cpu_util"] = (cpu1 - cpu0) / res["seconds"]
    if scenario.cache_kind:
        after = server.metrics()
        hits = after.get(f"hits:{scenario.cache_kind}", 0) - before_m.get(f"hits:{scenario.cache_kind}", 0)
        misses = after.get(f"misses:{scenario.cache_kind}", 0) - before_m.get(f"misses:{scenario.cache_kind}", 0)
        res["cache_hit_ratio"] = hits / (hits + misses) if hits + misses else None
        local = (after.get(f"local_hits:{scenario.cache_kind}", 0)
                 - before_m.get(f"local_hits:{scenario.cache_kind}", 0))
        res["cache_local_hit_ratio"] = local / (hits + misses) if hits + misses else None  # answered in-process
        # Redis answering too slowly (or not at all) is counted, then skipped while backing off
        res["cache_errors"] = after.get("errors", 0) - before_m.get("errors", 0)
        res["cache_bypassed"] = after.get("bypassed", 0) - before_m.get("bypassed", 0)
    else:
        res["cache_hit_ratio"] = res["cache_local_hit_ratio"] = None
        res["cache_errors"] = res["cache_bypassed"] = 0
    return res


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(raw: dict[tuple[str, int], list[dict]], scenarios: list[Scenario],
              paired: dict[tuple[str, int], list[tuple[float, float]]] | None = None) -> list[dict[str, Any]]:
    """Median per (scenario, concurrency) over its runs. Ratios to the baseline are the
    median of the paired ratios where the baseline ran right before (concurrency 16),
    else ratios of the medians."""
    paired = paired or {}
    rows = []
    for s in scenarios:
        for c in CONCURRENCY:
            runs = raw.get((s.name, c))
            if not runs:
                continue
            row = {"scenario": s.name, "label": s.label, "server": s.server, "concurrency": c, "rounds": len(runs)}
            for key in ("rps", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "server_cpu_us_per_request",
                        "server_cpu_util", "cache_hit_ratio", "cache_local_hit_ratio", "kb_per_request"):
                row[key] = _median(runs, key)
            row["requests"] = sum(r["requests"] for r in runs)
            row["errors"] = sum(r["errors"] for r in runs)
            row["cache_errors"] = sum(r["cache_errors"] for r in runs)
            row["cache_bypassed"] = sum(r["cache_bypassed"] for r in runs)
            row["rps_runs"] = [round(r["rps"], 1) for r in runs]
            rows.append(row)
    base = {(r["scenario"], r["concurrency"]): r for r in rows}
    baseline_of = {sc.name: sc.baseline for sc in scenarios}
    for r in rows:
        b = base.get((baseline_of[r["scenario"]], r["concurrency"]))
        pairs = paired.get((r["scenario"], r["concurrency"]))
        r["paired"] = bool(pairs)
        if pairs:
            r["rps_vs_healthz"] = statistics.median(x for x, _ in pairs)
            r["p99_vs_healthz"] = statistics.median(y for _, y in pairs)
            r["rps_vs_healthz_runs"] = [round(x, 3) for x, _ in pairs]
        else:
            r["rps_vs_healthz"] = r["rps"] / b["rps"] if b else None
            r["p99_vs_healthz"] = r["p99_ms"] / b["p99_ms"] if b and b["p99_ms"] else None
    return rows


def bars(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    at = {(r["scenario"], r["concurrency"]): r for r in rows}
    out = []
    for name, what, limit, kind in (
        ("recommend", "rps_vs_healthz", BAR_THROUGHPUT, "min"),
        ("explain_cached", "rps_vs_healthz", BAR_THROUGHPUT, "min"),
        ("recommend", "p99_vs_healthz", BAR_P99, "max"),
        ("history", "rps_vs_healthz", BAR_HISTORY, "min"),
    ):
        r = at.get((name, BAR_CONCURRENCY))
        if r is None or r[what] is None:
            continue
        value = r[what]
        ok = value >= limit if kind == "min" else value <= limit
        out.append({"scenario": name, "metric": what, "concurrency": BAR_CONCURRENCY, "value": round(value, 3),
                    "bar": f"{'>=' if kind == 'min' else '<='} {limit}", "held": ok,
                    "margin": round(value / limit, 3) if kind == "min" else round(limit / value, 3)})
    # informative: the same ratios for the computed (cache-off) /recommend and uncached /explain
    for name in ("floor_route", "recommend_computed", "explain_uncached", "batch"):
        r = at.get((name, BAR_CONCURRENCY))
        if r is not None and r["rps_vs_healthz"] is not None:
            out.append({"scenario": name, "metric": "rps_vs_healthz", "concurrency": BAR_CONCURRENCY,
                        "value": round(r["rps_vs_healthz"], 3), "bar": "(informative)", "held": None})
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'scenario':<20} {'c':>3} {'req/s':>8} {'x hz':>5} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
            f"{'p99 x hz':>8} {'cpu us/req':>10} {'hit':>5} {'local':>5} {'err':>4} {'cache err/skip':>14}")
    lines = [head, "-" * len(head)]
    for r in rows:
        hit = "-" if r["cache_hit_ratio"] is None else f"{r['cache_hit_ratio']:.2f}"
        local = "-" if r.get("cache_local_hit_ratio") is None else f"{r['cache_local_hit_ratio']:.2f}"
        lines.append(
            f"{r['scenario']:<20} {r['concurrency']:>3} {r['rps']:>8.0f} {r['rps_vs_healthz']:>5.2f} "
            f"{r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['p99_vs_healthz']:>8.2f} "
            f"{r['server_cpu_us_per_request']:>10.0f} {hit:>5} {local:>5} {r['errors']:>4} "
            f"{r['cache_errors']:>7.0f}/{r['cache_bypassed']:<6.0f}")
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The table for docs/bench_serving.md (ratios are to each row's baseline)."""
    lines = ["| scenario | conc. | req/s | x baseline | p50 ms | p95 ms | p99 ms | p99 x baseline "
             "| server CPU µs/req | cache hit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        hit = "–" if r["cache_hit_ratio"] is None else f"{r['cache_hit_ratio']:.2f}"
        if r.get("cache_errors") or r.get("cache_bypassed"):
            hit += f" ({r['cache_errors']:.0f} errors, {r['cache_bypassed']:.0f} skipped)"
        lines.append(f"| {r['label']} | {r['concurrency']} | {r['rps']:.0f} | {r['rps_vs_healthz']:.2f} | "
                     f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['p99_vs_healthz']:.2f} | "
                     f"{r['server_cpu_us_per_request']:.0f} | {hit} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    """req/s and p99 per scenario and concurrency, and the concurrency-16 ratios the bars judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(dict.fromkeys(r["scenario"] for r in rows))
    at = {(r["scenario"], r["concurrency"]): r for r in rows}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    width = 0.8 / len(CONCURRENCY)
    x = np.arange(len(names))
    for n, c in enumerate(CONCURRENCY):
        rps = [at[(s, c)]["rps"] if (s, c) in at else 0 for s in names]
        p99 = [at[(s, c)]["p99_ms"] if (s, c) in at else np.nan for s in names]
        axes[0].bar(x + (n - 1) * width, rps, width, label=f"c={c}")
        axes[1].bar(x + (n - 1) * width, p99, width, label=f"c={c}")
    axes[0].set_ylabel("requests/s (median of rounds)")
    axes[1].set_ylabel("p99 latency, ms (median of rounds)")
    axes[1].set_yscale("log")
    c16 = [s for s in names if (s, BAR_CONCURRENCY) in at and at[(s, BAR_CONCURRENCY)]["rps_vs_healthz"] is not None]
    x16 = np.arange(len(c16))
    axes[2].bar(x16 - 0.2, [at[(s, BAR_CONCURRENCY)]["rps_vs_healthz"] for s in c16], 0.4, label="req/s ratio")
    axes[2].bar(x16 + 0.2, [at[(s, BAR_CONCURRENCY)]["p99_vs_healthz"] for s in c16], 0.4, label="p99 ratio")
    axes[2].axhline(BAR_THROUGHPUT, color="C0", ls="--", lw=0.9, label=f"bar: req/s >= {BAR_THROUGHPUT}x")
    axes[2].axhline(BAR_P99, color="C1", ls="--", lw=0.9, label=f"bar: p99 <= {BAR_P99}x")
    axes[2].set_yscale("log")
    axes[2].set_ylabel(f"ratio to baseline /healthz, c={BAR_CONCURRENCY} (paired)")
    for ax, labels, xs in ((axes[0], names, x), (axes[1], names, x), (axes[2], c16, x16)):
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def make_bundle(tmp: Path, n_users: int, n_items: int, dim: int, n_experts: int, seed: int) -> Path:
    from offline.export import export_bundle
    from offline.synthetic import make_run

    make_run(tmp / "run", n_users=n_users, n_items=n_items, dim=dim, n_experts=n_experts, seed=seed)
    return export_bundle(tmp / "run", tmp / "bundle")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2k users x 5k items, 2 s per cell, 1 round (< 2 min)")
    p.add_argument("--redis", action="store_true", help="start a private redis-server; MAGNET_REDIS_URL points at it")
    p.add_argument("--redis-timeout", type=float, default=0.5,
                   help="MAGNET_REDIS_TIMEOUT_S with --redis (default 0.5; the service's default 0.05 trips\n"
                        "under saturation on a shared box, after which the cache is skipped while backing off)")
    p.add_argument("--local-cache-size", type=int,
                   help="MAGNET_LOCAL_CACHE_SIZE with --redis (default: the service's; 0 = every lookup\n"
                        "goes to Redis, no in-process front tier)")
    p.add_argument("--local-cache-ttl", type=float,
                   help="MAGNET_LOCAL_CACHE_TTL_S with --redis (default: the service's)")
    p.add_argument("--json", type=Path, help="write results as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG plot (matplotlib Agg)")
    p.add_argument("--markdown", type=Path, help="write the results table as Markdown")
    p.add_argument("--users", type=int, help="users in the fabricated bundle (default 10000; quick 2000)")
    p.add_argument("--items", type=int, help="items (default 20000; quick 5000)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 4; quick 2)")
    p.add_argument("--rounds", type=int, help="repeats of the whole matrix, median reported (default 3; quick 1)")
    p.add_argument("--explain-pairs", type=int, help="warm explain pairs (default 2000; quick 1000)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: one core for wrk)")
    p.add_argument("--access-log", action="store_true", help="keep the per-request access log on (not production)")
    p.add_argument("--only", help="comma-separated scenario names to run (healthz always runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unpaired", action="store_true",
                   help="do not re-run the baseline right before each scenario at concurrency 16")
    p.add_argument("--no-floor", action="store_true", help="skip the control app (framework floor) rows")
    a = p.parse_args(argv)
    n_users = a.users or (2000 if a.quick else 10_000)
    n_items = a.items or (5000 if a.quick else 20_000)
    duration = a.duration or (2.0 if a.quick else 4.0)
    rounds = a.rounds or (1 if a.quick else 3)
    n_pairs = a.explain_pairs or (1000 if a.quick else 2000)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found on PATH (apt-get install wrk)")

    started = time.perf_counter()
    machine = machine_info()  # before our own load, so load_avg is the background's
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            t0 = time.perf_counter()
            bundle = make_bundle(tmp, n_users, n_items, a.dim, a.experts, a.seed)
            bundle_s = time.perf_counter() - t0
            manifest = json.loads((bundle / "manifest.json").read_text())
            user_ids = json.loads((bundle / "user_ids.json").read_text())
            item_ids = json.loads((bundle / "item_ids.json").read_text())
            print(f"bundle: {n_users} users x {n_items} items, d={a.dim}, {a.experts} experts, "
                  f"index {manifest.get('index', {}).get('type')} ({bundle_s:.1f} s)", flush=True)

            common_settings = {"MAGNET_ACCESS_LOG": "true" if a.access_log else "false"}
            redis_port = None
            if a.redis:
                rproc, redis_port = start_redis(tmp)
                procs.append(rproc)
                print(f"redis-server on 127.0.0.1:{redis_port}", flush=True)
            servers: dict[str, Server] = {}
            for name, extra in (("default", {}), ("nocache", {"MAGNET_CACHE_RECOMMENDATIONS": "false"})):
                settings = {**common_settings, **extra}
                if redis_port:
                    settings["MAGNET_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/{len(servers)}"
                    settings["MAGNET_REDIS_TIMEOUT_S"] = str(a.redis_timeout)
                    if a.local_cache_size is not None:
                        settings["MAGNET_LOCAL_CACHE_SIZE"] = str(a.local_cache_size)
                    if a.local_cache_ttl is not None:
                        settings["MAGNET_LOCAL_CACHE_TTL_S"] = str(a.local_cache_ttl)
                servers[name] = start_server(name, bundle, tmp, settings)
                procs.append(servers[name].proc)
            if not a.no_floor:
                servers["floor"] = start_floor(tmp)
                procs.append(servers["floor"].proc)
            print("servers: " + ", ".join(f"{s.name} {s.url} pid {s.proc.pid}" for s in servers.values()), flush=True)

            rng = random.Random(a.seed)
            pairs = [(rng.choice(user_ids), rng.choice(item_ids)) for _ in range(n_pairs)]
            for s in (servers["default"], servers["nocache"]):
                sanity_check(s, user_ids[0], item_ids[0])
            warm_s = warm(servers["default"], user_ids, pairs)
            print(f"warmed default server: {n_users} users' top-{K} in {warm_s['recommend_s']:.1f} s, "
                  f"{n_pairs} explain pairs in {warm_s['explain_s']:.1f} s", flush=True)

            scenarios = build_scenarios(tmp, user_ids, item_ids, pairs, a.seed)
            if a.no_floor:
                scenarios = [s for s in scenarios if s.server != "floor"]
            if a.only:
                keep = set(a.only.split(",")) | {"healthz"}
                if "floor_route" in keep:
                    keep.add("floor_healthz")
                scenarios = [s for s in scenarios if s.name in keep]
            raw: dict[tuple[str, int], list[dict]] = {}
            paired: dict[tuple[str, int], list[tuple[float, float]]] = {}
            by_name = {s.name: s for s in scenarios}

            def run_one(s: Scenario, c: int, rnd: int, note: str = "") -> dict[str, Any]:
                res = measure(s, servers[s.server], c, duration, a.wrk_threads)
                raw.setdefault((s.name, c), []).append(res)
                hit = "" if res["cache_hit_ratio"] is None else f" hit {res['cache_hit_ratio']:.2f}"
                if res["cache_local_hit_ratio"] is not None and a.redis:
                    hit += f" (in-process {res['cache_local_hit_ratio']:.2f})"
                print(f"  round {rnd + 1}/{rounds} c={c:<3} {s.name:<20} {res['rps']:8.0f} req/s  "
                      f"p50 {res['p50_ms']:6.2f}  p99 {res['p99_ms']:7.2f} ms{hit}{note}"
                      f"{'  ERRORS ' + str(res['errors']) if res['errors'] else ''}", flush=True)
                return res

            for rnd in range(rounds):
                for c in CONCURRENCY:
                    for s in scenarios:
                        if c not in s.concurrency:
                            continue
                        base = by_name.get(s.baseline)
                        if c == BAR_CONCURRENCY and not a.unpaired and base is not None and base is not s:
                            # paired: the baseline again right before, so slow drifts in the
                            # machine's background load cancel in the ratio
                            hz = run_one(base, c, rnd, f"  (paired with {s.name})")
                            res = run_one(s, c, rnd)
                            paired.setdefault((s.name, c), []).append(
                                (res["rps"] / hz["rps"], res["p99_ms"] / hz["p99_ms"]))
                        else:
                            run_one(s, c, rnd)
            for s in servers.values():
                if s.proc.poll() is not None:
                    raise RuntimeError(f"server {s.name} died during the run:\n{s.tail()}")
        finally:
            for proc in reversed(procs):
                _stop(proc)

    rows = summarise(raw, scenarios, paired)
    checks = bars(rows)
    print()
    print(format_table(rows))
    print()
    for b in checks:
        state = "informative" if b["held"] is None else ("HELD" if b["held"] else "MISSED")
        print(f"bar {b['scenario']:<18} {b['metric']:<15} @ c={b['concurrency']}: {b['value']:.3f} {b['bar']:<14} "
              f"{state}" + (f" (margin x{b['margin']})" if b.get("margin") else ""))
    errors = sum(r["errors"] for r in rows)
    if errors:
        print(f"WARNING: {errors} wrk errors (non-2xx, timeouts, socket errors); see the errors column")
    elapsed = time.perf_counter() - started
    print(f"\ntotal {elapsed:.0f} s")

    result = {
        "benchmark": "serving",
        "date": utc_now(),
        "command": "python -m bench.serving " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "config": {"quick": a.quick, "n_users": n_users, "n_items": n_items, "dim": a.dim, "experts": a.experts,
                   "index": manifest.get("index"), "k": K, "batch_users": BATCH_USERS, "duration_s": duration,
                   "rounds": rounds, "concurrency": list(CONCURRENCY), "wrk_threads": a.wrk_threads,
                   "explain_pairs": n_pairs, "cache": "redis" if a.redis else "local",
                   "redis_timeout_s": a.redis_timeout if a.redis else None,
                   "local_cache_size": a.local_cache_size if a.redis else None,
                   "local_cache_ttl_s": a.local_cache_ttl if a.redis else None,
                   "server_settings": {n: s.settings for n, s in servers.items()}, "workers": 1},
        "rows": rows,
        "bars": checks,
        "all_bars_held": all(b["held"] for b in checks if b["held"] is not None),
        "errors": errors,
        "seconds": round(elapsed, 1),
    }
    if a.json:
        write_json(result, a.json)
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(markdown_table(rows) + "\n")
    if a.plot:
        plot(rows, a.plot, f"MAGNET serving, {n_users}x{n_items} d={a.dim}, cache {result['config']['cache']}, "
                           f"{result['date'][:10]}, {result['machine'].get('cores')} cores (shared)")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
