"""The in-process front tier in front of Redis, against a real Redis over real HTTP.

Each test proves where an answer came from without peeking inside the process: it
removes the Redis copy (deletes the keys, or kills redis-server) and checks what the
service still says is cached, and it reads the per-backend counters from /metrics
(a front-tier hit counts under backend="local", everything else as Redis counts it).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from offline.export import export_bundle
from service.cache import RedisCache, TwoTierCache
from service.settings import SettingsError, load_settings
from test_service_cache import AUTH, TOKEN, _metric, _version, traffic_while_redis_is_down


@pytest.fixture
def fresh_bundle(fake_run, tmp_path) -> Path:
    """A new export, hence a model_version no other test has cached under."""
    return export_bundle(fake_run.path, tmp_path / "bundle")


def _forget(url: str, version: str) -> int:
    """Deletes every Redis key of `version`, so only the front tier can still answer."""
    store = redis.Redis.from_url(url)
    keys = store.keys(f"magnet:{version}:*")
    return store.delete(*keys) if keys else 0


def _counts(text: str, kind: str) -> dict[str, float]:
    return {"local": _metric(text, "magnet_cache_hits_total", backend="local", kind=kind),
            "redis": _metric(text, "magnet_cache_hits_total", backend="redis", kind=kind),
            "miss": _metric(text, "magnet_cache_misses_total", backend="redis", kind=kind),
            "errors": sum(_metric(text, "magnet_cache_errors_total", backend="redis", op=op) for op in ("get", "set"))}


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def test_settings_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAGNET_LOCAL_CACHE_SIZE", "MAGNET_LOCAL_CACHE_TTL_S"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.local_cache_size > 0 and 0 < s.local_cache_ttl_s <= 60
    monkeypatch.setenv("MAGNET_LOCAL_CACHE_SIZE", "0")
    monkeypatch.setenv("MAGNET_LOCAL_CACHE_TTL_S", "0.25")
    assert (load_settings().local_cache_size, load_settings().local_cache_ttl_s) == (0, 0.25)
    monkeypatch.setenv("MAGNET_LOCAL_CACHE_SIZE", "-1")
    with pytest.raises(SettingsError, match="MAGNET_LOCAL_CACHE_SIZE"):
        load_settings()
    monkeypatch.setenv("MAGNET_LOCAL_CACHE_SIZE", "10")
    monkeypatch.setenv("MAGNET_LOCAL_CACHE_TTL_S", "0")
    with pytest.raises(SettingsError, match="MAGNET_LOCAL_CACHE_TTL_S"):
        load_settings()


def test_front_tier_hit_never_touches_redis(start_server, fresh_bundle, fake_run, redis_server):
    live = start_server(bundle=fresh_bundle, redis_url=redis_server.url, local_cache_ttl_s=60)
    assert isinstance(live.app.state.cache, TwoTierCache)
    version = _version(fresh_bundle)
    user, item = fake_run.user_ids[3], fake_run.item_ids[7]
    with live.client() as c:
        first = c.get(f"/explain/{user}/{item}").json()
        rec1 = c.get(f"/recommend/{user}", params={"k": 4})
        assert first["cached"] is False and rec1.headers["x-cache"] == "miss"
        store = redis_server.client()  # a write goes to both tiers
        assert store.exists(f"magnet:{version}:rec:4:0:{user}")
        assert any(k.decode().endswith(f":exp:0:{len(user)}:{user}:{item}") for k in store.keys(f"magnet:{version}:*"))

        redis_server.kill()
        before = c.get("/metrics").text
        second = c.get(f"/explain/{user}/{item}").json()
        rec2 = c.get(f"/recommend/{user}", params={"k": 4})
        batch = c.post("/recommend", json={"user_ids": [user, user], "k": 4})
        assert second == {**first, "cached": True}
        assert rec2.headers["x-cache"] == "hit" and rec2.content == rec1.content
        assert batch.status_code == 200 and batch.json()["results"] == [rec1.json(), rec1.json()]
        after = c.get("/metrics").text
        assert _delta(_counts(after, "explain"), _counts(before, "explain")) == {
            "local": 1, "redis": 0, "miss": 0, "errors": 0}  # errors 0: Redis was never called
        assert _delta(_counts(after, "recommend"), _counts(before, "recommend")) == {
            "local": 3, "redis": 0, "miss": 0, "errors": 0}
        assert _metric(after, "magnet_cache_up", backend="redis") == 1


def test_front_tier_entries_expire_and_redis_hits_refill_it(start_server, fresh_bundle, fake_run,
                                                             shared_redis_url):
    ttl = 1.0
    live = start_server(bundle=fresh_bundle, redis_url=shared_redis_url, local_cache_ttl_s=ttl)
    version = _version(fresh_bundle)
    path = f"/explain/{fake_run.user_ids[5]}/{fake_run.item_ids[11]}"
    with live.client() as c:
        m0 = _counts(c.get("/metrics").text, "explain")
        assert c.get(path).json()["cached"] is False
        assert c.get(path).json()["cached"] is True  # within the TTL: from the front tier
        m1 = _counts(c.get("/metrics").text, "explain")
        assert _delta(m1, m0) == {"local": 1, "redis": 0, "miss": 1, "errors": 0}

        time.sleep(ttl + 0.3)  # the front tier's copy expired; Redis still has it and refills it
        assert c.get(path).json()["cached"] is True
        m2 = _counts(c.get("/metrics").text, "explain")
        assert _delta(m2, m1) == {"local": 0, "redis": 1, "miss": 0, "errors": 0}

        assert _forget(shared_redis_url, version) >= 1
        assert c.get(path).json()["cached"] is True  # the refilled copy, Redis no longer has one
        m3 = _counts(c.get("/metrics").text, "explain")
        assert _delta(m3, m2) == {"local": 1, "redis": 0, "miss": 0, "errors": 0}

        time.sleep(ttl + 0.3)  # now gone from both tiers
        assert c.get(path).json()["cached"] is False


def test_front_tier_never_outlives_the_cache_ttl(start_server, fresh_bundle, fake_run, shared_redis_url):
    live = start_server(bundle=fresh_bundle, redis_url=shared_redis_url, cache_ttl_s=1, local_cache_ttl_s=60)
    path = f"/explain/{fake_run.user_ids[6]}/{fake_run.item_ids[12]}"
    with live.client() as c:
        assert [c.get(path).json()["cached"], c.get(path).json()["cached"]] == [False, True]
        time.sleep(1.4)  # MAGNET_CACHE_TTL_S caps the front tier's 60 s
        assert c.get(path).json()["cached"] is False


def test_redis_hits_fill_the_front_tier_and_batches_fetch_only_what_it_lacks(start_server, fresh_bundle, fake_run,
                                                                               redis_server):
    writer = start_server(bundle=fresh_bundle, redis_url=redis_server.url)
    reader = start_server(bundle=fresh_bundle, redis_url=redis_server.url, local_cache_ttl_s=60)
    user, item = fake_run.user_ids[2], fake_run.item_ids[4]
    users = fake_run.user_ids[10:20]
    with writer.client() as w, reader.client() as r:
        assert w.get(f"/explain/{user}/{item}").json()["cached"] is False
        computed = w.post("/recommend", json={"user_ids": users, "k": 4}).json()

        m0 = {k: _counts(r.get("/metrics").text, k) for k in ("explain", "recommend")}
        assert r.get(f"/explain/{user}/{item}").json()["cached"] is True  # from Redis (the other server's write)
        assert r.post("/recommend", json={"user_ids": users, "k": 4}).json() == computed
        m1 = {k: _counts(r.get("/metrics").text, k) for k in ("explain", "recommend")}
        assert _delta(m1["explain"], m0["explain"]) == {"local": 0, "redis": 1, "miss": 0, "errors": 0}
        assert _delta(m1["recommend"], m0["recommend"]) == {"local": 0, "redis": 10, "miss": 0, "errors": 0}

        # Half in the front tier, half unknown everywhere: one MGET for the unknown half only.
        mixed = fake_run.user_ids[15:25]
        r.post("/recommend", json={"user_ids": mixed, "k": 4})
        m2 = _counts(r.get("/metrics").text, "recommend")
        assert _delta(m2, m1["recommend"]) == {"local": 5, "redis": 0, "miss": 5, "errors": 0}

        redis_server.kill()  # what the reader took from Redis is now in its own memory
        assert r.get(f"/explain/{user}/{item}").json()["cached"] is True
        assert r.post("/recommend", json={"user_ids": users, "k": 4}).json() == computed
        assert r.get(f"/recommend/{users[0]}", params={"k": 4}).headers["x-cache"] == "hit"
        m3 = {k: _counts(r.get("/metrics").text, k) for k in ("explain", "recommend")}
        assert _delta(m3["explain"], m1["explain"]) == {"local": 1, "redis": 0, "miss": 0, "errors": 0}
        assert _delta(m3["recommend"], m2) == {"local": 11, "redis": 0, "miss": 0, "errors": 0}


def test_front_tier_is_a_bounded_lru(start_server, fresh_bundle, fake_run, shared_redis_url):
    live = start_server(bundle=fresh_bundle, redis_url=shared_redis_url, local_cache_size=2, local_cache_ttl_s=60,
                        cache_recommendations=False)
    version = _version(fresh_bundle)
    p0, p1, p2 = (f"/explain/{fake_run.user_ids[n]}/{fake_run.item_ids[n + 20]}" for n in range(3))
    with live.client() as c:
        assert [c.get(p).json()["cached"] for p in (p0, p1, p0, p2)] == [False, False, True, False]
        # p0 was used after p1, so storing p2 evicted p1, the least recently used.
        assert _forget(shared_redis_url, version) == 3
        assert c.get(p0).json()["cached"] is True
        assert c.get(p2).json()["cached"] is True
        assert c.get(p1).json()["cached"] is False
        assert _metric(c.get("/metrics").text, "magnet_cache_hits_total", backend="local", kind="explain") == 3


def test_reload_never_serves_the_previous_models_front_tier_entries(start_server, fresh_bundle, fake_run, tmp_path,
                                                                   shared_redis_url):
    live = start_server(bundle=fresh_bundle, redis_url=shared_redis_url, admin_token=TOKEN, local_cache_ttl_s=60)
    user = fake_run.user_ids[9]
    explain = f"/explain/{user}/{fake_run.item_ids[9]}"
    with live.client() as c:
        old = c.get(explain).json()
        assert c.get(explain).json()["cached"] is True
        c.get(f"/recommend/{user}")
        assert c.get(f"/recommend/{user}").headers["x-cache"] == "hit"

        newer = export_bundle(fake_run.path, tmp_path / "newer")
        assert _version(newer) != old["model_version"]
        assert c.post("/admin/reload", headers=AUTH, json={"bundle": str(newer)}).status_code == 200
        body = c.get(explain).json()
        assert body["cached"] is False and body["model_version"] == _version(newer)
        rec = c.get(f"/recommend/{user}")
        assert rec.headers["x-cache"] == "miss" and rec.json()["model_version"] == _version(newer)
        assert c.post("/recommend", json={"user_ids": [user]}).json()["results"][0]["model_version"] == _version(newer)
        assert c.get(explain).json()["cached"] is True  # the new model's entries are cached as usual


def test_size_zero_is_redis_alone_as_before(start_server, fresh_bundle, fake_run, shared_redis_url):
    live = start_server(bundle=fresh_bundle, redis_url=shared_redis_url, local_cache_size=0, local_cache_ttl_s=60)
    assert isinstance(live.app.state.cache, RedisCache)
    version = _version(fresh_bundle)
    user, item = fake_run.user_ids[7], fake_run.item_ids[3]
    with live.client() as c:
        assert [c.get(f"/explain/{user}/{item}").json()["cached"] for _ in range(2)] == [False, True]
        assert [c.get(f"/recommend/{user}").headers["x-cache"] for _ in range(2)] == ["miss", "hit"]
        assert _forget(shared_redis_url, version) == 2
        # Nothing in process memory: without the Redis copy, both are computed again.
        assert c.get(f"/explain/{user}/{item}").json()["cached"] is False
        assert c.get(f"/recommend/{user}").headers["x-cache"] == "miss"
        text = c.get("/metrics").text
        assert 'backend="local"' not in text  # the same series as before the front tier existed
        assert _counts(text, "explain") == {"local": 0, "redis": 1, "miss": 2, "errors": 0}
        assert _counts(text, "recommend") == {"local": 0, "redis": 1, "miss": 2, "errors": 0}


def test_redis_down_with_the_front_tier_never_fails_and_recovers(start_server, fresh_bundle, fake_run,
                                                                 redis_server):
    live = start_server(bundle=fresh_bundle, redis_url=redis_server.url, local_cache_ttl_s=60,
                        redis_backoff_s=0.2, redis_backoff_max_s=0.4)
    user, item = fake_run.user_ids[1], fake_run.item_ids[2]
    with live.client() as c:
        assert c.get(f"/explain/{user}/{item}").json()["cached"] is False
        reference = c.get(f"/recommend/{user}").json()

        redis_server.kill()
        traffic_while_redis_is_down(c, fake_run, user, rounds=30, first_item=30)
        # Entries cached before Redis went away are still served from process memory.
        assert c.get(f"/explain/{user}/{item}").json()["cached"] is True
        assert c.get(f"/recommend/{user}").json() == reference

        # Redis returns on the same port: after the back-off, new entries reach it again.
        redis_server.start()
        deadline = time.monotonic() + 10
        n = 0
        while _metric(c.get("/metrics").text, "magnet_cache_up", backend="redis") != 1:
            assert time.monotonic() < deadline, "the service never used Redis again"
            time.sleep(0.3)
            c.get(f"/explain/{fake_run.user_ids[n]}/{fake_run.item_ids[n + 100]}")
            n += 1
        assert c.get(f"/recommend/{fake_run.user_ids[50]}", params={"k": 2}).headers["x-cache"] == "miss"
        assert redis_server.client().exists(f"magnet:{_version(fresh_bundle)}:rec:2:0:{fake_run.user_ids[50]}")
