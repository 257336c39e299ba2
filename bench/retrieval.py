"""Retrieval scaling: exact `IndexFlatIP` vs approximate FAISS indexes (HNSW, IVF)
vs a numpy matmul + argpartition baseline, for catalogues of 10^3 to 10^6 items
(d = 64, synthetic but recommender-shaped embeddings), inner product throughout.

For each catalogue size it measures build time, recall@10 against the exact index,
and queries/s single-query (one `search` call per query, as the service does) and
batched (one call for `--batch` queries). The approximate indexes' search parameter
(HNSW efSearch, IVF nprobe) is tuned on one query set to the smallest value reaching
`--target-recall` + 0.01, and recall and speed are then measured on a separate set.

Timings come from a shared machine, so every speed is reported as a ratio to exact
`IndexFlatIP` measured in the same run; methods are timed in interleaved rounds and
each keeps its best round. Searches run on `--search-threads` (default 1, as the
service's searcher), builds and ground truth on `--build-threads` (default: all
cores usable by this process).

The service asks FAISS for more than k candidates (k + #seen + 16, see
service/search.py) and raises HNSW's efSearch to that depth, so single-query speed is
also measured at `--serving-depth` candidates (default 50) with efSearch = max(tuned,
depth), exact searching the same depth.

From the measurement it recommends the approximate index (fastest single-query at
the largest size with recall >= target) and `exact_max_items`: catalogues up to that
size stay exact; above it the approximate index is >= `--clear-win` times faster
single-query, at top-10 and at the serving depth, with recall@10 >= target.

    python -m bench.retrieval [--quick] [--json OUT] [--plot docs/bench_retrieval.png]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.common import Timer, best_of_rounds, limit_threads, machine_info, setup_logging, time_per_call, utc_now, write_json

log = logging.getLogger("bench.retrieval")

DIM = 64
K = 10
SIZES_FULL = [1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
SIZES_QUICK = [1_000, 10_000, 100_000]
HNSW_EF = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
HNSW_SWEEP_MIN = 256  # HNSW sweeps continue to here past the tuned value (cheap; shows the trade-off)
TUNE_MARGIN = 0.01
# The service searches `depth = k + #seen + 16` candidates with efSearch = max(ef_search, depth)
# (service/search.py); 50 = top-10 for a user with 24 training items.
SERVING_DEPTH = 50


# ----------------------------------------------------------------------- data


def synthetic_embeddings(n_items: int, n_queries: int, d: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Item and user embeddings shaped like a trained recommender's, not isotropic noise.

    - low-rank-ish: all vectors live mostly in a 16-dim subspace (spectrum 1.0 -> 0.3,
      then 0.08 in the other d-16 directions);
    - clustered: 16 genres, each with sub-topics (about sqrt(n)/2 in all, unevenly
      sized), items scattered around their sub-topic;
    - a direction shared by everything (the popularity bias of BPR-trained models);
    - item norms grow with log-popularity (Zipf ranks) times a little log-normal noise,
      so popular items score high for many users, as in MF/LightGCN;
    - users (queries) mix 1-3 sub-topics with Dirichlet weights, plus the shared
      direction and noise; their norms vary too (irrelevant to their own ranking).
    Returns float32 items [n_items, d] and queries [n_queries, d].
    """
    rng = np.random.default_rng(seed)
    rank = 16
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    spectrum = np.concatenate([np.linspace(1.0, 0.3, rank), np.full(d - rank, 0.08)])

    def shaped(m: int) -> np.ndarray:  # m vectors with the low-rank-ish covariance
        return (rng.normal(size=(m, d)) * spectrum) @ basis.T

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    shared = unit(shaped(1)[0])
    n_genres = 16
    n_topics = max(n_genres, round(math.sqrt(n_items) / 2))
    genres = unit(shaped(n_genres))
    topics = unit(genres[rng.integers(0, n_genres, n_topics)] + 0.6 * unit(shaped(n_topics)))
    topic_p = (np.arange(n_topics) + 1.0) ** -0.5
    topic_p /= topic_p.sum()

    item_topic = rng.choice(n_topics, size=n_items, p=topic_p)
    items = unit(topics[item_topic] + 0.45 * unit(shaped(n_items)) + 0.5 * shared)
    pop_rank = rng.permutation(n_items) + 1.0
    norms = (1.0 + 0.15 * np.log(n_items / pop_rank)) * rng.lognormal(0.0, 0.1, n_items)
    items *= (norms / norms.mean())[:, None]

    n_mix = rng.integers(1, 4, n_queries)
    weights = rng.dirichlet(np.ones(3), n_queries) * (np.arange(3) < n_mix[:, None])
    chosen = rng.choice(n_topics, size=(n_queries, 3), p=topic_p)
    queries = np.einsum("qj,qjd->qd", weights / weights.sum(1, keepdims=True), topics[chosen])
    queries = unit(queries + 0.3 * unit(shaped(n_queries)) + 0.5 * shared)
    queries *= rng.lognormal(0.0, 0.3, n_queries)[:, None]
    return np.ascontiguousarray(items, dtype=np.float32), np.ascontiguousarray(queries, dtype=np.float32)


# -------------------------------------------------------------------- methods


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k (rows are one query's ids)."""
    k = truth.shape[1]
    return float(np.mean([np.intersect1d(f, t).size / k for f, t in zip(found, truth)]))


class NumpySearch:
    """Brute force with BLAS: scores = Q @ X.T, then argpartition + sort of the top k."""

    def __init__(self, items: np.ndarray) -> None:
        self.items = items
        self.chunk = max(1, (1 << 24) // len(items))  # <= 64 MiB of scores at a time

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        scores = self.items @ q[0]
        top = np.argpartition(scores, -k)[-k:]
        return top[np.argsort(-scores[top])]

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        out = np.empty((len(queries), k), dtype=np.int64)
        for s in range(0, len(queries), self.chunk):
            scores = queries[s:s + self.chunk] @ self.items.T
            top = np.argpartition(scores, -k, axis=1)[:, -k:]
            order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
            out[s:s + self.chunk] = np.take_along_axis(top, order, 1)
        return out


@dataclass
class Candidate:
    """An approximate index: a faiss factory string and how its search knob is tuned."""

    name: str
    factory: str  # may contain {nlist}
    knob: str  # "efSearch" or "nprobe"
    ef_construction: int | None = None
    max_n: int | None = None  # skip above this size (slow builds)
    label: str = ""

    def factory_for(self, n: int) -> str:
        return self.factory.format(nlist=ivf_nlist(n))

    def knob_values(self, n: int) -> list[int]:
        if self.knob == "efSearch":
            return HNSW_EF
        nlist = ivf_nlist(n)
        values = [2**i for i in range(int(math.log2(nlist)) + 1)]
        return values + ([nlist] if values[-1] != nlist else [])


def ivf_nlist(n: int) -> int:
    return max(1, round(4 * math.sqrt(n)))


CANDIDATES = [
    Candidate("hnsw32", "HNSW32,Flat", "efSearch", ef_construction=40, label="HNSW32 (efC 40)"),
    Candidate("ivf", "IVF{nlist},Flat", "nprobe", label="IVF 4*sqrt(n),Flat"),
]
EXTRA_FULL = [  # the export's default efConstruction, measured where its build is affordable
    Candidate("hnsw32_efc200", "HNSW32,Flat", "efSearch", ef_construction=200, max_n=100_000,
              label="HNSW32 (efC 200)"),
]


def build_candidate(c: Candidate, items: np.ndarray) -> faiss.Index:
    n = len(items)
    index = faiss.index_factory(items.shape[1], c.factory_for(n), faiss.METRIC_INNER_PRODUCT)
    if c.knob == "efSearch":
        faiss.downcast_index(index).hnsw.efConstruction = c.ef_construction or 40
    else:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.min_points_per_centroid = 1  # small catalogues: no "too few points" warning
        ivf.cp.max_points_per_centroid = 64  # train k-means on <= 64 * nlist points
        index.train(items)
    index.add(items)
    return index


def set_knob(index: faiss.Index, c: Candidate, value: int) -> None:
    if c.knob == "efSearch":
        faiss.downcast_index(index).hnsw.efSearch = value
    else:
        faiss.extract_index_ivf(index).nprobe = value


def tune(index: faiss.Index, c: Candidate, n: int, queries: np.ndarray, truth: np.ndarray, target: float) -> tuple[int, list[dict]]:
    """Smallest knob value whose recall on the tuning queries is >= target + margin
    (the largest value tried when none is); returns it and the sweep."""
    sweep = []
    chosen = None
    for value in c.knob_values(n):
        if chosen is not None and (c.knob != "efSearch" or value > HNSW_SWEEP_MIN):
            break
        set_knob(index, c, value)
        with Timer() as t:
            _, ids = index.search(queries, K)
        rec = recall_at_k(ids, truth)
        sweep.append({c.knob: value, "recall": rec, "us_per_query": 1e6 * t.seconds / len(queries)})
        log.debug("  %s %s=%d recall %.4f", c.name, c.knob, value, rec)
        if chosen is None and rec >= target + TUNE_MARGIN:
            chosen = value
    if chosen is None:
        chosen = sweep[-1][c.knob]
    return chosen, sweep


# ------------------------------------------------------------------- measuring


@dataclass
class Settings:
    sizes: list[int]
    candidates: list[Candidate]
    n_tune: int
    n_eval: int
    batch: int
    rounds: int
    min_time: float
    search_threads: int
    build_threads: int
    target: float
    clear_win: float
    serving_depth: int
    seed: int


def measure_size(n: int, s: Settings) -> list[dict]:
    """All methods at one catalogue size; one row per method."""
    limit_threads(s.build_threads)
    with Timer() as t:
        items, queries = synthetic_embeddings(n, s.n_tune + s.n_eval, seed=s.seed + n)
    log.info("n=%d: data in %.1fs", n, t.seconds)
    q_tune, q_eval = queries[: s.n_tune], queries[s.n_tune:]
    batch = np.ascontiguousarray(q_eval[: s.batch])

    with Timer() as t_flat:
        flat = faiss.IndexFlatIP(DIM)
        flat.add(items)
    _, truth = flat.search(queries, K)
    truth_tune, truth_eval = truth[: s.n_tune], truth[s.n_tune:]
    coverage = np.unique(truth_eval).size / truth_eval.size
    rows: dict[str, dict] = {
        "exact": {"method": "exact", "label": "IndexFlatIP (exact)", "factory": "Flat", "build_s": t_flat.seconds,
                  "recall": 1.0},
    }
    npsearch = NumpySearch(items)
    rows["numpy"] = {"method": "numpy", "label": "numpy matmul+argpartition", "factory": None, "build_s": 0.0,
                     "recall": recall_at_k(npsearch.search(q_eval, K), truth_eval)}

    indexes: dict[str, tuple[faiss.Index, Candidate, int]] = {}
    for c in s.candidates:
        if c.max_n is not None and n > c.max_n:
            continue
        limit_threads(s.build_threads)
        with Timer() as t:
            index = build_candidate(c, items)
        log.info("n=%d: %s built in %.1fs", n, c.name, t.seconds)
        value, sweep = tune(index, c, n, q_tune, truth_tune, s.target)
        set_knob(index, c, value)
        _, ids = index.search(q_eval, K)
        rows[c.name] = {"method": c.name, "label": c.label, "factory": c.factory_for(n), "build_s": t.seconds,
                        "ef_construction": c.ef_construction, "knob": c.knob, "knob_value": value,
                        "tune_recall": next(x["recall"] for x in sweep if x[c.knob] == value), "recall": recall_at_k(ids, truth_eval), "sweep": sweep}
        log.info("n=%d: %s %s=%d recall@10 %.4f (tuning %.4f)", n, c.name, c.knob, value,
                 rows[c.name]["recall"], rows[c.name]["tune_recall"])
        indexes[c.name] = (index, c, value)

    limit_threads(s.search_threads)
    singles = [np.ascontiguousarray(q_eval[i:i + 1]) for i in range(len(q_eval))]
    single_fns = {"exact": lambda i: flat.search(singles[i], K), "numpy": lambda i: npsearch.search_one(singles[i], K)}
    batch_fns = {"exact": lambda: flat.search(batch, K), "numpy": lambda: npsearch.search(batch, K)}
    depth = s.serving_depth
    depth_fns = {"exact": lambda i: flat.search(singles[i], depth)}
    for name, (index, c, value) in indexes.items():
        single_fns[name] = lambda i, index=index: index.search(singles[i], K)
        batch_fns[name] = lambda index=index: index.search(batch, K)
        params = None
        if c.knob == "efSearch":  # as service/search.py: efSearch = max(ef_search, depth)
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(value, depth)
        depth_fns[name] = lambda i, index=index, params=params: index.search(singles[i], depth, params=params)

    single = best_of_rounds(
        {m: (lambda fn=fn: time_per_call(fn, len(singles), min_time=s.min_time, min_calls=5)) for m, fn in single_fns.items()},
        s.rounds,
    )
    batched = best_of_rounds(
        {m: (lambda fn=fn: time_per_call(lambda _: fn(), 1, min_time=s.min_time, min_calls=1) / len(batch))
         for m, fn in batch_fns.items()},
        s.rounds,
    )
    at_depth = best_of_rounds(
        {m: (lambda fn=fn: time_per_call(fn, len(singles), min_time=s.min_time, min_calls=5)) for m, fn in depth_fns.items()},
        s.rounds,
    )
    out = []
    for name, row in rows.items():
        if name in at_depth:
            row["speedup_serving_depth"] = at_depth["exact"] / at_depth[name]
        row.update(
            n=n,
            qps_single=1.0 / single[name],
            qps_batch=1.0 / batched[name],
            speedup_single=single["exact"] / single[name],
            speedup_batch=batched["exact"] / batched[name],
            result_coverage=coverage,
        )
        out.append(row)
    log.info("n=%d: single-query speedup vs exact: %s", n,
             ", ".join(f"{r['method']} {r['speedup_single']:.1f}x" for r in out))
    log.info("n=%d: batched speedup vs exact:      %s", n,
             ", ".join(f"{r['method']} {r['speedup_batch']:.1f}x" for r in out))
    log.info("n=%d: single-query, top-%d (serving depth) speedup vs exact: %s", n, depth,
             ", ".join(f"{r['method']} {r['speedup_serving_depth']:.1f}x" for r in out if "speedup_serving_depth" in r))
    del flat, indexes, npsearch, items, queries
    gc.collect()
    return out


def recommend(rows: list[dict], s: Settings) -> dict[str, Any]:
    """Picks the approximate index and exact_max_items from the measured rows."""
    sizes = sorted({r["n"] for r in rows})
    largest = sizes[-1]
    approx_names = [c.name for c in s.candidates]
    at_largest = [r for r in rows if r["n"] == largest and r["method"] in approx_names]
    ok = [r for r in at_largest if r["recall"] >= s.target]
    best = max(ok or at_largest, key=lambda r: r["speedup_single"])
    by_n = {r["n"]: r for r in rows if r["method"] == best["method"]}

    def threshold(clear_win: float) -> tuple[int, int | None]:
        """(exact_max_items, smallest size from which the approximate index is >= clear_win
        times faster single-query, both at top-k and at the serving depth, with recall >= target,
        at that and every larger measured size)."""
        from_n = None
        for n in reversed(sizes):
            r = by_n[n]
            if (r["recall"] < s.target or r["speedup_single"] < clear_win
                    or r.get("speedup_serving_depth", math.inf) < clear_win):
                break
            from_n = n
        if from_n is None:
            return largest, None
        below = [n for n in sizes if n < from_n]
        return (below[-1] if below else 0), from_n

    exact_max, from_n = threshold(s.clear_win)
    sensitivity = {f"{w:g}x": threshold(w)[0] for w in (2, 3, 5, 10)}
    big = [by_n[n] for n in sizes if n > exact_max] or [by_n[largest]]
    knob_value = max(r["knob_value"] for r in big)
    bar = {
        "n": largest,
        "speedup_single": best["speedup_single"],
        "recall": best["recall"],
        "holds": bool(largest >= 1_000_000 and best["speedup_single"] >= 10 and best["recall"] >= 0.95),
        "checked_at_1e6": largest >= 1_000_000,
    }
    return {
        "approximate": best["method"],
        "factory": best["factory"],
        "ef_construction": best.get("ef_construction"),
        "knob": best["knob"],
        "knob_value": knob_value,
        "exact_max_items": exact_max,
        "approx_wins_clearly_from": from_n,
        "clear_win": s.clear_win,
        "serving_depth": s.serving_depth,
        "exact_max_items_if_clear_win": sensitivity,
        "target_recall": s.target,
        "bar_1e6": bar,
    }


# --------------------------------------------------------------------- output


def table(rows: list[dict], depth: int) -> str:
    """A markdown table of the measured rows."""
    head = ("| n | method | params | build s | recall@10 | single q/s | single x exact | batch q/s | batch x exact "
            f"| top-{depth} single x exact |\n"
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        params = r["factory"] or "-"
        if r.get("knob"):
            params = f"{params}, {r['knob']}={r['knob_value']}"
        lines.append(
            f"| {r['n']:,} | {r['method']} | {params} | {r['build_s']:.2f} | {r['recall']:.3f} | "
            f"{r['qps_single']:,.0f} | {r['speedup_single']:.2f} | {r['qps_batch']:,.0f} | {r['speedup_batch']:.2f} | "
            + (f"{r['speedup_serving_depth']:.2f} |" if "speedup_serving_depth" in r else "- |")
        )
    return "\n".join(lines)


def plot(rows: list[dict], rec: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    depth = rec["serving_depth"]
    labels = {r["method"]: r["label"] for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), sharey=True)
    primary = {"hnsw32", "ivf"}  # labelled above their line; the others below, so labels don't collide
    for ax, key, title in ((axes[0], "speedup_single", "single query (1 search call per query)"),
                           (axes[1], "speedup_batch", f"batched ({rows[0].get('batch', 256)} queries per call)")):
        for m in methods:
            rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["n"])
            xs, ys = [r["n"] for r in rs], [r[key] for r in rs]
            style = "k--" if m == "exact" else "-o"
            (line,) = ax.plot(xs, ys, style, label=labels[m], markersize=4)
            if key == "speedup_single" and any("speedup_serving_depth" in r for r in rs) and m != "exact":
                ax.plot([r["n"] for r in rs], [r["speedup_serving_depth"] for r in rs], ":", color=line.get_color(),
                        lw=1.2, label=f"{labels[m]}, top-{depth} (serving depth)")
            if m != "exact":
                for r in rs:
                    knob = {"efSearch": " ef", "nprobe": " np"}.get(r.get("knob"), "")
                    text = f"{r['recall']:.2f}" + (f"{knob}{r['knob_value']}" if knob else "")
                    ax.annotate(text, (r["n"], r[key]), textcoords="offset points", color=line.get_color(),
                                xytext=(0, 5 if m in primary else -11), ha="center", fontsize=7)
        ax.axhline(10, color="grey", lw=0.8, ls="-.")
        if rec["exact_max_items"]:
            ax.axvline(rec["exact_max_items"], color="tab:red", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalogue size n (items, d=64)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("queries/s relative to exact IndexFlatIP (same run)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=4, frameon=False)
    fig.suptitle(
        "Retrieval top-10, inner product: speed relative to exact (labels: recall@10, efSearch/nprobe); "
        f"dash-dot = 10x, red = exact_max_items {rec['exact_max_items']:,}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes up to 1e5, fewer queries (< 2 min)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    parser.add_argument("--sizes", type=int, nargs="+", help="catalogue sizes (overrides --quick's/the full list)")
    parser.add_argument("--batch", type=int, default=256, help="queries per batched call")
    parser.add_argument("--search-threads", type=int, default=1)
    parser.add_argument("--build-threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--clear-win", type=float, default=3.0,
                        help="single-query speedup over exact at which the approximate index 'wins clearly'")
    parser.add_argument("--serving-depth", type=int, default=SERVING_DEPTH,
                        help="candidates per query the service asks for (k + #seen + 16); HNSW then searches with "
                             "efSearch = max(tuned, depth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-json", type=Path, metavar="RESULT",
                        help="don't measure: print the table and redraw --plot from an earlier --json result")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        print(table(result["rows"], result["settings"]["serving_depth"]))
        if args.plot:
            plot(result["rows"], result["recommendation"], args.plot)
            log.info("wrote %s", args.plot)
        return result

    quick = args.quick
    s = Settings(
        sizes=args.sizes or (SIZES_QUICK if quick else SIZES_FULL),
        candidates=CANDIDATES + ([] if quick else EXTRA_FULL),
        n_tune=300 if quick else 1000,
        n_eval=300 if quick else 1000,
        batch=args.batch,
        rounds=2 if quick else 3,
        min_time=0.15 if quick else 0.4,
        search_threads=args.search_threads,
        build_threads=args.build_threads,
        target=args.target_recall,
        clear_win=args.clear_win,
        serving_depth=args.serving_depth,
        seed=args.seed,
    )
    started = time.time()
    info = machine_info(("numpy", "faiss"))
    log.info("sizes %s, search threads %d, build threads %d, machine: %s, %s cores, load %s",
             s.sizes, s.search_threads, s.build_threads, info["cpu"], info["cores"], info["load_avg_1_5_15"])
    rows = []
    for n in s.sizes:
        for r in measure_size(n, s):
            r["batch"] = s.batch
            rows.append(r)
    rec = recommend(rows, s)
    result = {
        "benchmark": "retrieval",
        "command": "python -m bench.retrieval" + (" --quick" if quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "finished": utc_now(),
        "wall_s": time.time() - started,
        "machine": info,
        "settings": {
            "dim": DIM, "k": K, "sizes": s.sizes, "n_tune_queries": s.n_tune, "n_eval_queries": s.n_eval,
            "batch": s.batch, "rounds": s.rounds, "min_time_s": s.min_time, "search_threads": s.search_threads,
            "build_threads": s.build_threads, "target_recall": s.target, "tune_margin": TUNE_MARGIN,
            "clear_win": s.clear_win, "serving_depth": s.serving_depth, "seed": s.seed,
            "timing": "best of interleaved rounds; speeds are ratios to IndexFlatIP in the same run",
        },
        "rows": rows,
        "recommendation": rec,
    }
    print(table(rows, s.serving_depth))
    bar = rec["bar_1e6"]
    print(
        f"\nrecommended: {rec['factory']} (efConstruction {rec['ef_construction']}), {rec['knob']}={rec['knob_value']}; "
        f"exact_max_items={rec['exact_max_items']:,} "
        + (f"(approximate >= {s.clear_win:g}x faster single-query, top-{K} and top-{s.serving_depth}, with recall "
           f">= {s.target} from n={rec['approx_wins_clearly_from']:,})" if rec["approx_wins_clearly_from"]
           else f"(approximate never >= {s.clear_win:g}x faster at every larger size measured)")
    )
    print("exact_max_items for other 'clear win' ratios: "
          + ", ".join(f"{w}: {v:,}" for w, v in rec["exact_max_items_if_clear_win"].items()))
    print(f"bar at n={bar['n']:,}: {bar['speedup_single']:.1f}x exact single-query, recall@10 {bar['recall']:.3f} -> "
          + ("holds" if bar["holds"] else ("does NOT hold" if bar["checked_at_1e6"] else "not checked (n < 1e6)")))
    print(f"wall time {result['wall_s']:.0f}s")
    if args.json:
        write_json(result, args.json)
        log.info("wrote %s", args.json)
    if args.plot:
        plot(rows, rec, args.plot)
        log.info("wrote %s", args.plot)
    return result


if __name__ == "__main__":
    main()
