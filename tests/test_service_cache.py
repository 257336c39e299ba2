"""The response cache against a real Redis: hits, keys, TTLs, and Redis failing mid-test.

Tests that count Redis hits or watch Redis come back pass local_cache_size=0 (Redis
alone, the behaviour without the in-process front tier); the front tier itself is
tested in test_service_two_tier_cache.py.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest
import redis

from offline.export import export_bundle

TOKEN = "cache-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _version(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["model_version"]


def _metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


@pytest.fixture
def fresh_bundle(fake_run, tmp_path) -> Path:
    """A new export, hence a model_version no other test has cached under."""
    return export_bundle(fake_run.path, tmp_path / "bundle")


def test_redis_caches_explanations_and_recommendations(start_server, fresh_bundle, fake_run, shared_redis_url):
    live = start_server(bundle=fresh_bundle, redis_url=shared_redis_url, cache_ttl_s=120, local_cache_size=0)
    version = _version(fresh_bundle)
    store = redis.Redis.from_url(shared_redis_url)
    user, item = fake_run.user_ids[4], fake_run.item_ids[9]
    with live.client() as c:
        first = c.get(f"/explain/{user}/{item}").json()
        second = c.get(f"/explain/{user}/{item}").json()
        assert (first["cached"], second["cached"]) == (False, True)
        assert {**first, "cached": True} == second
        keys = [k.decode() for k in store.keys(f"magnet:{version}:*")]
        assert any(":exp:" in k and k.endswith(f"{user}:{item}") for k in keys)
        assert all(0 < store.ttl(k) <= 120 for k in keys)

        r1 = c.get(f"/recommend/{user}", params={"k": 4})
        r2 = c.get(f"/recommend/{user}", params={"k": 4})
        assert (r1.headers["x-cache"], r2.headers["x-cache"]) == ("miss", "hit")
        assert r1.content == r2.content
        assert store.exists(f"magnet:{version}:rec:4:0:{user}")

        # A batch reads with one MGET: already-cached users hit, the rest are computed and stored.
        before = c.get("/metrics").text
        users = fake_run.user_ids[10:20]
        batch1 = c.post("/recommend", json={"user_ids": users + ["stranger"], "k": 4}).json()
        batch2 = c.post("/recommend", json={"user_ids": users + ["stranger"], "k": 4}).json()
        assert batch1 == batch2 and batch1["results"][-1]["fallback"] == "popular"
        after = c.get("/metrics").text
        hits = _metric(after, "magnet_cache_hits_total", backend="redis", kind="recommend") - _metric(
            before, "magnet_cache_hits_total", backend="redis", kind="recommend")
        misses = _metric(after, "magnet_cache_misses_total", backend="redis", kind="recommend") - _metric(
            before, "magnet_cache_misses_total", backend="redis", kind="recommend")
        assert (hits, misses) == (10, 10)
        for u in users:
            single = c.get(f"/recommend/{u}", params={"k": 4})
            assert single.headers["x-cache"] == "hit"


def traffic_while_redis_is_down(c, fake_run, user: str, rounds: int, first_item: int) -> None:
    """Every cached kind of request, `rounds` times, with Redis dead: all answer 200 and
    explanations are computed; the metrics show the errors, the bypasses and Redis down."""
    statuses = []
    for n in range(rounds):
        u = fake_run.user_ids[n % 60]
        responses = [
            c.get(f"/explain/{u}/{fake_run.item_ids[first_item + n]}"),
            c.get(f"/recommend/{u}", params={"k": 5}),
            c.post("/recommend", json={"user_ids": [u, user], "k": 3}),
        ]
        statuses += [r.status_code for r in responses]
        assert responses[0].json()["cached"] is False
        if n % 10 == 0:
            time.sleep(0.25)  # let the back-off expire so reconnects are attempted too
    assert set(statuses) == {200}
    text = c.get("/metrics").text
    errors = sum(_metric(text, "magnet_cache_errors_total", backend="redis", op=op) for op in ("get", "set"))
    assert errors >= 2  # the first failure and at least one failed reconnect after a back-off
    assert _metric(text, "magnet_cache_bypassed_total", backend="redis", op="get") > 0
    assert _metric(text, "magnet_cache_up", backend="redis") == 0


def test_redis_killed_mid_test_never_fails_a_request(start_server, fresh_bundle, fake_run, redis_server):
    live = start_server(bundle=fresh_bundle, redis_url=redis_server.url, redis_backoff_s=0.2,
                        redis_backoff_max_s=0.4, local_cache_size=0)
    user, item = fake_run.user_ids[1], fake_run.item_ids[2]
    with live.client() as c:
        assert c.get(f"/explain/{user}/{item}").json()["cached"] is False
        assert c.get(f"/explain/{user}/{item}").json()["cached"] is True
        reference = c.get(f"/recommend/{user}").json()

        redis_server.kill()
        traffic_while_redis_is_down(c, fake_run, user, rounds=40, first_item=0)
        assert c.get(f"/recommend/{user}").json() == reference  # answers unchanged without the cache

        # Redis returns on the same port: after the back-off the service uses it again.
        redis_server.start()
        deadline = time.monotonic() + 10
        cached = False
        while not cached and time.monotonic() < deadline:
            time.sleep(0.3)
            c.get(f"/explain/{user}/{item}")
            cached = c.get(f"/explain/{user}/{item}").json()["cached"]
        assert cached
        assert _metric(c.get("/metrics").text, "magnet_cache_up", backend="redis") == 1


def test_hung_redis_times_out_fast(start_server, fresh_bundle, fake_run, redis_server):
    live = start_server(bundle=fresh_bundle, redis_url=redis_server.url, redis_timeout_s=0.05,
                        redis_backoff_s=0.1, redis_backoff_max_s=0.2)
    with live.client() as c:
        c.get(f"/explain/{fake_run.user_ids[0]}/{fake_run.item_ids[0]}")
        redis_server.pause()  # accepts nothing, answers nothing
        try:
            for n in range(10):
                started = time.perf_counter()
                r = c.get(f"/explain/{fake_run.user_ids[n]}/{fake_run.item_ids[n + 1]}")
                assert r.status_code == 200 and r.json()["cached"] is False
                assert time.perf_counter() - started < 1.0
                time.sleep(0.12)
        finally:
            redis_server.resume()
        errors = _metric(c.get("/metrics").text, "magnet_cache_errors_total", backend="redis", op="get")
        assert errors >= 1


def test_unreachable_redis_from_the_start(start_server, fresh_bundle, fake_run):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    live = start_server(bundle=fresh_bundle, redis_url=f"redis://127.0.0.1:{port}/0")
    with live.client() as c:
        for n in range(5):
            assert c.get(f"/explain/{fake_run.user_ids[n]}/{fake_run.item_ids[n]}").status_code == 200
            assert c.post("/recommend", json={"user_ids": fake_run.user_ids[:3]}).status_code == 200
        assert _metric(c.get("/metrics").text, "magnet_cache_errors_total", backend="redis", op="get") >= 1


def test_reload_starts_a_new_cache_namespace(start_server, fresh_bundle, fake_run, tmp_path, shared_redis_url):
    live = start_server(bundle=fresh_bundle, redis_url=shared_redis_url, admin_token=TOKEN)
    path = f"/explain/{fake_run.user_ids[8]}/{fake_run.item_ids[8]}"
    with live.client() as c:
        c.get(path)
        assert c.get(path).json()["cached"] is True
        newer = export_bundle(fake_run.path, tmp_path / "newer")
        assert c.post("/admin/reload", headers=AUTH, json={"bundle": str(newer)}).status_code == 200
        body = c.get(path).json()
        assert body["cached"] is False and body["model_version"] == _version(newer)


def test_local_cache_ttl_and_lru(start_server, fresh_bundle, fake_run):
    live = start_server(bundle=fresh_bundle, cache_ttl_s=1, cache_max_items=2, cache_recommendations=False)
    pairs = [f"/explain/{fake_run.user_ids[n]}/{fake_run.item_ids[n]}" for n in range(3)]
    with live.client() as c:
        assert [c.get(pairs[0]).json()["cached"], c.get(pairs[0]).json()["cached"]] == [False, True]
        time.sleep(1.2)
        assert c.get(pairs[0]).json()["cached"] is False  # expired
        c.get(pairs[1])
        c.get(pairs[2])  # holds 2 entries: pairs[0] is evicted
        assert c.get(pairs[0]).json()["cached"] is False
        assert c.get(f"/recommend/{fake_run.user_ids[0]}").headers["x-cache"] == "miss"
        assert c.get(f"/recommend/{fake_run.user_ids[0]}").headers["x-cache"] == "miss"  # not cached by setting
        text = c.get("/metrics").text
        assert _metric(text, "magnet_cache_hits_total", backend="local", kind="explain") >= 1
