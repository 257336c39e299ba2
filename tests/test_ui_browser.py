"""The dashboard in a real headless Chromium against a real server (tests/ui_browser.py).

Each page is loaded as a user would, then read back from the DOM and compared with
the JSON API for the same ids: the bars must carry /explain's exact contributions and
be drawn to scale, lists must follow /recommend and /similar, and the browser's
console must stay free of errors. Unknown ids must give a clear message.

Environment (for running by hand):
  MAGNET_UI_BUNDLE=path       run the same checks against another bundle (e.g. the
                              quickstart or an ml100k one) instead of the fabricated one
  MAGNET_UI_SCREENSHOTS=dir   save a full-page PNG of each page there (docs/ keeps one
                              of each: refresh them on purpose, not on every run)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from conftest import UI_ADMIN_TOKEN, UI_XSS_NAME
from service.bundle import load_bundle
from ui_browser import Browser

SHOTS = os.environ.get("MAGNET_UI_SCREENSHOTS")


@pytest.fixture(scope="module")
def ui_target(ui_bundle):
    """The fabricated bundle, or $MAGNET_UI_BUNDLE (overrides conftest's ui_target)."""
    return Path(os.environ.get("MAGNET_UI_BUNDLE") or ui_bundle)


@pytest.fixture(scope="module")
def _browser():
    b = Browser()
    yield b
    b.quit()


@pytest.fixture
def browser(_browser):
    _browser.console()  # start each test with an empty browser log
    return _browser


@pytest.fixture(scope="module")
def api(ui_server):
    with ui_server.client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def user(ui_loaded) -> str:
    return ui_loaded.user_ids[0]


def _shot(browser: Browser, name: str) -> None:
    if SHOTS:
        browser.screenshot(Path(SHOTS) / f"ui_{name}.png")


def _no_console_errors(browser: Browser) -> None:
    errors = browser.console_errors()
    assert errors == [], errors


def _rows(browser: Browser) -> list[dict]:
    """Each recommendation row as drawn: item id, link text, bar segments and geometry."""
    return browser.js("""
      return [...document.querySelectorAll('li.rec')].map((row) => {
        const box = (e) => { const r = e.getBoundingClientRect(); return {x: r.x, w: r.width}; };
        const bar = row.querySelector('svg.bar');
        return {
          id: row.dataset.itemId,
          name: row.querySelector('.item-name').textContent,
          score: row.querySelector('.rec-score').textContent,
          reason: (row.querySelector('.reason') || {}).textContent || null,
          segs: bar ? [...bar.querySelectorAll('rect.seg')].map((s) => ({part: s.dataset.part,
                 name: s.dataset.name, value: s.dataset.value, ...box(s)})) : null,
          zero: bar ? box(bar.querySelector('line.bar-zero')).x : null,
          scoreX: bar ? box(bar.querySelector('line.bar-score')).x : null,
          chips: [...row.querySelectorAll('.chip')].map((c) => [c.dataset.name, c.dataset.weight]),
          shares: [...row.querySelectorAll('.strip-seg')].map((s) => [s.dataset.name, s.dataset.value]),
        };
      });""")


def _display(bundle, item_id: str) -> str:
    """What the pages show for an item: its display name, else its id."""
    names = bundle.item_names
    name = names[bundle.item_ids.index(item_id)] if names else None
    return name or item_id


# ------------------------------------------------------------------ user page


def test_user_page_bars_carry_explains_contributions_to_scale(browser, ui_server, api, ui_loaded, user):
    assert browser.open(f"{ui_server.url}/ui/users/{user}?k=5") == "ready"
    rec = api.get(f"/recommend/{user}?k=5").json()
    rows = _rows(browser)
    assert [r["id"] for r in rows] == [it["item_id"] for it in rec["items"]]
    per_unit = []
    for row in rows:
        exp = api.get(f"/explain/{user}/{row['id']}").json()
        assert row["name"] == _display(ui_loaded, row["id"])
        # the values: base first, then every expert in manifest order, exactly /explain's numbers
        assert [(s["part"], s["name"]) for s in row["segs"]] == \
            [("base", "base")] + [("expert", e["name"]) for e in exp["experts"]]
        assert [float(s["value"]) for s in row["segs"]] == [exp["base"]] + [e["contribution"] for e in exp["experts"]]
        # the drawing: widths proportional to |value| on one scale, the score marker at base + sum
        big = max(row["segs"], key=lambda s: abs(float(s["value"])))
        ppu = big["w"] / abs(float(big["value"]))
        per_unit.append(ppu)
        for s in row["segs"]:
            assert s["w"] == pytest.approx(abs(float(s["value"])) * ppu, abs=1.0), s
        assert row["scoreX"] - row["zero"] == pytest.approx(exp["score"] * ppu, abs=1.5)
        assert row["reason"] == exp["reason"]
        routed = sorted((e for e in exp["experts"] if e["weight"] > 0), key=lambda e: -e["weight"])
        assert [(n, float(w)) for n, w in row["chips"]] == [(e["name"], e["weight"]) for e in routed]
        assert {n: float(v) for n, v in row["shares"]} == exp["modalities"]
    assert max(per_unit) == pytest.approx(min(per_unit), rel=0.01)  # every bar on the same scale
    assert browser.js("return document.querySelector('[data-fallback]')") is None
    _no_console_errors(browser)
    _shot(browser, "user")


def test_k_control_reloads_with_that_many_items(browser, ui_server, api, user):
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait
    from selenium.webdriver.support import expected_conditions as EC

    browser.open(f"{ui_server.url}/ui/users/{user}?k=5")
    select = browser.driver.find_element("id", "k-select")
    Select(select).select_by_value("10")
    WebDriverWait(browser.driver, 30).until(EC.staleness_of(select))
    assert browser.wait_drawn() == "ready"
    assert browser.driver.current_url.endswith("?k=10")
    ids = [r["id"] for r in _rows(browser)]
    assert ids == [it["item_id"] for it in api.get(f"/recommend/{user}?k=10").json()["items"]]
    _no_console_errors(browser)


def test_unknown_user_says_which_fallback_answered(browser, ui_server, api):
    assert browser.open(f"{ui_server.url}/ui/users/nobody-at-all") == "ready"
    notice = browser.js("const n = document.querySelector('.notice[data-kind=fallback]'); return n && n.textContent")
    assert "not in model" in notice and 'fallback: "popular"' in notice and "nobody-at-all" in notice
    assert browser.js("return document.querySelector('[data-fallback]').dataset.fallback") == "popular"
    rows = _rows(browser)
    popular = api.get("/recommend/nobody-at-all?k=10").json()
    assert popular["fallback"] == "popular"
    assert [r["id"] for r in rows] == [it["item_id"] for it in popular["items"]]
    assert all(r["segs"] is None for r in rows)  # nothing user-specific to explain
    _no_console_errors(browser)


# ------------------------------------------------------------------ item page


def test_item_page_shows_routing_similar_items_and_the_driving_modality(browser, ui_server, api, ui_loaded, user):
    item = api.get(f"/recommend/{user}?k=1").json()["items"][0]["item_id"]
    assert browser.open(f"{ui_server.url}/ui/items/{item}") == "ready"
    page = browser.js("""return {
      title: document.querySelector('.page-title').textContent,
      gates: [...document.querySelectorAll('.gates .hbar')].map((b) => [b.dataset.name, b.dataset.value]),
      lead: (document.querySelector('.lead[data-modality]') || {dataset: {}}).dataset.modality,
      similar: [...document.querySelectorAll('.similar-row')].map((r) => [r.dataset.itemId,
                 r.querySelector('.item-name').textContent]),
    }""")
    assert page["title"] == _display(ui_loaded, item)
    explained = api.get(f"/explain/{user}/{item}").json()  # its weights are the item's gates
    assert [(n, float(v)) for n, v in page["gates"]] == [(e["name"], e["weight"]) for e in explained["experts"]]
    similar = api.get(f"/similar/{item}?k=10").json()["items"]
    assert page["similar"] == [[s["item_id"], _display(ui_loaded, s["item_id"])] for s in similar]
    shares = api.get("/ui/api/items", params={"id": item, "routing": "true"}).json()["items"][item]["modalities"]
    if shares:
        top = max(shares.values())
        assert page["lead"] == "+".join(m for m, v in sorted(shares.items(), key=lambda kv: -kv[1])
                                        if abs(v - top) < 1e-6)
    _no_console_errors(browser)
    _shot(browser, "item")


def test_unknown_item_shows_a_clear_message(browser, ui_server):
    assert browser.open(f"{ui_server.url}/ui/items/no-such-item") == "ready"
    text = browser.js("const n = document.querySelector('.notice[data-kind=unknown]'); return n && n.textContent")
    assert text and "No item “no-such-item”" in text
    assert browser.js("return document.querySelectorAll('.similar-row').length") == 0
    _no_console_errors(browser)


def test_item_names_are_shown_as_text_never_as_markup(browser, start_server, ui_bundle):
    live = start_server(bundle=ui_bundle)
    item = load_bundle(ui_bundle).item_ids[7]  # named UI_XSS_NAME
    assert browser.open(f"{live.url}/ui/items/{item}") == "ready"
    assert browser.js("return document.querySelector('.page-title').textContent") == UI_XSS_NAME
    assert browser.js("return window.__xss === undefined && document.querySelectorAll('main img').length === 0")
    _no_console_errors(browser)


# ------------------------------------------------------------------ model page


def _cache_ratio(api: httpx.Client) -> float:
    text = api.get("/metrics").text
    total = {name: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))
             for name in ("magnet_cache_hits_total", "magnet_cache_misses_total")}
    return total["magnet_cache_hits_total"] / (total["magnet_cache_hits_total"] + total["magnet_cache_misses_total"])


def test_model_page_shows_bundle_metrics_routing_and_the_live_hit_ratio(browser, ui_server, api, ui_loaded, user):
    item = api.get(f"/recommend/{user}?k=1").json()["items"][0]["item_id"]
    for _ in range(2):
        api.get(f"/explain/{user}/{item}")  # at least one hit
    expected_ratio = _cache_ratio(api)
    assert browser.open(f"{ui_server.url}/ui/model") == "ready"
    page = browser.js("""return {
      title: document.querySelector('.page-title').textContent,
      metrics: [...document.querySelectorAll('#metrics-table td[data-metric]')].map((td) =>
                 [td.parentElement.dataset.split, td.dataset.metric, td.textContent]),
      util: [...document.querySelectorAll('.utilization .hbar')].map((b) => [b.dataset.name, b.dataset.value]),
      series: [...document.querySelectorAll('polyline.series')].map((p) => [p.dataset.series,
                 p.getAttribute('points').trim().split(/\\s+/).length]),
      switchAt: (document.querySelector('line.switch-line') || {dataset: {}}).dataset.epoch,
      best: (document.querySelector('line.best-line') || {dataset: {}}).dataset.epoch,
      ratio: document.querySelector('#cache .big-number').dataset.value,
    }""")
    run = ui_loaded.manifest["metrics"]
    assert page["title"] == ui_loaded.model_version
    shown = {(s, m): v for s, m, v in page["metrics"]}
    for split in ("valid", "test"):
        for metric in ("recall@20", "ndcg@20"):
            assert shown[(split, metric)] == f"{run[split][metric]:.4f}"
    routing = run["routing"]
    assert [(n, float(v)) for n, v in page["util"]] == list(zip([e.name for e in ui_loaded.experts],
                                                                routing["expert_utilization"]))
    n_epochs = len(routing["coverage_entropy"])
    assert sorted(page["series"]) == [["coverage_entropy", n_epochs], ["sample_entropy", n_epochs]]
    assert page["switchAt"] == (None if routing["stage_switch_epoch"] is None else str(routing["stage_switch_epoch"]))
    best = run.get("best_epoch")
    assert page["best"] == (str(best) if best in routing.get("epochs", range(1, n_epochs + 1)) else None)
    assert float(page["ratio"]) == pytest.approx(expected_ratio)
    _no_console_errors(browser)
    _shot(browser, "model")


# ------------------------------------------------------------------ search and the rest


def test_search_box_finds_items_by_title_and_users_by_id(browser, ui_server, ui_loaded, user):
    from selenium.webdriver.common.keys import Keys

    browser.open(f"{ui_server.url}/ui/")
    box = browser.driver.find_element("id", "search-input")

    def hits(query: str) -> list[list[str]]:
        box.clear()
        box.send_keys(query)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = browser.js("""const r = document.getElementById('search-results');
              return r.hidden || r.dataset.query !== arguments[0] ? null : [...r.querySelectorAll('a.search-hit')]
                .map((a) => [a.dataset.kind, a.getAttribute('href'), a.textContent]);""", query)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no search results for {query!r}")

    names = ui_loaded.item_names
    if names:  # a bundle with titles: find an item by its title, listed by title with its id
        n = next(i for i, name in enumerate(names) if name and "<" not in name)
        found = [h for h in hits(names[n]) if h[0] == "item"]
        assert found[0][2] == names[n] + ui_loaded.item_ids[n]  # the exact title first
        for _, href, text in found:
            item_id = href.rsplit("/", 1)[1]
            assert text == _display(ui_loaded, item_id) + (item_id if _display(ui_loaded, item_id) != item_id else "")
        word = names[n].split()[0]  # a word of a title finds every item whose title has it
        found = hits(word)
        assert all(word.lower() in h[2].lower() for h in found if h[0] == "item")
    found = hits(user)
    assert ["user", f"/ui/users/{user}", user] in found
    box.send_keys(Keys.ENTER)  # Enter opens the first hit
    deadline = time.monotonic() + 10
    while found[0][1] not in browser.driver.current_url and time.monotonic() < deadline:
        time.sleep(0.05)
    assert browser.driver.current_url.endswith(found[0][1])
    assert browser.wait_drawn() == "ready"
    _no_console_errors(browser)


def test_landing_page_links_examples_and_no_page_touches_the_admin_api(browser, ui_server, ui_loaded, user):
    item = ui_loaded.item_ids[0]
    seen: list[str] = []
    for path in ("/ui/", "/ui/model", f"/ui/users/{user}?k=5", f"/ui/items/{item}", "/ui/users/nobody"):
        assert browser.open(ui_server.url + path) == "ready"
        assert UI_ADMIN_TOKEN not in browser.driver.page_source
        seen += browser.js("return performance.getEntriesByType('resource').map((e) => e.name)")
        _no_console_errors(browser)
    assert seen and not [u for u in seen if "/admin" in u]
    browser.open(ui_server.url + "/ui/")
    links = browser.js("return [...document.querySelectorAll('main a')].map((a) => a.getAttribute('href'))")
    assert f"/ui/users/{user}" in links and "/ui/model" in links


def test_a_model_without_experts_draws_the_base_alone(browser, start_server, tmp_path):
    """LightGCN / popularity bundles: no experts, no routing block, no names."""
    from offline.export import export_bundle
    from offline.synthetic import make_run

    run = make_run(tmp_path / "run", n_users=8, n_items=30, n_experts=0, model="lightgcn")
    live = start_server(bundle=export_bundle(run.path, tmp_path / "bundle"))
    user, item = run.user_ids[0], run.item_ids[0]
    assert browser.open(f"{live.url}/ui/users/{user}?k=5") == "ready"
    rows = _rows(browser)
    with live.client() as c:
        for row in rows:
            score = c.get(f"/explain/{user}/{row['id']}").json()["score"]
            assert [(s["part"], float(s["value"])) for s in row["segs"]] == [("base", score)]
    for path in (f"/ui/items/{item}", "/ui/model", "/ui/"):
        assert browser.open(live.url + path) == "ready", path
    text = browser.js("return document.querySelector('main').textContent")
    assert "lightgcn" in text
    browser.open(f"{live.url}/ui/model")
    assert "no routing block" in browser.js("return document.querySelector('main').textContent")
    _no_console_errors(browser)
