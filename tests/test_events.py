"""POST /events over real HTTP, with process memory and with a real Redis: stored events are
excluded and folded in from then on, no cached answer older than an event is served (the
front tier of another server included), all-or-nothing 422/503, Redis down never fails
/recommend."""

from __future__ import annotations

import numpy as np
import pytest

from service.bundle import load_bundle
from service.events import STREAM, counter_key, user_key
from service.foldin import FoldIn
from service.settings import Settings

# the fold-in a server uses unless told: new users, known users
DEFAULTS = {"method": Settings.model_fields["foldin_method"].default,
            "known_method": Settings.model_fields["foldin_known_method"].default}


@pytest.fixture(scope="module")
def loaded(bundle_dir):
    return load_bundle(bundle_dir)


def top(client, user: str, k: int = 5) -> tuple[list[str], dict, str]:
    r = client.get(f"/recommend/{user}", params={"k": k})
    assert r.status_code == 200
    return [it["item_id"] for it in r.json()["items"]], r.json(), r.headers["x-cache"]


def brute_force(bundle, vec, excluded, k):
    keep = np.ones(bundle.n_items, dtype=bool)
    keep[list(excluded)] = False
    cand = np.flatnonzero(keep)
    scores = bundle.item_emb[cand].astype(np.float64) @ vec.astype(np.float64)
    order = np.lexsort((cand, -scores))[:k]
    return [bundle.item_ids[i] for i in cand[order]]


def test_memory_events_exclude_fold_in_and_explain(start_server, bundle_dir, loaded):
    live = start_server(bundle=bundle_dir)
    c = live.client()
    assert c.get("/readyz").json()["events"] == "memory"
    u = 6
    user = loaded.user_ids[u]
    before, _, _ = top(c, user)
    r = c.post("/events", json={"events": [{"user_id": user, "item_id": before[0], "timestamp": 1.5e9},
                                           {"user_id": "stranger", "item_id": loaded.item_ids[10]},
                                           {"user_id": "stranger", "item_id": loaded.item_ids[11]}]})
    assert r.status_code == 202 and r.json() == {"accepted": 3}
    after, body, _ = top(c, user)
    assert before[0] not in after and after != before and body["fallback"] is None
    fold = FoldIn(loaded, **DEFAULTS)
    ev = loaded.item_ids.index(before[0])
    vec = fold.user_vector(u, np.array([ev]))
    assert after == brute_force(loaded, vec, set(loaded.seen(u).tolist()) | {ev}, 5)

    stranger, sbody, _ = top(c, "stranger", 8)
    assert sbody["fallback"] == "history"
    svec = fold.user_vector(None, np.array([10, 11]))
    assert stranger == brute_force(loaded, svec, {10, 11}, 8)
    # /explain for the folded-in user: additive, and the score /recommend gave
    for item in stranger[:3]:
        e = c.get(f"/explain/stranger/{item}").json()
        assert abs(e["base"] + sum(x["contribution"] for x in e["experts"]) - e["score"]) <= 1e-4 * abs(e["score"])
        assert e["score"] == next(it["score"] for it in sbody["items"] if it["item_id"] == item)
    assert c.get(f"/explain/nobody-at-all/{loaded.item_ids[0]}").status_code == 404
    # the batch answers the same
    batch = c.post("/recommend", json={"user_ids": [user, "stranger"], "k": 5}).json()["results"]
    assert [it["item_id"] for it in batch[0]["items"]] == after and batch[1]["fallback"] == "history"


def test_bad_events_are_422_and_nothing_is_stored(start_server, bundle_dir, loaded, redis_server):
    live = start_server(bundle=bundle_dir, redis_url=redis_server.url)
    c, store = live.client(), redis_server.client()
    good = {"user_id": "u1", "item_id": loaded.item_ids[0]}
    r = c.post("/events", json={"events": [good, {"user_id": "u1", "item_id": "ghost-item"}]})
    assert r.status_code == 422 and "ghost-item" in r.text and "nothing was stored" in r.text
    assert store.xlen(STREAM) == 0 and not store.exists(user_key("u1"))
    assert c.post("/events", json={"events": []}).status_code == 422
    assert c.post("/events", json={"events": [good] * 1001}).status_code == 422
    assert c.post("/events", json={"events": [{**good, "rating": 5}]}).status_code == 422
    assert c.post("/events", json={"events": [{**good, "timestamp": "soon"}]}).status_code == 422
    assert c.post("/events", json={"events": [good] * 1000}).json() == {"accepted": 1000}
    assert store.xlen(STREAM) == 1000


def test_redis_events_stream_capped_user_list_and_counter(start_server, bundle_dir, loaded, redis_server):
    live = start_server(bundle=bundle_dir, redis_url=redis_server.url, events_per_user=3)
    c, store = live.client(), redis_server.client()
    assert c.get("/readyz").json()["events"] == "redis"
    items = loaded.item_ids[20:25]
    assert c.post("/events", json={"events": [{"user_id": "capped", "item_id": i, "timestamp": 100 + n}
                                              for n, i in enumerate(items)]}).status_code == 202
    assert store.xlen(STREAM) == 5
    entries = store.xrange(STREAM)
    assert [(f[b"user_id"], f[b"item_id"], float(f[b"timestamp"])) for _, f in entries] == [
        (b"capped", i.encode(), 100.0 + n) for n, i in enumerate(items)]
    assert [x.decode() for x in store.lrange(user_key("capped"), 0, -1)] == items[::-1][:3]  # newest first
    assert int(store.get(counter_key("capped"))) == 5
    got = {it["item_id"] for it in c.get("/recommend/capped", params={"k": 300}).json()["items"]}
    assert not got & set(items[2:]) and set(items[:2]) <= got  # only the kept (recent) ones are excluded


def test_no_cached_answer_older_than_an_event_is_served(start_server, bundle_dir, loaded, redis_server):
    """Two servers on one Redis, each with its in-process front tier: an event posted to one
    changes what both answer at once, for /recommend and /explain."""
    a = start_server(bundle=bundle_dir, redis_url=redis_server.url, local_cache_ttl_s=600)
    b = start_server(bundle=bundle_dir, redis_url=redis_server.url, local_cache_ttl_s=600)
    ca, cb = a.client(), b.client()
    user = loaded.user_ids[12]
    first, _, s1 = top(cb, user)
    again, _, s2 = top(cb, user)
    assert (s1, s2) == ("miss", "hit") and again == first
    item = first[1]
    e1 = cb.get(f"/explain/{user}/{item}").json()
    assert cb.get(f"/explain/{user}/{item}").json()["cached"] is True

    assert ca.post("/events", json={"events": [{"user_id": user, "item_id": first[0]}]}).status_code == 202
    after, _, s3 = top(cb, user)
    assert s3 == "miss" and first[0] not in after and after != first
    e2 = cb.get(f"/explain/{user}/{item}").json()
    assert e2["cached"] is False and e2["score"] != e1["score"]  # the moved vector, not the cached one
    assert top(cb, user)[2] == "hit"  # cached again, under the new event counter
    assert top(ca, user)[0] == after


def test_redis_down_events_503_and_recommend_keeps_answering(start_server, bundle_dir, loaded, redis_server):
    live = start_server(bundle=bundle_dir, redis_url=redis_server.url, events_timeout_s=0.2)
    c = live.client()
    user = loaded.user_ids[3]
    plain, _, _ = top(c, user)
    assert c.post("/events", json={"events": [{"user_id": user, "item_id": plain[0]}]}).status_code == 202
    with_event, _, _ = top(c, user)
    redis_server.kill()
    r = c.post("/events", json={"events": [{"user_id": user, "item_id": plain[1]}]})
    assert r.status_code == 503 and "nothing was stored" in r.json()["detail"]
    for _ in range(3):  # from the bundle alone: the user's trained answer
        assert top(c, user)[0] == plain
    assert c.post(f"/recommend/{user}", json={"k": 5}).status_code == 200
    assert c.get("/readyz").json()["events"] == "redis"
    assert with_event != plain


def test_events_export_round_trips_through_magnet_import(start_server, bundle_dir, loaded, redis_server, tmp_path):
    """POST /events -> `magnet events export` -> `magnet import`: the same (user, item, time) rows."""
    import subprocess
    import sys

    import pandas as pd

    from offline.dataset import load_dataset

    live = start_server(bundle=bundle_dir, redis_url=redis_server.url)
    events = [{"user_id": f"web-{u}", "item_id": loaded.item_ids[(7 * u + 3 * n) % loaded.n_items],
               "timestamp": 1_700_000_000 + 60 * n + u} for u in range(4) for n in range(5)]
    assert live.client().post("/events", json={"events": events}).json() == {"accepted": 20}

    def magnet(*args):
        return subprocess.run([sys.executable, "-m", "offline", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    out = tmp_path / "events.csv"
    proc = magnet("events", "export", "--redis", redis_server.url, "--out", out)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out, dtype=str)
    assert list(table.columns) == ["user_id", "item_id", "timestamp"]
    assert table.values.tolist() == [[e["user_id"], e["item_id"], str(e["timestamp"])] for e in events]

    since = magnet("events", "export", "--redis", redis_server.url, "--out", tmp_path / "late.csv",
                   "--since", 1_700_000_000 + 60 * 3)
    assert since.returncode == 0, since.stderr
    assert len(pd.read_csv(tmp_path / "late.csv")) == 8  # n = 3, 4 for each of the 4 users

    proc = magnet("import", "--interactions", out, "--kcore", 1, "--name", "events", "--out", tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    ds = load_dataset(tmp_path / "data")
    pairs = {(ds.user_ids[u], ds.item_ids[i]) for part in (ds.train, ds.valid, ds.test) for u, i in part}
    assert pairs == {(e["user_id"], e["item_id"]) for e in events}

    redis_server.kill()
    proc = magnet("events", "export", "--redis", redis_server.url, "--out", tmp_path / "x.csv")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: cannot read the event stream") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


# ------------------------------------------------- coalesced counter reads (service.events.CounterReads)


def _redis_store(url: str) -> "RedisEvents":
    from service.events import RedisEvents

    return RedisEvents(url, per_user=10, write_timeout_s=1.0, read_timeout_s=0.5, backoff_s=0.2, max_connections=8)


def test_concurrent_counter_reads_share_one_mget_and_each_gets_its_users(redis_server):
    import asyncio

    sync = redis_server.client()
    sync.flushdb()
    sync.set(counter_key("ann"), 3)
    sync.set(counter_key("bob"), 7)
    sync.config_resetstat()
    asks = [["ann"], ["bob"], ["cid"], ["bob", "ann"], ["ann", "cid", "ann"]] * 4

    async def go() -> list:
        store = _redis_store(redis_server.url)
        try:
            return await asyncio.gather(*(store.counts(a) for a in asks))
        finally:
            await store.close()

    got = asyncio.run(go())
    want = {"ann": 3, "bob": 7, "cid": 0}
    assert got == [[want[u] for u in a] for a in asks]
    stats = sync.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1  # 20 reads asked in one loop turn: one round trip
    assert "cmdstat_get" not in stats


def test_a_counter_read_never_predates_its_request(redis_server):
    """A read asked while a batch is in flight waits for the next batch, which Redis answers after
    the increment that happened in between; a read after an increment sees it."""
    import asyncio

    sync = redis_server.client()
    sync.flushdb()

    async def go() -> tuple:
        store = _redis_store(redis_server.url)
        try:
            first = asyncio.ensure_future(store.counts(["ann"]))
            while not store._counters._task or store._counters._waiting:
                await asyncio.sleep(0)  # until the batch with `first` is taken and on its way
            sync.incr(counter_key("ann"))  # an event lands (synchronously: before the next batch is sent)
            second = await store.counts(["ann"])
            third_before = await store.counts(["ann"])
            sync.incr(counter_key("ann"))
            third = await store.counts(["ann"])
            return await first, second, third_before, third
        finally:
            await store.close()

    first, second, third_before, third = asyncio.run(go())
    assert first in ([0], [1])  # raced with the increment: either is right for a request older than it
    assert second == [1] and third_before == [1] and third == [2]


def test_counter_reads_with_redis_down_answer_none_without_hanging(redis_server):
    import asyncio

    from service.events import RedisEvents

    async def go() -> list:
        store = RedisEvents("redis://127.0.0.1:1/0", per_user=10, write_timeout_s=0.2, read_timeout_s=0.2,
                            backoff_s=5.0, max_connections=4)
        try:
            got = await asyncio.wait_for(asyncio.gather(*(store.counts([u]) for u in "abc")), 5)
            later = await asyncio.wait_for(store.counts(["a"]), 1)  # backing off: no round trip at all
            return [*got, later]
        finally:
            await store.close()

    assert asyncio.run(go()) == [None, None, None, None]
