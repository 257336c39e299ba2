"""Item cold start: MAGNET's content path against content-only baselines, same split.

    OMP_NUM_THREADS=1 python -m bench.cold_start [--seeds 0 1 2] [--json OUT]

Per seed s: 10% of the items that have interactions are held out entirely (chosen by
a generator seeded with s from the sorted item ids, so the choice is deterministic),
with all their interactions. The rest is imported like the README's ml100k command
(`magnet import`, which records the item encoders) and MAGNET is trained on it (seed
s, default settings). The held-out items are then added back with `magnet
add-items` (content only), and every method scores them for every imported user
that has held-out interactions:

- cold R@20 / NDCG@20: ranking among the held-out items only (the usual item
  cold-start protocol; relevant = the user's held-out interactions);
- full R@20: the same relevant items ranked in the whole catalogue (trained + new,
  the user's training items removed): how often a new item reaches the top 20.

Methods (all on the same split, the same users):

- magnet[<c>]: the bundle `magnet add-items` writes, for each way of making the new
  item's collaborative part c (ridge = the default; knn; graph);
- random: uniform random scores;
- content-knn: the user's profile is the mean of the L2-normalised content vectors
  (each modality normalised, concatenated, normalised) of their training items,
  cosine to each item;
- ridge / mlp: a map from the standardized content to the trained item vectors e_i
  (ridge: closed form, penalty on a held-out 20% of the trained items; mlp: one
  hidden layer of 256, MSE, early stopping), applied to the new items, scored with
  MAGNET's user vectors (DeepMusic / DropoutNet-style content regression);
- ridge[lightgcn] / mlp[lightgcn] (unless `--cf-baseline none`): the same maps onto
  the vectors of a LightGCN trained on the same split (seed s, its defaults but a
  patience of 100), scored with LightGCN's user vectors: the pipeline a user without
  MAGNET would assemble (a collaborative model from RecBole / MMRec plus a content
  regression). The plain ridge / mlp above regress MAGNET's own vectors, so they are
  MAGNET's content path without its experts: an ablation as much as a competitor.

Full-catalogue figures for the baselines rank their predicted new-item vectors with
the trained item vectors of the model they regress (content-knn and random rank the
new items only, and have no full-catalogue figure).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

log = logging.getLogger("bench.cold_start")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml100k"
TEXT_COLS = "title,genres,description"
META_COLS = "genres,director,writer,cast,age_rating"
K = 20


# ------------------------------------------------------------------ the split


def hold_out(interactions: pd.DataFrame, item_col: str, share: float, seed: int) -> list[str]:
    """`share` of the item ids that have interactions, drawn with a generator seeded by `seed`
    from the ids in sorted order (integers when all ids are)."""
    ids = pd.Series(interactions[item_col].astype(str).str.strip().unique())
    as_int = bool(ids.str.fullmatch(r"[+-]?\d+").all())
    ids = ids.iloc[np.argsort(ids.astype(np.int64).to_numpy() if as_int else ids.to_numpy(), kind="stable")]
    n = max(1, int(round(share * len(ids))))
    chosen = np.random.default_rng(seed).choice(len(ids), n, replace=False)
    return sorted(ids.iloc[chosen].tolist(), key=lambda v: (int(v) if as_int else v))


def write_split(interactions: Path, items: Path, item_col: str, held: list[str], out: Path) -> dict[str, Path]:
    """interactions without the held-out items; items file without them; the held-out items' rows."""
    out.mkdir(parents=True, exist_ok=True)
    inter = pd.read_csv(interactions, dtype=str, keep_default_na=False)
    table = pd.read_csv(items, dtype=str, keep_default_na=False)
    held_set = set(held)
    in_held = inter[item_col].str.strip().isin(held_set)
    paths = {"train_inter": out / "interactions.csv", "train_items": out / "items.csv",
             "new_items": out / "new_items.csv", "held_inter": out / "held_interactions.csv"}
    inter[~in_held].to_csv(paths["train_inter"], index=False)
    inter[in_held].to_csv(paths["held_inter"], index=False)
    item_held = table[item_col].str.strip().isin(held_set)
    table[~item_held].to_csv(paths["train_items"], index=False)
    table[item_held].to_csv(paths["new_items"], index=False)
    return paths


def _cols(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


def keep_with_content(new_items: Path, enc: Any) -> int:
    """Drops held-out items that have no content in some modality (add-items refuses
    them: nothing to embed them from); returns how many were dropped."""
    from offline.features import item_meta_tokens, item_text

    table = pd.read_csv(new_items, dtype=str, keep_default_na=False)
    ok = np.ones(len(table), dtype=bool)
    if enc.text_cols:
        ok &= np.array([bool(item_text(v)) for v in table[enc.text_cols].itertuples(index=False)], dtype=bool)
    if enc.meta_cols:
        ok &= np.array([bool(item_meta_tokens(enc.meta_cols, v)) for v in table[enc.meta_cols].itertuples(index=False)],
                       dtype=bool)
    if not ok.all():
        table[ok].to_csv(new_items, index=False)
    return int((~ok).sum())


# ------------------------------------------------------------------ metrics


def ranking_metrics(scores: np.ndarray, relevant: list[np.ndarray], k: int = K) -> dict[str, float]:
    """Recall@k and NDCG@k (binary gains, ideal DCG over min(k, |rel|)) averaged over rows."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg = [], []
    for row, rel in zip(top, relevant):
        hits = np.isin(row, rel)
        recall.append(hits.sum() / len(rel))
        ndcg.append((hits * discounts).sum() / discounts[: min(k, len(rel))].sum())
    return {f"recall@{k}": float(np.mean(recall)), f"ndcg@{k}": float(np.mean(ndcg))}


def full_recall(user_emb: np.ndarray, old_items: np.ndarray, new_items: np.ndarray, seen: list[np.ndarray],
                relevant: list[np.ndarray], k: int = K) -> float:
    """Share of each user's relevant new items in their top k over the whole catalogue
    (old items + new ones, the user's training items removed), averaged over users."""
    n_old = old_items.shape[0]
    out = []
    for u, (s, rel) in enumerate(zip(seen, relevant)):
        scores = np.concatenate([old_items @ user_emb[u], new_items @ user_emb[u]])
        scores[s] = -np.inf
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        out.append(np.isin(top - n_old, rel).sum() / len(rel))
    return float(np.mean(out))


# ------------------------------------------------------------------ baselines


def normalised_content(features: dict[str, np.ndarray]) -> np.ndarray:
    """Each modality L2-normalised, concatenated, normalised again."""
    parts = [f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) for _, f in sorted(features.items())]
    x = np.concatenate(parts, axis=1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def standardized(train: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Columns standardized with the trained items' statistics (as MAGNET's encoders do)."""
    a, b = [], []
    for m in sorted(train):
        mean, std = train[m].mean(0), np.maximum(train[m].std(0), 1e-6)
        a.append((train[m] - mean) / std)
        b.append((new[m] - mean) / std)
    return np.concatenate(a, axis=1), np.concatenate(b, axis=1)


def mlp_regression(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, seed: int, hidden: int = 256,
                   epochs: int = 300) -> np.ndarray:
    """One-hidden-layer MLP, MSE, Adam, early stopping on a held-out 10% of the rows."""
    torch.manual_seed(seed)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, len(xt) // 10)
    val, fit = perm[:n_val], perm[n_val:]
    net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(),
                              torch.nn.Linear(hidden, y.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    best, best_state, since = float("inf"), None, 0
    for _ in range(epochs):
        net.train()
        for idx in torch.split(fit[torch.randperm(len(fit))], 128):
            loss = ((net(xt[idx]) - yt[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = float(((net(xt[val]) - yt[val]) ** 2).mean())
        if v < best - 1e-6:
            best, since = v, 0
            best_state = {k: t.clone() for k, t in net.state_dict().items()}
        else:
            since += 1
            if since >= 20:
                break
    assert best_state is not None
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        return net(torch.as_tensor(x_new, dtype=torch.float32)).numpy()


def train_once(data: Path, run: Path, model: str, seed: int, overrides: list[str]) -> None:
    """Trains `model` on `data` into `run` on the CPU (seed, `overrides`), unless `run`
    already holds a finished run (its metrics.json)."""
    from offline.config import load_config
    from offline.train import train

    if not (run / "metrics.json").is_file():
        cfg = load_config(None, ["progress=false", *overrides], model=model, seed=seed, device="cpu")
        train(data, run, cfg, overwrite=True)


def collaborative_vectors(data: Path, run: Path, model: str, seed: int, user_ids: list[str],
                          patience: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors in `user_ids` order, item vectors) of a `model` run trained on
    `data` with its defaults but a patience of `patience` epochs (reused when `run`
    already holds one). The longer patience keeps the baseline fair: at the default 20
    LightGCN's validation curve stalls early and two of three seeds stopped at epoch
    ~14 with test R@20 0.13 against 0.18 at a patience of 100."""
    train_once(data, run, model, seed, [f"patience={patience}"])
    arrays = run / "arrays"
    row = {u: i for i, u in enumerate(json.loads((arrays / "user_ids.json").read_text()))}
    user = np.load(arrays / "user_emb.npy", allow_pickle=False)[[row[u] for u in user_ids]]
    return user, np.load(arrays / "item_emb.npy", allow_pickle=False).astype(np.float64)


# ------------------------------------------------------------------ one seed


def run_seed(seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from model.magnet.cold import ridge_apply, ridge_fit
    from offline.add_items import add_items
    from offline.dataset import load_dataset
    from offline.importer import import_dataset
    from offline.item_encoders import ItemEncoders, encode_items
    from service.bundle import load_bundle

    started = time.perf_counter()
    root = work / f"seed{seed}"
    raw_inter = pd.read_csv(args.interactions, dtype=str, keep_default_na=False)
    held = hold_out(raw_inter, args.item_col, args.holdout, seed)
    paths = write_split(args.interactions, args.items, args.item_col, held, root / "csv")
    data = root / "data"
    if not (data / "encoders" / "encoders.json").is_file():
        import_dataset(paths["train_inter"], paths["train_items"], user_col=args.user_col, item_col=args.item_col,
                       time_col=args.time_col, text_cols=_cols(args.text_cols), meta_cols=_cols(args.meta_cols),
                       kcore=5, name="cold", out=data)
    ds = load_dataset(data)
    no_content = keep_with_content(paths["new_items"], ItemEncoders.read(data))
    run = root / "run"
    train_once(data, run, "magnet", seed, args.set)
    warm = json.loads((run / "metrics.json").read_text())

    result: dict[str, Any] = {"seed": seed, "held_out_items": len(held), "held_out_without_content": no_content,
                              "trained_items": ds.n_items,
                              "users": ds.n_users, "warm_test": warm["test"], "methods": {}}
    add_seconds: dict[str, float] = {}
    bundles = {}
    for c in args.collaborative:
        t0 = time.perf_counter()
        add_items(run, paths["new_items"], root / f"bundle-{c}", collaborative=c)
        add_seconds[c] = time.perf_counter() - t0
        bundles[c] = load_bundle(root / f"bundle-{c}")
    ref = bundles[args.collaborative[0]]
    n_old = ds.n_items
    new_ids = list(ref.item_ids[n_old:])
    new_col = {item: j for j, item in enumerate(new_ids)}
    user_row = {u: i for i, u in enumerate(ref.user_ids)}

    held_inter = pd.read_csv(paths["held_inter"], dtype=str, keep_default_na=False)
    rel: dict[int, set[int]] = {}
    for u, i in zip(held_inter[args.user_col].str.strip(), held_inter[args.item_col].str.strip()):
        if u in user_row and i in new_col:
            rel.setdefault(user_row[u], set()).add(new_col[i])
    users = np.array(sorted(rel))
    relevant = [np.array(sorted(rel[u])) for u in users]
    seen = [ref.seen(u) for u in users]
    result.update(eval_users=len(users), new_items=len(new_ids), add_items_seconds=add_seconds)

    def record(name: str, user_emb: np.ndarray | None, new_emb: np.ndarray | None,
               scores: np.ndarray | None = None, old_items: np.ndarray | None = None) -> None:
        if scores is None:
            scores = user_emb[users] @ new_emb.T
        m = ranking_metrics(scores, relevant)
        if user_emb is not None and new_emb is not None:
            old = ref.item_emb[:n_old] if old_items is None else old_items
            m["full_recall@20"] = full_recall(user_emb[users], old, new_emb, seen, relevant)
        result["methods"][name] = m
        log.info("seed %d %-16s %s", seed, name, {k: round(v, 4) for k, v in m.items()})

    for c, b in bundles.items():
        record(f"magnet[{c}]", b.user_emb, b.item_emb[n_old:])
        norms = np.linalg.norm(b.item_base, axis=1)
        result.setdefault("base_norm", {})[c] = {"new": float(norms[n_old:].mean()), "trained": float(norms[:n_old].mean())}

    rng = np.random.default_rng(seed)
    record("random", None, None, scores=rng.random((len(users), len(new_ids))))

    new_raw = pd.read_csv(paths["new_items"], dtype=str, keep_default_na=False)
    new_raw.index = new_raw[args.item_col].str.strip()
    new_feats = encode_items(data, new_raw.loc[new_ids])
    content_old, content_new = normalised_content(ds.features), normalised_content(new_feats)
    train_m = ds.train_matrix()
    profile = np.asarray(train_m[users] @ content_old) / np.maximum(np.asarray(train_m[users].sum(1)), 1)
    profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    record("content-knn", None, None, scores=profile @ content_new.T)

    x_old, x_new = standardized(ds.features, new_feats)
    item_emb = ref.item_emb[:n_old]
    w, alpha = ridge_fit(torch.as_tensor(x_old), torch.as_tensor(np.array(item_emb)))
    record("ridge", ref.user_emb, ridge_apply(w, torch.as_tensor(x_new)).numpy())
    result["ridge_alpha"] = alpha
    record("mlp", ref.user_emb, mlp_regression(x_old, item_emb, x_new, seed))
    if args.cf_baseline != "none":
        cf_user, cf_item = collaborative_vectors(data, root / f"run-{args.cf_baseline}", args.cf_baseline, seed,
                                                 list(ref.user_ids))
        w, _ = ridge_fit(torch.as_tensor(x_old), torch.as_tensor(cf_item))
        record(f"ridge[{args.cf_baseline}]", cf_user, ridge_apply(w, torch.as_tensor(x_new)).numpy(),
               old_items=cf_item)
        record(f"mlp[{args.cf_baseline}]", cf_user, mlp_regression(x_old, cf_item, x_new, seed), old_items=cf_item)
    result["seconds"] = time.perf_counter() - started
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """mean ± std over seeds per method and metric."""
    out: dict[str, dict[str, str]] = {}
    for name in results[0]["methods"]:
        out[name] = {}
        for metric in results[0]["methods"][name]:
            vals = np.array([r["methods"][name][metric] for r in results])
            out[name][metric] = f"{vals.mean():.4f} ± {vals.std():.4f} ({' / '.join(f'{v:.4f}' for v in vals)})"
    return out


def main(argv: list[str] | None = None) -> None:
    from bench.common import machine_info, setup_logging, utc_now, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", type=Path, default=SHARED / "interactions.csv")
    parser.add_argument("--items", type=Path, default=SHARED / "items.csv")
    parser.add_argument("--user-col", default="user_id")
    parser.add_argument("--item-col", default="item_id")
    parser.add_argument("--time-col", default="timestamp")
    parser.add_argument("--text-cols", default=TEXT_COLS)
    parser.add_argument("--meta-cols", default=META_COLS)
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--collaborative", nargs="+", default=["ridge", "knn", "graph"],
                        help="add-items --collaborative variants (the first is the reference bundle)")
    parser.add_argument("--set", nargs="*", default=[], help="training overrides (key=value)")
    parser.add_argument("--cf-baseline", default="lightgcn", choices=["lightgcn", "none"],
                        help="also regress content onto this collaborative model's vectors (trained per seed)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "magnet-cold-start",
                        help="datasets, runs and bundles per seed (reused when present)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    results = [run_seed(s, args, args.work) for s in args.seeds]
    report = {"started": utc_now(), "machine": machine_info(("numpy", "torch")), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "seeds": results,
        "summary": summarize(results)}
    print(json.dumps(report["summary"], indent=1, ensure_ascii=False))
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
