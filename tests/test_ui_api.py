"""The dashboard's HTTP side against a real server: pages, assets, the read-only JSON
helpers, MAGNET_UI=false, and the admin token staying out of everything the UI serves.
(The pages themselves are driven in a real browser by test_ui_browser.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import UI_ADMIN_TOKEN, UI_XSS_NAME, ui_item_names, ui_routing
from service.ui.schemas import ItemsInfo, ModelInfo, SearchResults

PAGES = ("/ui/", "/ui/model", "/ui/users/u1", "/ui/items/nope")


def _prometheus_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


# ------------------------------------------------------------------ pages and assets


def test_every_page_is_the_shell_with_its_assets_and_a_strict_policy(ui_server):
    with ui_server.client() as c:
        assert c.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
        for path in PAGES:
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in r.headers["content-security-policy"]
            assert r.headers["x-content-type-options"] == "nosniff"
            assets = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', r.text)
            assert sorted(assets) == ["/ui/static/app.js", "/ui/static/favicon.svg", "/ui/static/style.css"]
        types = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
        for name, media in types.items():
            r = c.get(f"/ui/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(media) and r.content
            again = c.get(f"/ui/static/{name}", headers={"if-none-match": r.headers["etag"]})
            assert again.status_code == 304 and not again.content


def test_assets_come_from_a_fixed_list_not_the_file_system(ui_server):
    with ui_server.client() as c:
        for path in ("/ui/static/index.html", "/ui/static/data.py", "/ui/static/..%2F__init__.py",
                     "/ui/static/%2e%2e%2fdata.py", "/ui/static/nope.js"):
            assert c.get(path).status_code == 404, path


def test_pages_are_served_before_a_model_is_loaded_and_the_helpers_say_503(start_server):
    live = start_server(wait_ready=False)  # no bundle configured
    with live.client() as c:
        assert c.get("/ui/model").status_code == 200
        r = c.get("/ui/api/model")
        assert r.status_code == 503 and "no model loaded" in r.json()["detail"]
        assert c.get("/ui/api/search", params={"q": "x"}).status_code == 503


def test_magnet_ui_false_removes_every_ui_route(start_server, ui_bundle, monkeypatch):
    from service.settings import load_settings

    monkeypatch.setenv("MAGNET_UI", "false")
    settings = load_settings(bundle=ui_bundle, redis_url=None, admin_token=None, access_log=False)
    assert settings.ui is False
    live = start_server(settings)
    with live.client() as c:
        for path in (*PAGES, "/ui/static/app.js", "/ui/api/model", "/ui/api/search?q=1", "/ui/api/items?id=x"):
            assert c.get(path).status_code == 404, path
        assert c.get("/recommend/u1").status_code == 200  # the API itself is unchanged
        assert not [p for p in c.get("/openapi.json").json()["paths"] if p.startswith("/ui")]


def test_the_admin_token_never_reaches_anything_the_ui_serves(ui_server):
    with ui_server.client() as c:
        admin = {"authorization": f"Bearer {UI_ADMIN_TOKEN}"}
        assert c.post("/admin/reload", headers=admin).status_code == 200  # the token is set and works
        bodies = [c.get(p).text for p in PAGES]
        bodies += [c.get(f"/ui/static/{n}").text for n in ("app.js", "style.css", "favicon.svg")]
        helpers = ("/ui/api/model", "/ui/api/search?q=u", "/ui/api/items?id=i5000&routing=true")
        bodies += [c.get(p).text for p in helpers]
    assert all(UI_ADMIN_TOKEN not in body for body in bodies)
    assert "/admin" not in bodies[len(PAGES)]  # app.js never calls the admin API


# ------------------------------------------------------------------ JSON helpers


def test_model_helper_reports_the_manifest_and_live_cache_counters(ui_server, ui_bundle, ui_loaded):
    manifest = json.loads((ui_bundle / "manifest.json").read_text())
    with ui_server.client() as c:
        user, item = "u1001", None
        item = c.get(f"/recommend/{user}?k=1").json()["items"][0]["item_id"]
        for _ in range(3):  # a miss, then hits
            assert c.get(f"/explain/{user}/{item}").status_code == 200
        info = c.get("/ui/api/model").json()
        text = c.get("/metrics").text
    ModelInfo.model_validate(info)  # the documented body
    assert info["model_version"] == manifest["model_version"]
    assert info["n_users"] == 40 and info["n_items"] == 120 and info["experts"] == manifest["experts"]
    assert info["metrics"] == {s: manifest["metrics"][s] for s in ("valid", "test")}
    assert info["routing"] == manifest["metrics"]["routing"] == ui_routing()
    assert info["has_names"] is True and info["item_files"] == ["item_names.json"]
    hits, misses = _prometheus_sum(text, "magnet_cache_hits_total"), _prometheus_sum(text, "magnet_cache_misses_total")
    assert info["cache"]["hits"] == hits and info["cache"]["misses"] == misses and hits >= 2
    assert info["cache"]["hit_ratio"] == pytest.approx(hits / (hits + misses))
    assert info["cache"]["by_kind"]["explain"]["hits"] >= 2
    b = ui_loaded
    assert info["examples"]["users"] == [{"user_id": u, "interactions": len(b.seen(n))}
                                         for n, u in enumerate(b.user_ids[:6])]
    top = sorted(range(b.n_items), key=lambda n: (-int(b.popularity[n]), n))[:6]
    assert [it["item_id"] for it in info["examples"]["items"]] == [b.item_ids[n] for n in top]


def test_routing_block_without_epochs_gets_one_per_entry(start_server, tmp_path):
    from offline.export import export_bundle
    from offline.synthetic import make_run

    old = {k: v for k, v in ui_routing(epochs=5).items() if k != "epochs"}  # a bundle from before `epochs`
    run = make_run(tmp_path / "run", n_users=5, n_items=10, routing=old)
    live = start_server(bundle=export_bundle(run.path, tmp_path / "bundle"))
    with live.client() as c:
        info = c.get("/ui/api/model").json()
    assert info["routing"]["epochs"] == [1, 2, 3, 4, 5] and info["has_names"] is False


def test_items_helper_gives_names_popularity_and_the_gates_explain_reports(ui_server, ui_loaded):
    ids = [ui_loaded.item_ids[n] for n in (0, 4, 7)] + ["no-such-item"]
    user = ui_loaded.user_ids[0]
    with ui_server.client() as c:
        body = c.get("/ui/api/items", params={"id": ids, "routing": "true"}).json()
        explained = {i: c.get(f"/explain/{user}/{i}").json() for i in ids[:3]}
        too_many = c.get("/ui/api/items", params={"id": [str(n) for n in range(1001)]})
    ItemsInfo.model_validate(body)
    names = ui_item_names(120)
    items = body["items"]
    assert items["no-such-item"] is None
    assert [items[i]["name"] for i in ids[:3]] == [names[0], None, UI_XSS_NAME]
    for n, i in zip((0, 4, 7), ids[:3]):
        assert items[i]["popularity"] == int(ui_loaded.popularity[n])
        assert [e["weight"] for e in items[i]["experts"]] == [e["weight"] for e in explained[i]["experts"]]
        # the rule, by hand: text/meta dominant keep their gate; balanced/complementary split it over both
        g = ui_loaded.item_gates[n].astype(np.float64)
        expected = {"meta": g[1] + (g[2] + g[3]) / 2, "text": g[0] + (g[2] + g[3]) / 2}
        assert items[i]["modalities"] == pytest.approx(expected)
        assert items[i]["top_expert"] == ui_loaded.experts[int(np.argmax(g))].name
    assert too_many.status_code == 422


def test_search_ranks_exact_then_prefix_then_popular_and_matches_titles(ui_server, ui_loaded):
    pop = ui_loaded.popularity
    with ui_server.client() as c:
        exact = c.get("/ui/api/search", params={"q": ui_loaded.item_ids[3]}).json()
        titled = c.get("/ui/api/search", params={"q": "TITLE 0", "limit": 50}).json()
        users = c.get("/ui/api/search", params={"q": "u10"}).json()
        blank = c.get("/ui/api/search", params={"q": "  "}).json()
        assert c.get("/ui/api/search", params={"q": "x", "limit": 51}).status_code == 422
    for body in (exact, titled, users, blank):
        SearchResults.model_validate(body)
    assert exact["items"][0]["item_id"] == ui_loaded.item_ids[3]
    # every "Title 0xx" name is a prefix match: ordered by popularity, then index
    named = [n for n, name in enumerate(ui_item_names(120)) if name and name.startswith("Title 0")]
    expected = sorted(named, key=lambda n: (-int(pop[n]), n))
    assert [it["item_id"] for it in titled["items"]] == [ui_loaded.item_ids[n] for n in expected][:50]
    assert all(it["name"].startswith("Title 0") for it in titled["items"])
    starts = sorted(n for n, u in enumerate(ui_loaded.user_ids) if u.startswith("u10"))
    assert users["users"] == [ui_loaded.user_ids[n] for n in starts][:8] and users["items"] == []
    assert blank == {"query": "  ", "users": [], "items": []}


# ------------------------------------------------------------------ packaging


def test_a_built_wheel_ships_the_dashboard(tmp_path):
    """Package data, so a non-editable install (the Docker image) serves /ui/ too."""
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    for pkg in ("model", "offline", "service"):
        shutil.copytree(root / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    static = {f"service/ui/static/{p.name}" for p in (root / "service/ui/static").iterdir()}
    assert static and static <= shipped
