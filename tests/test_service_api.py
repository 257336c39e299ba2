"""The HTTP API over a real uvicorn server, checked against brute-force numpy."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from run_fixture import brute_force_topk, flip_byte

from offline.export import export_bundle
from offline.synthetic import make_run
from service.schemas import BatchRecommendResponse, Explanation, Ready, Recommendation, SimilarItems

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _version(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["model_version"]


@pytest.fixture(scope="module")
def api(start_module_server, bundle_dir) -> httpx.Client:
    """A server on the session's exact bundle, in-process cache; read-only tests share it."""
    live = start_module_server(bundle=bundle_dir, admin_token=TOKEN)
    with live.client() as client:
        yield client


# ------------------------------------------------------------------ probes, docs


def test_health_ready_and_docs(api, bundle_dir):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    body = Ready.model_validate(ready.json())
    assert body.model_version == _version(bundle_dir) and body.n_items == 300 and body.index == "flat"
    spec = api.get("/openapi.json").json()
    for path in ("/recommend/{user_id}", "/recommend", "/similar/{item_id}", "/explain/{user_id}/{item_id}",
                 "/healthz", "/readyz", "/metrics", "/admin/reload"):
        assert path in spec["paths"], path
    assert {"Explanation", "Recommendation", "BatchRecommendResponse"} <= set(spec["components"]["schemas"])
    assert api.get("/docs").status_code == 200


# ------------------------------------------------------------------ recommend


def test_recommend_equals_brute_force(api, fake_run, bundle_dir):
    version = _version(bundle_dir)
    for u, user_id in enumerate(fake_run.user_ids):
        r = api.get(f"/recommend/{user_id}", params={"k": 10})
        assert r.status_code == 200
        body = Recommendation.model_validate(r.json())
        assert body.user_id == user_id and body.model_version == version and body.fallback is None
        ref, ref_scores = brute_force_topk(fake_run, u, 10)
        assert [it.item_id for it in body.items] == [fake_run.item_ids[i] for i in ref]
        np.testing.assert_allclose([it.score for it in body.items], ref_scores, rtol=1e-12)


def test_recommend_never_returns_training_items(api, fake_run):
    u = int(np.argmax(np.diff(fake_run.train_indptr)))  # the user with the most training items
    items = api.get(f"/recommend/{fake_run.user_ids[u]}", params={"k": 1000}).json()["items"]
    seen = {fake_run.item_ids[i] for i in fake_run.seen(u)}
    returned = [it["item_id"] for it in items]
    assert len(returned) == 300 - len(seen) == len(set(returned))
    assert not seen & set(returned)
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)


def test_unknown_user_gets_popular(api, fake_run):
    body = api.get("/recommend/not-a-user", params={"k": 5}).json()
    assert body["fallback"] == "popular" and body["user_id"] == "not-a-user"
    counts = np.bincount(fake_run.train_indices, minlength=300)
    expected = np.lexsort((np.arange(300), -counts))[:5]
    assert [it["item_id"] for it in body["items"]] == [fake_run.item_ids[i] for i in expected]
    assert [it["score"] for it in body["items"]] == [float(counts[i]) for i in expected]


@pytest.mark.parametrize("k", ["0", "1001", "-3", "ten"])
def test_bad_k_is_422(api, fake_run, k):
    r = api.get(f"/recommend/{fake_run.user_ids[0]}", params={"k": k})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "k"]
    r = api.get(f"/similar/{fake_run.item_ids[0]}", params={"k": k})
    assert r.status_code == 422


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"user_ids": ["a"], "k": 0}, "k"),
        ({"user_ids": ["a"], "k": 1001}, "k"),
        ({"k": 5}, "user_ids"),
        ({"user_ids": "a", "k": 5}, "user_ids"),
        ({"user_ids": [str(n) for n in range(1001)]}, "user_ids"),
    ],
)
def test_bad_batch_is_422(api, payload, field):
    r = api.post("/recommend", json=payload)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]


def test_batch_limit_follows_the_setting(start_server, bundle_dir, fake_run):
    live = start_server(bundle=bundle_dir, max_batch_users=3)
    with live.client() as c:
        assert c.post("/recommend", json={"user_ids": fake_run.user_ids[:3], "k": 2}).status_code == 200
        r = c.post("/recommend", json={"user_ids": fake_run.user_ids[:4], "k": 2})
        assert r.status_code == 422
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "user_ids"] and "at most 3" in detail["msg"]


def test_batch_equals_single(api, fake_run):
    users = [fake_run.user_ids[0], "nobody", fake_run.user_ids[7], fake_run.user_ids[0]]
    r = api.post("/recommend", json={"user_ids": users, "k": 7})
    assert r.status_code == 200
    results = BatchRecommendResponse.model_validate(r.json()).results
    assert [x.user_id for x in results] == users
    for user_id, result in zip(users, results):
        single = api.get(f"/recommend/{user_id}", params={"k": 7}).json()
        assert result.model_dump() == single
    assert api.post("/recommend", json={"user_ids": [], "k": 3}).json() == {"results": []}


# ------------------------------------------------------------------ similar


def test_similar_items(api, fake_run):
    i = 17
    r = api.get(f"/similar/{fake_run.item_ids[i]}", params={"k": 8})
    body = SimilarItems.model_validate(r.json())
    scores = fake_run.item_emb.astype(np.float64) @ fake_run.item_emb[i].astype(np.float64)
    scores[i] = -np.inf
    ref = np.argsort(-scores, kind="stable")[:8]
    assert [it.item_id for it in body.items] == [fake_run.item_ids[j] for j in ref]
    assert fake_run.item_ids[i] not in {it.item_id for it in body.items}
    r = api.get("/similar/no-such-item")
    assert r.status_code == 404 and "no-such-item" in r.json()["detail"]


# ------------------------------------------------------------------ explain


def test_explanation_adds_up_and_matches_recommend(api, fake_run):
    for u in (0, 5, 11):
        user_id = fake_run.user_ids[u]
        recs = api.get(f"/recommend/{user_id}", params={"k": 5}).json()["items"]
        for rec in recs:
            r = api.get(f"/explain/{user_id}/{rec['item_id']}")
            assert r.status_code == 200
            body = Explanation.model_validate(r.json())
            i = fake_run.item_ids.index(rec["item_id"])
            assert body.score == rec["score"]  # the very same number /recommend served
            parts = body.base + sum(e.contribution for e in body.experts)
            assert abs(parts - body.score) <= 1e-4 * abs(body.score)
            e_u = fake_run.user_emb[u].astype(np.float64)
            assert body.base == pytest.approx(float(fake_run.item_base[i] @ e_u), abs=1e-5)
            for n, expert in enumerate(body.experts):
                assert expert.name == fake_run.experts[n]["name"]
                assert expert.weight == pytest.approx(float(fake_run.item_gates[i, n]))
                assert expert.contribution == pytest.approx(
                    float(fake_run.item_gates[i, n]) * float(fake_run.item_experts[i, n] @ e_u), abs=1e-6)
            assert sum(body.modalities.values()) == pytest.approx(1.0)
            assert set(body.modalities) <= {"text", "meta"}
            active = [e for e in body.experts if e.weight > 0]
            assert body.top_expert == max(active, key=lambda e: e.contribution).name
            assert body.reason.endswith(".") and str(round(body.score, 3))[:4] in body.reason


def test_explanation_cached_flag(api, fake_run):
    path = f"/explain/{fake_run.user_ids[3]}/{fake_run.item_ids[250]}"
    first, second = api.get(path).json(), api.get(path).json()
    assert first["cached"] is False and second["cached"] is True
    assert {**first, "cached": True} == second


def test_explain_unknown_ids_404(api, fake_run):
    r = api.get(f"/explain/ghost/{fake_run.item_ids[0]}")
    assert r.status_code == 404 and "ghost" in r.json()["detail"]
    r = api.get(f"/explain/{fake_run.user_ids[0]}/ghost-item")
    assert r.status_code == 404 and "ghost-item" in r.json()["detail"]


def test_explain_without_experts(start_server, tmp_path):
    run = make_run(tmp_path / "run", n_experts=0, model="lightgcn")
    live = start_server(bundle=export_bundle(run.path, tmp_path / "bundle"))
    body = httpx.get(f"{live.url}/explain/{run.user_ids[0]}/{run.item_ids[0]}").json()
    assert body["experts"] == [] and body["modalities"] == {} and body["top_expert"] == "base"
    assert body["base"] == body["score"]
    rec = httpx.get(f"{live.url}/recommend/{run.user_ids[0]}", params={"k": 3}).json()
    assert [it["item_id"] for it in rec["items"]] == [run.item_ids[i] for i in brute_force_topk(run, 0, 3)[0]]


# ------------------------------------------------------------------ metrics, errors


def test_metrics_exposed(api, bundle_dir, fake_run):
    api.get(f"/recommend/{fake_run.user_ids[1]}")
    text = api.get("/metrics").text
    assert 'magnet_http_requests_total{method="GET",route="/recommend/{user_id}",status="200"}' in text
    assert 'magnet_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/recommend/{user_id}"}' in text
    assert f'model_version="{_version(bundle_dir)}"' in text
    assert "magnet_cache_hits_total" in text and "magnet_cache_misses_total" in text
    assert "magnet_cache_errors_total" in text


def test_request_id_and_no_trace_on_500(start_server, bundle_dir):
    def add_failing_route(app):
        async def boom() -> None:
            raise RuntimeError("secret internals")

        app.add_api_route("/boom", boom)

    live = start_server(bundle=bundle_dir, app_hook=add_failing_route)
    r = httpx.get(f"{live.url}/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.get(f"{live.url}/boom")
    assert r.status_code == 500
    body = r.json()
    assert body["detail"] == "internal server error" and body["request_id"]
    assert "secret" not in r.text and "Traceback" not in r.text


# ------------------------------------------------------------------ readiness, reload


def test_not_ready_without_bundle(start_server, bundle_dir):
    live = start_server(bundle=None, admin_token=TOKEN, wait_ready=False)
    with live.client() as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not_ready"
        assert c.get("/recommend/u1000").status_code == 503
        assert c.post("/admin/reload", headers=AUTH).status_code == 409  # nothing to reload yet
        r = c.post("/admin/reload", headers=AUTH, json={"bundle": str(bundle_dir)})
        assert r.status_code == 200 and r.json()["previous_model_version"] is None
        assert c.get("/readyz").json()["model_version"] == _version(bundle_dir)


def test_bad_bundle_at_startup_not_ready(start_server, bundle_copy):
    flip_byte(bundle_copy / "user_emb.npy")
    live = start_server(bundle=bundle_copy, wait_ready=False)
    with live.client() as c:
        for _ in range(100):
            r = c.get("/readyz")
            if "user_emb.npy" in r.text:
                break
            time.sleep(0.05)
        assert r.status_code == 503 and "user_emb.npy" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_reload_requires_token(start_server, bundle_dir):
    live = start_server(bundle=bundle_dir, admin_token=TOKEN)
    with live.client() as c:
        assert c.post("/admin/reload").status_code == 401
        r = c.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/admin/reload", headers={"Authorization": TOKEN}).status_code == 401
        assert c.post("/admin/reload", headers=AUTH).status_code == 200
    tokenless = start_server(bundle=bundle_dir)  # no MAGNET_ADMIN_TOKEN: admin is off
    assert httpx.post(f"{tokenless.url}/admin/reload", headers=AUTH).status_code == 401


def test_reload_swaps_and_refuses_corrupt_bundle(start_server, bundle_copy, fake_run, tmp_path):
    old = _version(bundle_copy)
    live = start_server(bundle=bundle_copy, admin_token=TOKEN)
    user = fake_run.user_ids[2]
    with live.client() as c:
        flip_byte(bundle_copy / "item_emb.npy")  # the served bundle changes on disk under us
        r = c.post("/admin/reload", headers=AUTH)
        assert r.status_code == 409
        assert "item_emb.npy" in r.json()["detail"] and "Traceback" not in r.text
        assert c.get("/readyz").json()["model_version"] == old
        r = c.get(f"/recommend/{user}")
        assert r.status_code == 200 and r.json()["model_version"] == old

        fresh = export_bundle(fake_run.path, tmp_path / "fresh")
        r = c.post("/admin/reload", headers=AUTH, json={"bundle": str(fresh)})
        assert r.status_code == 200
        assert r.json()["previous_model_version"] == old and r.json()["model_version"] == _version(fresh)
        assert c.get(f"/recommend/{user}").json()["model_version"] == _version(fresh)

        r = c.post("/admin/reload", headers=AUTH, json={"bundle": str(tmp_path / "missing")})
        assert r.status_code == 409
        assert c.get("/readyz").json()["model_version"] == _version(fresh)
        r = c.post("/admin/reload", headers=AUTH, json={"bundel": "typo"})
        assert r.status_code == 422
        metrics = c.get("/metrics").text
        assert 'magnet_model_reloads_total{result="rejected"} 2.0' in metrics


def test_reload_under_concurrent_requests_loses_none(start_server, bundle_dir, fake_run, tmp_path):
    other = export_bundle(fake_run.path, tmp_path / "other")
    versions = {_version(bundle_dir), _version(other)}
    live = start_server(bundle=bundle_dir, admin_token=TOKEN)
    stop = threading.Event()
    statuses: list[int] = []
    seen_versions: set[str] = set()

    def hammer(n: int) -> None:
        with live.client() as c:
            while not stop.is_set():
                user = fake_run.user_ids[n % len(fake_run.user_ids)]
                for r in (c.get(f"/recommend/{user}", params={"k": 5}),
                          c.get(f"/explain/{user}/{fake_run.item_ids[n % 300]}"),
                          c.post("/recommend", json={"user_ids": [user, "x"], "k": 3})):
                    statuses.append(r.status_code)
                    if r.status_code == 200 and "model_version" in r.json():
                        seen_versions.add(r.json()["model_version"])
                n += 1

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(hammer, n) for n in range(4)]
        with live.client() as admin:
            for step in range(6):
                target = other if step % 2 == 0 else bundle_dir
                r = admin.post("/admin/reload", headers=AUTH, json={"bundle": str(target)})
                assert r.status_code == 200
                time.sleep(0.05)  # let requests land on each model
        stop.set()
        for f in futures:
            f.result()
    assert len(statuses) > 20
    assert set(statuses) == {200}
    assert seen_versions == versions


def test_approximate_index_served(start_server, tmp_path):
    run = make_run(tmp_path / "run", n_items=400, seed=5)
    live = start_server(bundle=export_bundle(run.path, tmp_path / "bundle", exact_max_items=40))
    with live.client() as c:
        assert c.get("/readyz").json()["index"] == "hnsw"
        for u in range(10):
            items = c.get(f"/recommend/{run.user_ids[u]}", params={"k": 15}).json()["items"]
            ids = [run.item_ids.index(it["item_id"]) for it in items]
            assert len(ids) == 15 == len(set(ids))
            assert not set(ids) & set(run.seen(u).tolist())
            scores = [it["score"] for it in items]
            assert scores == sorted(scores, reverse=True)
            np.testing.assert_allclose(scores, run.item_emb[ids].astype(np.float64) @ run.user_emb[u], rtol=1e-6)
        sim = c.get(f"/similar/{run.item_ids[0]}", params={"k": 5}).json()["items"]
        assert len(sim) == 5 and run.item_ids[0] not in {it["item_id"] for it in sim}


def test_watch_picks_up_a_reexport(start_server, fake_run, tmp_path):
    bundle = export_bundle(fake_run.path, tmp_path / "bundle")
    live = start_server(bundle=bundle, watch_s=0.1)
    old = _version(bundle)
    with live.client() as c:
        assert c.get("/readyz").json()["model_version"] == old
        export_bundle(fake_run.path, bundle)  # atomic replacement of the served directory
        new = _version(bundle)
        deadline = time.monotonic() + 15
        while c.get("/readyz").json()["model_version"] != new and time.monotonic() < deadline:
            assert c.get(f"/recommend/{fake_run.user_ids[0]}").status_code == 200
            time.sleep(0.05)
        assert c.get("/readyz").json()["model_version"] == new


def test_serve_entry_point(bundle_dir, tmp_path):
    """`service.server.serve` as `magnet serve` runs it: its own process, JSON logs with request ids."""
    import socket
    import subprocess
    import sys

    from service.bundle import BundleError
    from service.server import serve

    with pytest.raises(BundleError, match="manifest.json"):
        serve(tmp_path, port=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "server.log"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MAGNET_")}
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", f"from service.server import serve; serve({str(bundle_dir)!r}, port={port})"],
            stderr=err, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        r = httpx.get(f"http://127.0.0.1:{port}/recommend/nobody", headers={"X-Request-ID": "trace-me-42"})
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("request_id") == "trace-me-42"]
    assert access and access[0]["route"] == "/recommend/{user_id}" and access[0]["status"] == 200
