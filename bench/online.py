"""New-user quality of fold-in, measured through the real HTTP API.

Protocol (issue 14): take a dataset directory (default ml100k/mmrec), remove 10% of
its users (a seeded, deterministic choice) from training, train MAGNET on the rest,
then fold each removed user in from their training items through
``POST /recommend/{user_id}`` with ``history`` = those items, on a real server, and
score their test items (training items masked: they are the history, which the
service excludes) by Recall@20 / NDCG@20 (the MMRec protocol). The same users are
scored with the model trained with them (a second training on the full data, same
seed), with popularity, and with every fold-in method (MAGNET_FOLDIN_METHOD). Known users
with fresh items (their validation items as history) are scored with every method of
MAGNET_FOLDIN_KNOWN_METHOD.

    python -m bench.online --work /tmp/online --json OUT.json

Trainings are cached in ``--work`` (a run directory with metrics.json is reused), so
a rerun only serves and scores. One training at a time; OMP_NUM_THREADS=1 is set.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import setup_logging, utc_now, write_json

log = logging.getLogger("bench.online")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "ml100k" / "mmrec"
METHODS = ("mean", "als", "graph")


def held_out_users(n_users: int, fraction: float, seed: int) -> np.ndarray:
    """The removed users' internal ids (sorted): a seeded choice of round(fraction * n)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(fraction * n_users)))
    return np.sort(rng.choice(n_users, size=n, replace=False))


def without_users(data: Path, out: Path, held: np.ndarray) -> None:
    """Writes the dataset at `data` minus the `held` users (all their rows) to `out`;
    items keep their ids, remaining users are renumbered in order."""
    from offline.dataset import Dataset, load_dataset, write_dataset

    ds = load_dataset(data)
    keep = np.setdiff1d(np.arange(ds.n_users), held)
    new_id = np.full(ds.n_users, -1, dtype=np.int64)
    new_id[keep] = np.arange(keep.size)

    def part(pairs: np.ndarray) -> np.ndarray:
        rows = pairs[new_id[pairs[:, 0]] >= 0]
        return np.stack([new_id[rows[:, 0]], rows[:, 1]], axis=1)

    sub = Dataset(name=ds.name, n_users=int(keep.size), n_items=ds.n_items, train=part(ds.train),
                  valid=part(ds.valid), test=part(ds.test), features=ds.features,
                  user_ids=[ds.user_ids[u] for u in keep], item_ids=ds.item_ids)
    write_dataset(sub, out)


def train(data: Path, run: Path, seed: int, extra: list[str]) -> None:
    """`magnet train` (this checkout's code) unless `run` already holds a finished run."""
    if (run / "metrics.json").is_file():
        log.info("reusing %s", run)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "offline", "train", "--data", str(data), "--out", str(run),
           "--seed", str(seed), "--device", "cpu", *extra]
    log.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True, env=env)


def prepare(work: Path, data: Path, fraction: float, seed: int, extra: list[str]) -> dict[str, Any]:
    """The reduced dataset and both runs (reduced first, then full), one training at a time."""
    from offline.dataset import load_dataset

    ds = load_dataset(data)
    held = held_out_users(ds.n_users, fraction, seed)
    reduced = work / "data_reduced"
    if not (reduced / "stats.json").is_file():
        without_users(data, reduced, held)
    train(reduced, work / "run_reduced", seed, extra)
    train(data, work / "run_full", seed, extra)
    return {"dataset": ds, "held": held}


def bundle_of(run: Path, out: Path) -> Path:
    """The run's bundle (exported once, reused)."""
    from offline.export import export_bundle

    if not (out / "manifest.json").is_file():
        export_bundle(run, out)
    return out


def ranking_metrics(ranked: list[str], relevant: set[str], k: int = 20) -> tuple[float, float]:
    """Recall@k and NDCG@k (binary gains, ideal DCG over min(k, |relevant|)): the MMRec protocol."""
    hits = [1.0 if i in relevant else 0.0 for i in ranked[:k]]
    dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
    idcg = sum(1.0 / np.log2(r + 2) for r in range(min(k, len(relevant))))
    return sum(hits) / len(relevant), dcg / idcg


def score(server: Any, requests: list[tuple[str, str, dict | None]], relevant: list[set[str]],
          fallback: str | None | bool = False) -> dict[str, Any]:
    """Sends each (method, path, body) to the real server, scores the answer against `relevant`;
    checks every answer's ``fallback`` when `fallback` is not False."""
    import httpx

    recalls, ndcgs = [], []
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for (method, path, body), rel in zip(requests, relevant):
            r = c.request(method, path, json=body)
            r.raise_for_status()
            answer = r.json()
            if fallback is not False and answer["fallback"] != fallback:
                raise RuntimeError(f"{path}: fallback {answer['fallback']!r}, expected {fallback!r}")
            rec, ndcg = ranking_metrics([it["item_id"] for it in answer["items"]], rel)
            recalls.append(rec)
            ndcgs.append(ndcg)
    return {"recall@20": float(np.mean(recalls)), "ndcg@20": float(np.mean(ndcgs)), "users": len(recalls)}


def evaluate(work: Path, ds: Any, held: np.ndarray, methods: tuple[str, ...]) -> dict[str, Any]:
    """Every row of the comparison, each through its own real server."""
    from bench.serving import _stop, start_server

    train: dict[int, list[str]] = {int(u): [] for u in held}
    test: dict[int, set[str]] = {int(u): set() for u in held}
    for u, i in ds.train:
        if int(u) in train:
            train[int(u)].append(ds.item_ids[i])
    for u, i in ds.test:
        if int(u) in test:
            test[int(u)].add(ds.item_ids[i])
    users = [int(u) for u in held if test[int(u)] and train[int(u)]]
    relevant = [test[u] for u in users]
    reduced = bundle_of(work / "run_reduced", work / "bundle_reduced")
    full = bundle_of(work / "run_full", work / "bundle_full")
    rows: dict[str, Any] = {}

    def serve(name: str, bundle: Path, settings: dict[str, str]) -> Any:
        return start_server(name, bundle, work, settings)

    srv = serve("full", full, {})
    try:  # trained with them: their own vectors, training items masked by the service
        rows["trained (full data)"] = score(srv, [("GET", f"/recommend/{ds.user_ids[u]}?k=20", None) for u in users],
                                            relevant, fallback=None)
    finally:
        _stop(srv.proc)
    for method in methods:
        srv = serve(f"foldin-{method}", reduced, {"MAGNET_FOLDIN_METHOD": method,
                                                  "MAGNET_MAX_HISTORY": "10000", "MAGNET_MAX_EXCLUDE": "10000"})
        try:
            if "popularity" not in rows:  # the popular fallback, the users' training items excluded
                rows["popularity"] = score(srv, [("POST", f"/recommend/{ds.user_ids[u]}",
                                                  {"k": 20, "exclude": train[u]}) for u in users],
                                           relevant, fallback="popular")
            rows[f"fold-in {method}"] = score(srv, [("POST", f"/recommend/{ds.user_ids[u]}",
                                                     {"k": 20, "history": train[u]}) for u in users],
                                              relevant, fallback="history")
        finally:
            _stop(srv.proc)
    trained, pop = rows["trained (full data)"]["recall@20"], rows["popularity"]["recall@20"]
    for name, row in rows.items():
        row["vs_trained"] = row["recall@20"] / trained if trained else None
        row["vs_popularity"] = row["recall@20"] / pop if pop else None
    return rows


def evaluate_known(work: Path, methods: tuple[str, ...]) -> dict[str, Any]:
    """Known users with fresh items: on the reduced model, each trained user's validation items
    (which the model never trained on) are sent as ``history`` and their test items scored, against
    the trained vector alone with the same items excluded (``exclude``). What moving a trained
    vector by f(seen + new) - f(seen) is worth, per method."""
    from offline.dataset import load_dataset

    from bench.serving import _stop, start_server

    ds = load_dataset(work / "data_reduced")
    valid: dict[int, list[str]] = {}
    test: dict[int, set[str]] = {}
    for u, i in ds.valid:
        valid.setdefault(int(u), []).append(ds.item_ids[i])
    for u, i in ds.test:
        test.setdefault(int(u), set()).add(ds.item_ids[i])
    users = [u for u in sorted(test) if u in valid]
    relevant = [test[u] for u in users]
    bundle = bundle_of(work / "run_reduced", work / "bundle_reduced")
    rows: dict[str, Any] = {}
    for method in methods:
        srv = start_server(f"known-{method}", bundle, work, {"MAGNET_FOLDIN_KNOWN_METHOD": method,
                                                             "MAGNET_MAX_HISTORY": "10000"})
        try:
            if "trained vector only" not in rows:
                rows["trained vector only"] = score(srv, [("POST", f"/recommend/{ds.user_ids[u]}",
                                                           {"k": 20, "exclude": valid[u]}) for u in users],
                                                    relevant, fallback=None)
            rows[f"moved by {method}"] = score(srv, [("POST", f"/recommend/{ds.user_ids[u]}",
                                                      {"k": 20, "history": valid[u]}) for u in users],
                                               relevant, fallback=None)
        finally:
            _stop(srv.proc)
    base = rows["trained vector only"]["recall@20"]
    for row in rows.values():
        row["vs_trained"] = row["recall@20"] / base if base else None
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--json", type=Path)
    args, extra = ap.parse_known_args(argv)  # the rest goes to `magnet train` (e.g. --epochs 5)
    setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    prep = prepare(args.work, args.data, args.fraction, args.seed, extra)
    if args.train_only:
        return 0
    methods = tuple(args.methods.split(","))
    rows = evaluate(args.work, prep["dataset"], prep["held"], methods)
    print(f"new users: {'':11} {'R@20':>7} {'N@20':>7} {'users':>5} {'x trained':>9} {'x pop':>6}")
    for name, row in rows.items():
        print(f"{name:22} {row['recall@20']:7.4f} {row['ndcg@20']:7.4f} {row['users']:5d} "
              f"{row['vs_trained']:9.3f} {row['vs_popularity']:6.2f}")
    known = evaluate_known(args.work, methods)
    print(f"known users + validation items as history: {'':2} {'R@20':>7} {'N@20':>7} {'users':>5} {'x alone':>8}")
    for name, row in known.items():
        print(f"{name:45} {row['recall@20']:7.4f} {row['ndcg@20']:7.4f} {row['users']:5d} {row['vs_trained']:8.3f}")
    from service.settings import Settings

    default = f"fold-in {Settings.model_fields['foldin_method'].default}"  # what a server uses unless told
    bars = {name: {"r20_vs_trained>=0.90": rows[name]["vs_trained"] >= 0.90,
                   "r20_vs_popularity>=2": rows[name]["vs_popularity"] >= 2.0}
            for name in rows if name.startswith("fold-in")}
    print(f"bars of the default ({default}): {bars.get(default)}; all: {bars}")
    if args.json:
        write_json({"date": utc_now(), "data": str(args.data), "fraction": args.fraction, "seed": args.seed,
                    "held_out_users": int(len(prep["held"])), "train_args": extra, "rows": rows,
                    "known_users": known, "bars": bars},
                   args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
