/* MAGNET dashboard: draws the user, item, model and landing pages from the JSON API.
 *
 * Every number shown comes from the service as it is: /recommend (ranking), /explain
 * (base + per-expert contributions, modality shares, routing weights, reason),
 * /similar, and the read-only /ui/api/* helpers (model facts, names, search). Nothing
 * is re-ranked or re-attributed here. No framework, no build step: plain DOM and SVG.
 *
 * Test hooks: <body data-state="loading|ready|error">; every bar segment carries
 * data-part ("base" | "expert"), data-name and data-value (the exact JSON number).
 */
"use strict";

(() => {
  const ROOT = document.body.dataset.root || "";
  const app = document.getElementById("app");
  const SVG_NS = "http://www.w3.org/2000/svg";
  const K_CHOICES = [5, 10, 20, 50];
  const BASE_COLOR = "#9aa5b1";
  const EXPERT_COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f", "#86bcb6"];
  const MODALITY_COLORS = ["#3b6ea8", "#d9822b", "#3f9142", "#c44e52", "#8172b2", "#937860", "#64b5cd"];

  // ------------------------------------------------------------------ small helpers

  /** An HTML element: el("a", {class: "x", href: "/"}, "text", child). Text is never parsed as HTML. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  const enc = encodeURIComponent;
  const url = (path) => ROOT + path;
  const userHref = (id) => url(`/ui/users/${enc(id)}`);
  const itemHref = (id) => url(`/ui/items/${enc(id)}`);

  function fmt(x, digits = 3) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    return Number(x).toFixed(digits);
  }
  function signed(x, digits = 3) {
    const v = Number(x);
    const text = Math.abs(v).toFixed(digits);
    return (v < 0 && Number(text) !== 0 ? "\u2212" : "+") + text;
  }
  function pct(x, digits = 0) {
    return x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)}%`;
  }
  function count(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail || `HTTP ${status}`);
      this.status = status;
    }
  }

  /** GET JSON; resolves {status, body}. Network failures and non-JSON bodies throw ApiError. */
  async function fetchJSON(path) {
    let response;
    try {
      response = await fetch(url(path), { headers: { accept: "application/json" } });
    } catch (err) {
      throw new ApiError(0, `cannot reach the API (${err.message})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      throw new ApiError(response.status, `unexpected answer from ${path} (HTTP ${response.status})`);
    }
    return { status: response.status, body };
  }

  /** GET JSON that must succeed; a 503 means no model yet, anything else non-2xx is an error. */
  async function api(path) {
    const { status, body } = await fetchJSON(path);
    if (status >= 200 && status < 300) return body;
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${status} from ${path}`;
    throw new ApiError(status, detail);
  }

  let modelPromise = null;
  const getModel = () => (modelPromise = modelPromise || api("/ui/api/model"));

  /** {item_id: {name, popularity, ...} | null}; unknown ids come back as null. */
  async function lookupItems(ids, routing = false) {
    const unique = [...new Set(ids)];
    const out = {};
    for (let start = 0; start < unique.length; start += 100) {
      const chunk = unique.slice(start, start + 100);
      const query = chunk.map((id) => `id=${enc(id)}`).join("&") + (routing ? "&routing=true" : "");
      Object.assign(out, (await api(`/ui/api/items?${query}`)).items);
    }
    return out;
  }

  function expertPalette(experts) {
    const colors = new Map();
    experts.forEach((e, n) => colors.set(e.name, EXPERT_COLORS[n % EXPERT_COLORS.length]));
    return colors;
  }

  function modalityPalette(names) {
    const colors = new Map();
    [...new Set(names)].sort().forEach((m, n) => colors.set(m, MODALITY_COLORS[n % MODALITY_COLORS.length]));
    return colors;
  }

  function expertLabel(e) {
    return e.modality ? `${e.role} · ${e.modality}` : e.role;
  }

  function setState(state) {
    document.body.dataset.state = state;
  }

  function notice(kind, title, ...body) {
    return el("div", { class: `notice notice-${kind}`, "data-kind": kind, role: kind === "error" ? "alert" : "status" },
      el("strong", { class: "notice-title" }, title), body.length ? el("div", { class: "notice-body" }, ...body) : null);
  }

  function card(title, ...children) {
    return el("section", { class: "card" }, title ? el("h2", { class: "card-title" }, title) : null, ...children);
  }

  function itemTitle(info, id) {
    return info && info.name ? info.name : id;
  }

  function itemLink(id, info, extraClass) {
    const named = info && info.name;
    return el("a", { class: `item-link ${extraClass || ""}`.trim(), href: itemHref(id) },
      el("span", { class: "item-name" }, named ? info.name : id),
      named ? el("span", { class: "mono muted item-id" }, id) : null);
  }

  function pageHeader(kicker, title, ...extra) {
    return el("header", { class: "page-header" },
      el("div", { class: "kicker" }, kicker), el("h1", { class: "page-title" }, title), ...extra);
  }

  // ------------------------------------------------------------------ charts

  /** A horizontal signed stacked bar: base + experts, positives right of zero, negatives left.
   *  The SVG stretches to its box (no text inside), so widths stay proportional to values. */
  function contributionBar(exp, colors, scale) {
    const W = 1000;
    const H = 26;
    const span = scale.max - scale.min || 1;
    const x = (v) => ((v - scale.min) / span) * W;
    const zero = x(0);
    const parts = [{ part: "base", name: "base", value: exp.base, color: BASE_COLOR, label: "collaborative base" }];
    for (const e of exp.experts) {
      parts.push({ part: "expert", name: e.name, value: e.contribution, color: colors.get(e.name) || "#999",
        label: `${e.name} (${expertLabel(e)}), routing weight ${fmt(e.weight, 3)}` });
    }
    let pos = 0;
    let neg = 0;
    const rects = parts.map((p) => {
      const v = Number(p.value);
      let from;
      if (v >= 0) { from = pos; pos += v; } else { neg += v; from = neg; }
      const width = Math.abs(x(from + Math.abs(v)) - x(from));
      return svg("rect", {
        class: "seg", x: x(from), y: 3, width, height: H - 6, fill: p.color,
        "data-part": p.part, "data-name": p.name, "data-value": String(p.value),
      }, svg("title", {}, `${p.label}: ${signed(v, 4)}`));
    });
    const scoreX = x(exp.score);
    return svg("svg", {
      class: "bar", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": `score ${fmt(exp.score)}: base ${signed(exp.base)} plus ${exp.experts.length} expert contributions`,
      "data-score": String(exp.score), "data-zero": String(zero),
    },
    svg("rect", { class: "bar-track", x: 0, y: 3, width: W, height: H - 6 }),
    rects,
    svg("line", { class: "bar-zero", x1: zero, x2: zero, y1: 0, y2: H }),
    svg("line", { class: "bar-score", x1: scoreX, x2: scoreX, y1: 0, y2: H, "data-value": String(exp.score) },
      svg("title", {}, `score ${fmt(exp.score, 4)}`)));
  }

  /** Shared axis for contribution bars: tick labels placed at the same relative positions. */
  function barAxis(scale) {
    const span = scale.max - scale.min || 1;
    const step = niceStep(span / 5);
    const ticks = [];
    for (let t = Math.ceil(scale.min / step) * step; t <= scale.max + 1e-12; t += step) ticks.push(t);
    const axis = el("div", { class: "bar-axis", "aria-hidden": "true" });
    for (const t of ticks) {
      const tick = el("span", { class: Math.abs(t) < step / 2 ? "tick tick-zero" : "tick" },
        Math.abs(t) < step / 2 ? "0" : signed(t, decimals(step)));
      tick.style.left = `${((t - scale.min) / span) * 100}%`;
      axis.append(tick);
    }
    return axis;
  }

  function niceStep(raw) {
    const mag = 10 ** Math.floor(Math.log10(raw || 1));
    const n = raw / mag;
    return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag;
  }
  function decimals(step) {
    return Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  }

  /** A 100% stacked strip of shares {name: share} with labels. */
  function shareStrip(shares, colors, what) {
    const entries = Object.entries(shares || {}).sort((a, b) => b[1] - a[1]);
    if (!entries.length) return el("span", { class: "muted" }, `no ${what}`);
    const strip = el("div", { class: "strip", role: "img",
      "aria-label": entries.map(([m, s]) => `${m} ${pct(s)}`).join(", ") });
    for (const [name, share] of entries) {
      const seg = el("span", { class: "strip-seg", title: `${name}: ${pct(share, 1)}`, "data-name": name,
        "data-value": String(share) });
      seg.style.flexGrow = String(share);
      seg.style.background = colors.get(name) || "#999";
      strip.append(seg);
    }
    const legend = el("div", { class: "strip-legend" }, entries.map(([name, share]) => {
      const dot = el("span", { class: "dot" });
      dot.style.background = colors.get(name) || "#999";
      return el("span", { class: "strip-label" }, dot, `${name} ${pct(share)}`);
    }));
    return el("div", { class: "share" }, strip, legend);
  }

  function swatch(color) {
    const s = el("span", { class: "swatch" });
    s.style.background = color;
    return s;
  }

  /** Horizontal bars for values in [0, max]: one row per {label, sub, value, color}. */
  function valueBars(rows, { max = 1, format = (v) => fmt(v, 3), cls = "" } = {}) {
    return el("div", { class: `hbars ${cls}` }, rows.map((r) => {
      const fill = el("span", { class: "hbar-fill" });
      fill.style.width = `${Math.max(0, Math.min(1, r.value / (max || 1))) * 100}%`;
      fill.style.background = r.color;
      return el("div", { class: r.value > 0 ? "hbar" : "hbar hbar-zero", "data-name": r.label, "data-value": String(r.value) },
        el("div", { class: "hbar-label" }, el("span", { class: "hbar-name", title: r.label }, r.label),
          r.sub ? el("span", { class: "muted hbar-sub" }, r.sub) : null),
        el("div", { class: "hbar-track" }, fill),
        el("div", { class: "hbar-value mono" }, format(r.value)));
    }));
  }

  /** Line chart of the routing entropies per epoch, with the stage switch marked. */
  function entropyChart(routing, bestEpoch) {
    const W = 760;
    const H = 260;
    const m = { l: 48, r: 16, t: 44, b: 40 };  // two label rows above the plot
    const epochs = routing.epochs;
    const series = [
      { key: "coverage_entropy", label: "coverage entropy (across items)", color: "#4e79a7" },
      { key: "sample_entropy", label: "per-item entropy", color: "#f28e2b" },
    ].filter((s) => Array.isArray(routing[s.key]) && routing[s.key].length === epochs.length);
    const x0 = Math.min(...epochs, 1);
    const x1 = Math.max(...epochs, x0 + 1);
    const values = series.flatMap((s) => routing[s.key]);
    const yMax = Math.max(1, ...values);
    const px = (e) => m.l + ((e - x0) / (x1 - x0)) * (W - m.l - m.r);
    const py = (v) => H - m.b - (v / yMax) * (H - m.t - m.b);
    const g = [];
    const switchAt = routing.stage_switch_epoch;
    if (switchAt !== null && switchAt !== undefined) {
      const sx = px(Math.min(x1, switchAt + 0.5));
      g.push(svg("rect", { class: "stage2", x: sx, y: m.t, width: Math.max(0, W - m.r - sx), height: H - m.t - m.b }));
      g.push(svg("line", { class: "switch-line", x1: sx, x2: sx, y1: m.t - 36, y2: H - m.b, "data-epoch": String(switchAt) }));
      g.push(svg("text", { class: "chart-note", x: sx + 6, y: m.t - 24 }, `stage 2 from epoch ${switchAt + 1}`));
    }
    if (Number.isFinite(bestEpoch) && bestEpoch >= x0 && bestEpoch <= x1) {
      const bx = px(bestEpoch);
      g.push(svg("line", { class: "best-line", x1: bx, x2: bx, y1: m.t - 20, y2: H - m.b, "data-epoch": String(bestEpoch) }));
      g.push(svg("text", { class: "chart-note chart-note-best", x: bx + 6, y: m.t - 8 }, `best epoch ${bestEpoch} (exported)`));
    }
    for (let v = 0; v <= yMax + 1e-9; v += 0.25) {
      g.push(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: py(v), y2: py(v) }));
      g.push(svg("text", { class: "axis-label", x: m.l - 8, y: py(v) + 4, "text-anchor": "end" }, v.toFixed(2)));
    }
    const step = Math.max(1, niceStep((x1 - x0) / 8));
    for (let e = Math.ceil(x0 / step) * step; e <= x1; e += step) {
      g.push(svg("text", { class: "axis-label", x: px(e), y: H - m.b + 18, "text-anchor": "middle" }, String(e)));
    }
    g.push(svg("text", { class: "axis-title", x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" }, "epoch"));
    for (const s of series) {
      const points = epochs.map((e, n) => `${px(e).toFixed(1)},${py(routing[s.key][n]).toFixed(1)}`).join(" ");
      g.push(svg("polyline", { class: "series", points, stroke: s.color, "data-series": s.key }));
      if (epochs.length <= 40) {
        epochs.forEach((e, n) => g.push(svg("circle", { class: "point", cx: px(e), cy: py(routing[s.key][n]), r: 2.5,
          fill: s.color }, svg("title", {}, `${s.label}, epoch ${e}: ${fmt(routing[s.key][n], 3)}`))));
      }
    }
    const legend = el("div", { class: "chart-legend" }, series.map((s) => el("span", {}, swatch(s.color), s.label)),
      switchAt !== null && switchAt !== undefined ? el("span", {}, el("span", { class: "swatch swatch-stage" }), "stage 2 (routing regularizer on)") : null);
    return el("div", { class: "chart" }, svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "line-chart", role: "img",
      "aria-label": "routing entropy per epoch" }, g), legend);
  }

  // ------------------------------------------------------------------ pages

  async function renderUser(userId) {
    const params = new URLSearchParams(location.search);
    const k = Math.min(1000, Math.max(1, parseInt(params.get("k"), 10) || 10));
    const [model, rec] = await Promise.all([getModel(), api(`/recommend/${enc(userId)}?k=${k}`)]);
    const colors = expertPalette(model.experts);
    const ids = rec.items.map((it) => it.item_id);
    const explainable = rec.fallback !== "popular";
    const [names, explanations] = await Promise.all([
      lookupItems(ids),
      explainable ? Promise.all(ids.map((id) => fetchJSON(`/explain/${enc(userId)}/${enc(id)}`)
        .then((r) => (r.status === 200 ? r.body : null)))) : Promise.resolve(ids.map(() => null)),
    ]);

    const kSelect = el("select", { id: "k-select", "aria-label": "number of recommendations",
      on: { change: (ev) => { location.search = `?k=${ev.target.value}`; } } },
    [...new Set([...K_CHOICES, k])].sort((a, b) => a - b).map((v) => el("option", { value: v, selected: v === k }, `top ${v}`)));

    const badges = el("div", { class: "badges" });
    if (rec.fallback === null || rec.fallback === undefined) badges.append(el("span", { class: "badge badge-ok" }, "trained user"));
    else badges.append(el("span", { class: "badge badge-warn", "data-fallback": rec.fallback }, `fallback: ${rec.fallback}`));

    app.replaceChildren(pageHeader("User", userId, badges,
      el("div", { class: "page-tools" }, el("label", { for: "k-select" }, "Show "), kSelect)));

    if (rec.fallback === "popular") {
      app.append(notice("fallback", `User “${userId}” is not in model ${model.model_version}.`,
        "The service answered with its fallback: the most popular items (",
        el("code", {}, 'fallback: "popular"'),
        "). Without a user vector there is nothing user-specific to explain, so no contribution bars are shown; scores are training interaction counts."));
    } else if (rec.fallback === "history") {
      app.append(notice("fallback", `User “${userId}” was not in training.`,
        "The ranking was folded in from the user's recent history (", el("code", {}, 'fallback: "history"'),
        "); the explanations below are for that folded-in vector."));
    } else if (rec.fallback) {
      app.append(notice("fallback", `Answered by the “${rec.fallback}” fallback.`));
    }

    if (!rec.items.length) {
      app.append(notice("info", "Nothing left to recommend.", "This user has interacted with every item in the catalogue."));
      return;
    }

    const list = el("ol", { class: "recs" });
    const shown = explanations.filter(Boolean);
    let scale = { min: 0, max: 1 };
    if (shown.length) {
      let lo = 0;
      let hi = 0;
      for (const exp of shown) {
        const parts = [exp.base, ...exp.experts.map((e) => e.contribution)];
        hi = Math.max(hi, parts.filter((v) => v > 0).reduce((a, b) => a + b, 0), exp.score);
        lo = Math.min(lo, parts.filter((v) => v < 0).reduce((a, b) => a + b, 0), exp.score);
      }
      const pad = (hi - lo) * 0.02;
      scale = { min: lo < 0 ? lo - pad : 0, max: hi + pad };
    }
    const modalityColors = modalityPalette(shown.flatMap((e) => Object.keys(e.modalities || {})));

    rec.items.forEach((item, n) => {
      const exp = explanations[n];
      const info = names[item.item_id];
      const row = el("li", { class: "rec", "data-item-id": item.item_id });
      const head = el("div", { class: "rec-head" },
        el("span", { class: "rank" }, String(n + 1)),
        itemLink(item.item_id, info),
        exp && exp.cold === true ? el("span", { class: "badge badge-info" }, "cold item") : null,
        el("span", { class: "rec-score mono", title: explainable ? "score e_u · e_i" : "training interactions" },
          explainable ? fmt(item.score, 3) : `${count(item.score)} interactions`));
      row.append(head);
      if (exp) {
        row.append(el("div", { class: "rec-bar" }, contributionBar(exp, colors, scale)));
        const routed = exp.experts.filter((e) => e.weight > 0).sort((a, b) => b.weight - a.weight);
        row.append(el("p", { class: "reason" }, exp.reason || ""));
        row.append(el("div", { class: "rec-facts" },
          el("div", { class: "fact" }, el("span", { class: "fact-label" }, "Modality shares"),
            shareStrip(exp.modalities, modalityColors, "expert signal")),
          el("div", { class: "fact" }, el("span", { class: "fact-label" }, "Routing weights"),
            routed.length ? el("div", { class: "chips" }, routed.map((e) => el("span", { class: "chip", "data-name": e.name,
              "data-weight": String(e.weight), title: expertLabel(e) }, swatch(colors.get(e.name)), e.name, " ",
            el("span", { class: "mono" }, fmt(e.weight, 2))))) : el("span", { class: "muted" }, "not routed to any expert")),
          el("div", { class: "fact fact-parts" }, el("span", { class: "fact-label" }, "Parts"),
            el("span", { class: "mono parts" }, el("span", { class: "part" }, `base ${signed(exp.base)}`),
              routed.map((e) => el("span", { class: "part" }, `${e.name} ${signed(e.contribution)}`))))));
      } else if (explainable) {
        row.append(el("p", { class: "muted reason" }, "No explanation available for this pair."));
      }
      list.append(row);
    });

    const legend = el("div", { class: "legend" },
      el("span", { class: "legend-item" }, swatch(BASE_COLOR), "base (collaborative)"),
      model.experts.map((e) => el("span", { class: "legend-item", title: expertLabel(e) }, swatch(colors.get(e.name)),
        e.name, el("span", { class: "muted" }, ` ${expertLabel(e)}`))));
    const explainNote = shown.length
      ? el("p", { class: "muted small" }, "Each bar splits the score into the collaborative base and each expert's contribution (negative parts to the left of 0); the line marks the score. Data: ",
        el("code", {}, "/recommend"), " and ", el("code", {}, "/explain"), ".")
      : null;
    app.append(card(`Top ${rec.items.length} for ${userId}`, shown.length ? legend : null, explainNote,
      shown.length ? el("div", { class: "rec-axis" }, barAxis(scale)) : null, list));
  }

  /** "text carries 78% ..." or, on a tie, "image and text carry 50% each ...". */
  function modalityLead(shares) {
    const entries = Object.entries(shares || {}).sort((a, b) => b[1] - a[1]);
    if (!entries.length) return el("p", { class: "muted" }, "No routing weight.");
    const top = entries.filter(([, s]) => Math.abs(s - entries[0][1]) < 1e-6).map(([m]) => m);
    const names = top.length === 1 ? [el("strong", {}, top[0])]
      : [top.slice(0, -1).map((m, n) => [n ? ", " : "", el("strong", {}, m)]), " and ", el("strong", {}, top[top.length - 1])];
    const tail = top.length === 1 ? ` carries ${pct(entries[0][1])} of this item's routing weight.`
      : ` carry ${pct(entries[0][1])} each of this item's routing weight.`;
    return el("p", { class: "lead", "data-modality": top.join("+") }, names, tail);
  }

  async function renderItem(itemId) {
    const [model, items] = await Promise.all([getModel(), lookupItems([itemId], true)]);
    const info = items[itemId];
    if (!info) {
      app.replaceChildren(pageHeader("Item", itemId),
        notice("unknown", `No item “${itemId}” in model ${model.model_version}.`,
          "Check the id, or search by id or title in the box above."));
      return;
    }
    const similar = await api(`/similar/${enc(itemId)}?k=10`);
    const simNames = await lookupItems(similar.items.map((it) => it.item_id));
    const colors = expertPalette(model.experts);
    const modColors = modalityPalette(Object.keys(info.modalities || {}));

    app.replaceChildren(pageHeader("Item", itemTitle(info, itemId),
      el("div", { class: "badges" }, info.name ? el("span", { class: "badge mono" }, itemId) : null,
        el("span", { class: "badge" }, `${count(info.popularity)} training interactions`))));

    const grid = el("div", { class: "grid-2 grid-top" });
    if (info.experts && info.experts.length) {
      grid.append(card("Which modality drives it", modalityLead(info.modalities),
        shareStrip(info.modalities, modColors, "routing weight"),
        el("p", { class: "muted small" }, "Each expert's gate goes to the modality it reads (split evenly for balanced and complementary experts), the rule /explain uses for contributions.")));
      const topExpert = info.experts.find((e) => e.name === info.top_expert);
      grid.append(card("Routing over experts",
        topExpert ? el("p", { class: "lead" }, "Routed mostly to ", el("strong", {}, topExpert.name),
          ` (${expertLabel(topExpert)}), gate ${fmt(topExpert.weight, 3)}.`) : null,
        valueBars(info.experts.map((e) => ({ label: e.name, sub: expertLabel(e), value: e.weight, color: colors.get(e.name) })),
          { max: 1, format: (v) => fmt(v, 3), cls: "gates" }),
        el("p", { class: "muted small" }, "Gates g_ie of this item (they do not depend on the user); the routed ones sum to 1.")));
    } else {
      grid.append(card("Routing", el("p", { class: "muted" }, `The ${model.model} model has no modality experts: every item is scored by its collaborative embedding alone.`)));
    }
    app.append(grid);

    const maxScore = Math.max(1e-12, ...similar.items.map((it) => Math.abs(it.score)));
    app.append(card("Similar items", el("p", { class: "muted small" }, "Nearest items by inner product e_i · e_j, from ", el("code", {}, "/similar"), "."),
      similar.items.length ? el("ol", { class: "similar" }, similar.items.map((it) => {
        const fill = el("span", { class: "hbar-fill" });
        fill.style.width = `${(Math.abs(it.score) / maxScore) * 100}%`;
        return el("li", { class: "similar-row", "data-item-id": it.item_id },
          itemLink(it.item_id, simNames[it.item_id]),
          el("span", { class: "hbar-track small-track" }, fill),
          el("span", { class: "mono" }, fmt(it.score, 3)));
      })) : el("p", { class: "muted" }, "No other items.")));
  }

  function cacheCard(cache) {
    const rows = Object.entries(cache.by_kind || {}).map(([kind, c]) => el("tr", {},
      el("td", {}, kind), el("td", { class: "num" }, count(c.hits)), el("td", { class: "num" }, count(c.misses)),
      el("td", { class: "num" }, pct(c.hit_ratio, 1))));
    const refresh = el("button", { class: "button", type: "button", id: "cache-refresh" }, "Refresh");
    const body = el("div", { id: "cache" },
      el("div", { class: "big-number", "data-value": cache.hit_ratio === null ? "" : String(cache.hit_ratio) },
        cache.hit_ratio === null ? "–" : pct(cache.hit_ratio, 1),
        el("span", { class: "big-sub" }, cache.hit_ratio === null ? "hit ratio · no cache lookups yet"
          : `hit ratio · ${count(cache.hits)} hits, ${count(cache.misses)} misses`)),
      el("table", { class: "table" }, el("thead", {}, el("tr", {}, el("th", {}, "kind"), el("th", { class: "num" }, "hits"),
        el("th", { class: "num" }, "misses"), el("th", { class: "num" }, "hit ratio"))), el("tbody", {}, rows)),
      el("p", { class: "muted small" }, `Backend: ${cache.backend}`,
        cache.front_tier_hits !== null && cache.front_tier_hits !== undefined ? ` (in-process front tier answered ${count(cache.front_tier_hits)})` : "",
        `; ${count(cache.errors)} cache errors. Live counters of ${cache.scope || "this process"}, as /metrics reports them.`));
    refresh.addEventListener("click", async () => {
      refresh.disabled = true;
      try {
        modelPromise = null;
        const fresh = await getModel();
        document.getElementById("cache-card").replaceWith(cacheCard(fresh.cache));
      } finally {
        refresh.disabled = false;
      }
    });
    const section = card(null, el("div", { class: "card-head" }, el("h2", { class: "card-title" }, "Cache (live)"), refresh), body);
    section.id = "cache-card";
    return section;
  }

  async function renderModel() {
    const model = await getModel();
    const t = model.training || {};
    app.replaceChildren(pageHeader("Model", model.model_version,
      el("div", { class: "badges" }, el("span", { class: "badge" }, model.model),
        model.dataset ? el("span", { class: "badge" }, `dataset ${model.dataset}`) : null,
        el("span", { class: "badge" }, `${model.index.type || "flat"} index`))));

    const facts = [["Created", model.created_at], ["Users", count(model.n_users)], ["Items", count(model.n_items)],
      ["Dimensions", model.dim], ["Experts", model.experts.length], ["Best epoch", t.best_epoch],
      ["Epochs run", t.epochs_run], ["Seed", t.seed], ["Item titles", model.has_names ? "yes" : "no"]];
    if (model.cold_items !== null && model.cold_items !== undefined) facts.push(["Cold items", count(model.cold_items)]);
    const factList = el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null || v === undefined ? "–" : String(v))]));

    const splits = Object.keys(model.metrics || {});
    const cols = ["recall@20", "ndcg@20", "recall@10", "ndcg@10"];
    const quality = splits.length ? el("table", { class: "table metrics", id: "metrics-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "split"), cols.map((c) => el("th", { class: "num" }, c.replace("recall", "Recall").replace("ndcg", "NDCG"))))),
      el("tbody", {}, splits.map((s) => el("tr", { "data-split": s }, el("td", {}, s),
        cols.map((c) => el("td", { class: "num mono", "data-metric": c }, fmt(model.metrics[s][c], 4)))))))
      : el("p", { class: "muted" }, "This bundle carries no evaluation metrics.");

    const grid = el("div", { class: "grid-2" }, card("Bundle", factList),
      card("Quality (from the bundle)", quality, el("p", { class: "muted small" }, "Full ranking, training items masked (MMRec protocol), as measured by ", el("code", {}, "magnet train"), ".")));
    app.append(grid);

    const routing = model.routing;
    const colors = expertPalette(model.experts);
    const util = routing && Array.isArray(routing.expert_utilization) ? routing.expert_utilization : null;
    const grid2 = el("div", { class: "grid-2" });
    grid2.append(card("Expert utilization", util && util.length === model.experts.length
      ? [valueBars(model.experts.map((e, n) => ({ label: e.name, sub: expertLabel(e), value: util[n], color: colors.get(e.name) })),
        { max: Math.max(...util, 1e-12), format: (v) => pct(v, 1), cls: "utilization" }),
      el("p", { class: "muted small" }, "Share of items whose strongest gate is each expert, at the best epoch.")]
      : el("p", { class: "muted" }, model.experts.length ? "Not recorded in this bundle's metrics." : "This model has no experts.")));
    grid2.append(cacheCard(model.cache));
    app.append(grid2);

    app.append(card("Routing entropy per epoch", routing && Array.isArray(routing.coverage_entropy) && routing.coverage_entropy.length
      ? [entropyChart(routing, t.best_epoch), el("p", { class: "muted small" },
        "Normalized entropies of the routing (1 = spread evenly). The regularizer switches once from stage 1 to stage 2 when coverage stays high; ",
        routing.stage_switch_epoch === null || routing.stage_switch_epoch === undefined ? "this run never switched." : `this run switched after epoch ${routing.stage_switch_epoch}.`)]
      : el("p", { class: "muted" }, "This bundle's metrics have no routing block (a model without experts, or a run that did not record it).")));
  }

  async function renderHome() {
    const model = await getModel();
    const ex = model.examples || { users: [], items: [] };
    app.replaceChildren(pageHeader("Overview", "Why does the model recommend what it does?"),
      el("p", { class: "intro" }, "Every score of the served MAGNET model splits into a collaborative base and the contributions of modality experts. Open a user to see their recommendations taken apart, an item to see how it is routed, or the model for its quality and routing history."));
    const grid = el("div", { class: "grid-3" },
      card("Served model", el("p", { class: "mono break" }, model.model_version),
        el("dl", { class: "facts" }, [["Model", model.model], ["Users", count(model.n_users)], ["Items", count(model.n_items)],
          ["Recall@20 (test)", model.metrics.test ? fmt(model.metrics.test["recall@20"], 4) : "–"]].map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
        el("a", { class: "button", href: url("/ui/model") }, "Model details")),
      card("Users", el("p", { class: "muted small" }, "A few users, with how many items each trained on:"),
        el("ul", { class: "links" }, ex.users.map((u) => el("li", {}, el("a", { href: userHref(u.user_id) },
          el("span", { class: "mono" }, u.user_id)), el("span", { class: "muted small nowrap" }, count(u.interactions)))))),
      card("Most popular items", el("p", { class: "muted small" }, "By training interactions:"),
        el("ul", { class: "links" }, ex.items.map((it) => el("li", {}, itemLink(it.item_id, it),
          el("span", { class: "muted small nowrap" }, count(it.popularity)))))));
    app.append(grid);
  }

  // ------------------------------------------------------------------ search box

  function initSearch() {
    const form = document.getElementById("search");
    const input = document.getElementById("search-input");
    const box = document.getElementById("search-results");
    let timer = null;
    let seq = 0;
    let links = [];
    let active = -1;

    const close = () => { box.hidden = true; active = -1; };
    const highlight = (n) => {
      links.forEach((a, i) => a.classList.toggle("active", i === n));
      active = n;
    };

    async function run(query) {
      const mine = ++seq;
      if (!query.trim()) { close(); return; }
      let result;
      try {
        result = await api(`/ui/api/search?q=${enc(query)}&limit=8`);
      } catch (err) {
        if (mine !== seq) return;
        box.replaceChildren(el("div", { class: "search-empty" }, err.status === 503 ? "No model loaded yet." : `Search failed: ${err.message}`));
        box.hidden = false;
        return;
      }
      if (mine !== seq) return;
      const sections = [];
      if (result.users.length) {
        sections.push(el("div", { class: "search-section" }, "Users"),
          result.users.map((u) => el("a", { class: "search-hit", href: userHref(u), "data-kind": "user" },
            el("span", { class: "mono" }, u))));
      }
      if (result.items.length) {
        sections.push(el("div", { class: "search-section" }, "Items"),
          result.items.map((it) => el("a", { class: "search-hit", href: itemHref(it.item_id), "data-kind": "item" },
            el("span", {}, it.name || it.item_id), it.name ? el("span", { class: "mono muted" }, it.item_id) : null)));
      }
      box.replaceChildren(...(sections.length ? sections.flat() : [el("div", { class: "search-empty" }, `No user or item matches “${query}”.`)]));
      box.dataset.query = query;
      links = [...box.querySelectorAll("a.search-hit")];
      highlight(links.length ? 0 : -1);
      box.hidden = false;
    }

    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => run(input.value), 120);
    });
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "ArrowDown" && links.length) { ev.preventDefault(); highlight((active + 1) % links.length); }
      else if (ev.key === "ArrowUp" && links.length) { ev.preventDefault(); highlight((active - 1 + links.length) % links.length); }
      else if (ev.key === "Escape") close();
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearTimeout(timer);
      if (!links.length || box.hidden) await run(input.value);
      if (links.length) location.href = links[Math.max(active, 0)].href;
    });
    document.addEventListener("click", (ev) => { if (!form.contains(ev.target)) close(); });
  }

  // ------------------------------------------------------------------ router

  const ROUTES = [
    [/^\/ui\/?$/, "home", renderHome],
    [/^\/ui\/model\/?$/, "model", renderModel],
    [/^\/ui\/users\/([^/]+)\/?$/, "user", renderUser],
    [/^\/ui\/items\/([^/]+)\/?$/, "item", renderItem],
  ];

  function showFailure(err) {
    if (err instanceof ApiError && err.status === 503) {
      app.replaceChildren(notice("error", "No model is loaded yet.",
        "The service is up but has not loaded a bundle (see ", el("a", { href: url("/readyz") }, "/readyz"), "). Reload this page once it is ready."));
    } else {
      app.replaceChildren(notice("error", "This page could not be drawn.", err && err.message ? err.message : String(err)));
    }
  }

  async function main() {
    initSearch();
    const path = location.pathname.startsWith(ROOT) ? location.pathname.slice(ROOT.length) : location.pathname;
    const route = ROUTES.find(([re]) => re.test(path));
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("current", route && a.dataset.nav === route[1]));
    try {
      if (!route) {
        app.replaceChildren(notice("unknown", "No such dashboard page.", "Try the ", el("a", { href: url("/ui/") }, "overview"), "."));
      } else {
        const match = path.match(route[0]);
        const arg = match[1] === undefined ? undefined : decodeURIComponent(match[1]);
        document.title = `${arg ? `${arg} · ` : ""}${route[1]} · MAGNET`;
        await route[2](arg);
      }
      getModel().then((m) => {
        document.getElementById("footer").replaceChildren(el("span", {}, "Serving "), el("span", { class: "mono" }, m.model_version),
          el("span", {}, ` · ${m.model} · ${count(m.n_users)} users · ${count(m.n_items)} items`));
      }, () => {});
      setState("ready");
    } catch (err) {
      showFailure(err);
      setState("error");
    }
  }

  main();
})();
