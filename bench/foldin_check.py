"""Validation checks of the fold-in choice, in-process over bench.online's work directories.

Two checks that do not touch the test rows the bar is scored on (docs/benchmarks.md,
"Online fold-in"):

* held-out: the users bench.online removed, folded in from their training items with
  the reduced model, scored on their *validation* items;
* as-new: the reduced model's own trained users folded in from their training items as
  if they were new, scored on their validation items; the graph map is fitted on one
  half of these users and scored on the other (two folds), so it is out of sample.

    python -m bench.foldin_check --work /tmp/online-bench-s0 /tmp/online-bench-s1 /tmp/online-bench-s2

Each work directory must hold a finished bench.online run (data_reduced, bundle_reduced).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import setup_logging, write_json
from bench.online import DEFAULT_DATA, held_out_users

K = 20
ALS = ((1.0, 1.0), (10.0, 1.0), (1.0, 5.0), (10.0, 10.0))  # (reg, alpha)
GRAPH_REG = (0.0003, 0.001, 0.01, 0.1)  # the graph map's ridges compared by default (--graph-reg)


def recall(item_emb: np.ndarray, vectors: np.ndarray, train: list[list[int]], relevant: list[set[int]]) -> float:
    """Mean Recall@K of each vector's ranking, its training items masked."""
    scores = vectors.astype(np.float32) @ item_emb.T
    out = []
    for row, (seen, rel) in enumerate(zip(train, relevant)):
        s = scores[row]
        s[seen] = -np.inf
        top = np.argpartition(-s, K)[:K]
        out.append(len(set(top.tolist()) & rel) / len(rel))
    return float(np.mean(out))


def methods(bundle: Any, graph_reg: tuple[float, ...] = GRAPH_REG) -> dict[str, Any]:
    """name -> FoldIn for every variant compared."""
    from service.foldin import FoldIn

    out: dict[str, Any] = {"mean": FoldIn(bundle, method="mean")}
    for reg in graph_reg:
        out[f"graph reg {reg:g}"] = FoldIn(bundle, method="graph", graph_reg=reg)
    for reg, alpha in ALS:
        out[f"als reg {reg:g} alpha {alpha:g}"] = FoldIn(bundle, method="als", als_reg=reg, als_alpha=alpha)
    return out


def held_out_check(work: Path, data: Path, seed: int, fraction: float,
                   graph_reg: tuple[float, ...] = GRAPH_REG) -> dict[str, float]:
    """The removed users, folded in from their training items, on their validation items."""
    from offline.dataset import load_dataset
    from service.bundle import load_bundle

    ds = load_dataset(data)
    bundle = load_bundle(work / "bundle_reduced")
    index = {item: n for n, item in enumerate(bundle.item_ids)}
    held = {int(u) for u in held_out_users(ds.n_users, fraction, seed)}
    train: dict[int, list[int]] = {u: [] for u in held}
    valid: dict[int, set[int]] = {u: set() for u in held}
    for u, i in ds.train:
        if int(u) in train:
            train[int(u)].append(index[ds.item_ids[i]])
    for u, i in ds.valid:
        if int(u) in valid:
            valid[int(u)].add(index[ds.item_ids[i]])
    users = [u for u in sorted(held) if train[u] and valid[u]]
    seen, rel = [train[u] for u in users], [valid[u] for u in users]
    return {name: recall(bundle.item_emb, np.stack([f.vector(np.array(s)) for s in seen]), seen, rel)
            for name, f in methods(bundle, graph_reg).items()}


def as_new_check(work: Path, seed: int, graph_reg: tuple[float, ...] = GRAPH_REG) -> dict[str, float]:
    """The reduced model's trained users folded in as if new; the graph map fitted out of fold."""
    from offline.dataset import load_dataset
    from service.bundle import load_bundle

    ds = load_dataset(work / "data_reduced")
    bundle = load_bundle(work / "bundle_reduced")
    train: list[list[int]] = [[] for _ in range(ds.n_users)]
    valid: list[set[int]] = [set() for _ in range(ds.n_users)]
    for u, i in ds.train:
        train[u].append(int(i))
    for u, i in ds.valid:
        valid[u].add(int(i))
    users = np.array([u for u in range(ds.n_users) if train[u] and valid[u]])
    perm = np.random.default_rng(seed).permutation(users)
    folds = (np.sort(perm[::2]), np.sort(perm[1::2]))
    out: dict[str, float] = {"trained vectors": recall(bundle.item_emb, bundle.user_emb[users],
                                                        [train[u] for u in users], [valid[u] for u in users])}
    variants = methods(bundle, graph_reg)
    for name, f in variants.items():
        if f.method != "graph":
            vecs = np.stack([f.vector(np.array(train[u])) for u in users])
            out[name] = recall(bundle.item_emb, vecs, [train[u] for u in users], [valid[u] for u in users])
    # graph: the map fitted on one fold's users, applied to the other's
    graph = variants[f"graph reg {graph_reg[0]:g}"]
    agg = {int(u): graph.aggregate(np.unique(train[u])) for u in users}
    for reg in graph_reg:
        hits: list[float] = []
        for fit, score in ((0, 1), (1, 0)):
            x = np.stack([agg[int(u)] for u in folds[fit]])
            y = bundle.user_emb[folds[fit]].astype(np.float64)
            w = np.linalg.solve(x.T @ x + reg * len(x) * np.eye(bundle.dim), x.T @ y)
            ev = folds[score]
            r = recall(bundle.item_emb, np.stack([agg[int(u)] for u in ev]) @ w,
                       [train[u] for u in ev], [valid[u] for u in ev])
            hits.append(r * len(ev))
        out[f"graph reg {reg:g}"] = float(sum(hits) / len(users))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, nargs="+", required=True,
                        help="bench.online work directories, in the order of --seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="their seeds (default 0, 1, ...)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--graph-reg", type=float, nargs="+", default=list(GRAPH_REG),
                        help="ridges of the graph map to compare (default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    seeds = args.seeds or list(range(len(args.work)))
    if len(seeds) != len(args.work):
        parser.error("give one seed per work directory")
    missing = [str(w) for w in args.work if not (w / "bundle_reduced").is_dir()]
    if missing:
        parser.error(f"not a finished bench.online work directory: {', '.join(missing)}")
    regs = tuple(args.graph_reg)
    results = {"held_out_valid": [held_out_check(w, args.data, s, args.fraction, regs) for w, s in zip(args.work, seeds)],
               "as_new_valid": [as_new_check(w, s, regs) for w, s in zip(args.work, seeds)]}
    for check, rows in results.items():
        print(f"{check} (Recall@{K}; seeds {' / '.join(map(str, seeds))}; mean)")
        for name in rows[0]:
            values = [r[name] for r in rows]
            print(f"  {name:28} {' / '.join(f'{v:.4f}' for v in values)}   {np.mean(values):.4f}")
    if args.json:
        write_json({"seeds": seeds, **results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
