"""Training cost: seconds per epoch and peak memory of MAGNET and LightGCN as the
number of interactions grows (synthetic, 10^4 to 10^6), and on ml100k.

Each (model, size) runs in its own subprocess so peak RSS is that run's alone.
The bar is a ratio measured in the same run: MAGNET s/epoch / LightGCN s/epoch; with
--interleave N it is the median over N interleaved epoch pairs in one process.

    python -m bench.training [--quick] [--interleave N] [--json OUT] [--plot docs/bench_training.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.training")
ML100K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml100k" / "mmrec"
MODELS = ("lightgcn", "magnet")


def synthetic_dataset(n_interactions: int, seed: int = 0):
    """A planted-topic dataset of about n_interactions rows, generated in bulk
    (the test generator loops per user and is too slow at 10^6)."""
    from offline.dataset import Dataset

    rng = np.random.default_rng(seed)
    n_users = max(50, n_interactions // 25)
    n_items = max(50, n_interactions // 40)
    n_topics = 16
    item_topic = rng.integers(0, n_topics, n_items)
    popularity = (rng.permutation(n_items) + 1.0) ** -0.8
    users = rng.integers(0, n_users, n_interactions)
    user_topic = rng.integers(0, n_topics, n_users)
    pools = [np.flatnonzero(item_topic == t) for t in range(n_topics)]
    probs = [popularity[p] / popularity[p].sum() for p in pools]
    items = np.empty(n_interactions, dtype=np.int64)
    on_topic = rng.random(n_interactions) < 0.8
    for t in range(n_topics):
        rows = np.flatnonzero(on_topic & (user_topic[users] == t))
        items[rows] = rng.choice(pools[t], size=len(rows), p=probs[t])
    rest = np.flatnonzero(~on_topic)
    items[rest] = rng.choice(n_items, size=len(rest), p=popularity / popularity.sum())
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    feats = {
        "text": (np.eye(n_topics)[item_topic] @ rng.normal(size=(n_topics, 64)) + rng.normal(scale=0.5, size=(n_items, 64))).astype(np.float32),
        "image": rng.normal(size=(n_items, 128)).astype(np.float32),
    }
    holdout = rng.random(len(pairs)) < 0.1
    return Dataset(
        name=f"synthetic-{n_interactions}",
        n_users=n_users,
        n_items=n_items,
        train=pairs[~holdout],
        valid=pairs[holdout][:1000],
        test=pairs[holdout][1000:2000],
        features=feats,
        user_ids=[str(u) for u in range(n_users)],
        item_ids=[str(i) for i in range(n_items)],
    )


def _setup(model_name: str, size: str):
    """Dataset and the trainer of one (model, size), after one warm-up epoch, plus
    `epoch(n)`: one training epoch and its end-of-epoch work, as `magnet train` runs it."""
    import torch

    from model import build
    from offline.config import load_config
    from offline.train import Trainer, seed_everything

    ds = load_dataset_for(size)
    cfg = load_config(None, [], model=model_name, progress=False)
    seed_everything(0)
    t0 = time.perf_counter()
    model = build(model_name, ds.n_users, ds.n_items, ds.train, ds.features, cfg.model_section())
    setup_s = time.perf_counter() - t0
    trainer = Trainer(model, ds, cfg, torch.device("cpu"))

    def epoch(n: int) -> None:
        trainer.train_epoch(n)

    epoch(0)
    return ds, setup_s, epoch


def measure_one(model_name: str, size: str, epochs: int) -> dict:
    """Times `epochs` training epochs (after one warm-up epoch) in this process."""
    ds, setup_s, epoch = _setup(model_name, size)
    times = []
    for n in range(1, epochs + 1):
        t = time.perf_counter()
        epoch(n)
        times.append(time.perf_counter() - t)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model_name,
        "size": size,
        "n_train": int(len(ds.train)),
        "n_users": ds.n_users,
        "n_items": ds.n_items,
        "setup_s": setup_s,
        "s_per_epoch": float(np.median(times)),
        "peak_rss_mb": peak_mb,
    }


def _ms(fn, reps: int = 20) -> float:
    """Median milliseconds of fn() over reps calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def component_times(size: str = "ml100k") -> dict[str, float]:
    """Forward + backward milliseconds of each part of one training step at each
    model's default batch and negatives, MAGNET's parts timed in isolation (leaf
    inputs), next to LightGCN's whole step; with the trainer's kernel settings."""
    from offline.train import without_onednn

    with without_onednn():
        return _component_times(size)


def _component_times(size: str) -> dict[str, float]:
    import torch

    from model import build
    from model.magnet.model import Representations
    from model.ops import pair_scores
    from offline.config import load_config

    ds = load_dataset_for(size)
    out: dict[str, float] = {}
    for name in MODELS:
        cfg = load_config(None, [], model=name, progress=False)
        model = build(name, ds.n_users, ds.n_items, ds.train, ds.features, cfg.model_section())
        batch = cfg.train_batch_size(len(ds.train))
        rng = np.random.default_rng(0)
        rows = rng.integers(0, len(ds.train), batch)
        users, pos = torch.as_tensor(ds.train[rows, 0]), torch.as_tensor(ds.train[rows, 1])
        neg = torch.as_tensor(rng.integers(0, ds.n_items, (batch, model.n_negatives)))
        neg = neg[:, 0] if model.n_negatives == 1 else neg
        model.train()
        out[f"{name}: whole step (loss, backward), batch {batch}"] = _ms(
            lambda: model.loss(users, pos, neg)[0].backward())
        out[f"{name}: steps per epoch"] = float(-(-len(ds.train) // batch))
    m = model  # MAGNET
    adj, bip, parts = m.graphs(True)
    x = torch.cat([m.user_emb, m.item_emb]).detach().requires_grad_()
    out["magnet: interaction view"] = _ms(lambda: m.interaction(x, adj).sum().backward())
    if m.augmented is not None:
        out["magnet: content-augmented view"] = _ms(lambda: m.augmented(x, bip, parts, m.n_users).sum().backward())
    out["magnet: modality encoder (all items, user means)"] = _ms(
        lambda: sum(t.sum() for group in m.modality_reps() for t in group).backward())
    r = m.representations(True)
    leaf = Representations(*(
        [t.detach().requires_grad_() for t in v] if isinstance(v, list) else v.detach().requires_grad_()
        for v in (r.c_u, r.c_i, r.p_u, r.p_i, r.ref)
    ))
    uu, ii = torch.unique(users), torch.unique(torch.cat([pos, neg.reshape(-1)]))
    out[f"magnet: experts + routers, {len(uu)} users + {len(ii)} items (one sparse pass)"] = _ms(
        lambda: sum(side.emb.sum() for side in m.mix_batch(leaf, uu, ii)).backward())
    e_u, e_i = leaf.c_u[uu].detach().requires_grad_(), leaf.c_i[ii].detach().requires_grad_()
    inv_u = torch.searchsorted(uu, users)
    cols = torch.searchsorted(ii, torch.cat([pos[:, None], neg], 1))
    out[f"magnet: batch scores, {cols.numel()} pairs"] = _ms(
        lambda: pair_scores(e_u, e_i, inv_u, cols).sum().backward())
    out["magnet: training-graph resample (once per epoch)"] = _ms(m.resample_training_graph, reps=3)
    return out


def load_dataset_for(size: str):
    """ml100k from ../shared, or a synthetic dataset of about `size` interactions."""
    from offline.dataset import load_dataset

    return load_dataset(ML100K) if size == "ml100k" else synthetic_dataset(int(size))


def profile_one(model_name: str, size: str, rows: int = 25) -> str:
    """The torch profiler's table (self CPU time) for one training epoch, after a
    warm-up epoch: what dominates the epoch."""
    from torch.profiler import ProfilerActivity, profile

    _, _, epoch = _setup(model_name, size)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        epoch(1)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def measure_interleaved(size: str, pairs: int) -> dict:
    """Both models set up in this process, then `pairs` rounds of one LightGCN epoch
    followed by one MAGNET epoch: each ratio compares epochs a second apart, so the
    drift of a shared machine (which moved separate runs' ratio between 2.0x and 3.0x
    within minutes) mostly cancels. The ratio is the median of the pairs' ratios."""
    epochs = {m: _setup(m, size)[2] for m in MODELS}
    times: dict[str, list[float]] = {m: [] for m in MODELS}
    for n in range(1, pairs + 1):
        for m in MODELS:
            t = time.perf_counter()
            epochs[m](n)
            times[m].append(time.perf_counter() - t)
    per_pair = [mg / lg for lg, mg in zip(times["lightgcn"], times["magnet"])]
    return {"size": size, "times": times, "per_pair": per_pair, "ratio": float(np.median(per_pair))}


def _subprocess_json(args: list[str], what: str) -> dict | None:
    proc = subprocess.run([sys.executable, "-m", "bench.training", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        log.error("%s failed: %s", what, proc.stderr.strip().splitlines()[-1:])
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(sizes: list[str], epochs: int, interleave: int = 0) -> tuple[list[dict], dict[str, dict]]:
    """Per size, each model in its own process (s/epoch, peak RSS); the MAGNET /
    LightGCN ratio comes from those, or with `interleave` > 0 from that many
    interleaved epoch pairs in a further process (`measure_interleaved`)."""
    rows: list[dict] = []
    ratios: dict[str, dict] = {}
    for size in sizes:
        got = {}
        for m in MODELS:
            row = _subprocess_json(["--one", m, size, "--epochs", str(epochs)], f"{m} at {size}")
            if row is not None:
                log.info("%-8s %-8s %.3f s/epoch, peak %.0f MB", m, size, row["s_per_epoch"], row["peak_rss_mb"])
                rows.append(row)
                got[m] = row
        if interleave > 0:
            pair = _subprocess_json(["--pair", size, "--epochs", str(interleave)], f"interleaved pairs at {size}")
            if pair is not None:
                log.info("interleaved %-8s %.2fx (per pair %s)", size, pair["ratio"],
                         ", ".join(f"{r:.2f}" for r in pair["per_pair"]))
                ratios[size] = {"ratio": pair["ratio"], "method": f"median of {interleave} interleaved epoch pairs",
                                "per_pair": pair["per_pair"], "times": pair["times"]}
        elif len(got) == len(MODELS):
            ratios[size] = {"ratio": got["magnet"]["s_per_epoch"] / got["lightgcn"]["s_per_epoch"],
                            "method": "separate runs' median s/epoch"}
    return rows, ratios


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for model_name in MODELS:
        pts = sorted((r["n_train"], r["s_per_epoch"], r["peak_rss_mb"]) for r in rows if r["model"] == model_name and r["size"] != "ml100k")
        if pts:
            axes[0].loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=model_name)
            axes[1].semilogx([p[0] for p in pts], [p[2] for p in pts], "o-", label=model_name)
    axes[0].set(title="seconds per epoch", xlabel="training interactions")
    axes[1].set(title="peak RSS (MB)", xlabel="training interactions")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10^4 and 10^5 only, one timed epoch (< 2 minutes)")
    parser.add_argument("--json", type=Path, help="write results as JSON")
    parser.add_argument("--plot", type=Path, help="write a PNG plot")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per run")
    parser.add_argument("--interleave", type=int, default=0, metavar="N",
                        help="also run N interleaved (LightGCN epoch, MAGNET epoch) pairs in one process per size; "
                        "the ratio is then the median of the pairs' ratios (robust to a shared machine's drift)")
    parser.add_argument("--sizes", help="comma-separated sizes to run instead (interaction counts and/or ml100k)")
    parser.add_argument("--profile", nargs=2, metavar=("MODEL", "SIZE"), help="per-part step times, then the profiler table of one epoch of MODEL")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--pair", metavar="SIZE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        for part, ms in component_times(args.profile[1]).items():
            print(f"{part:60s} {ms:8.2f}" + ("" if "steps" in part else " ms"))
        print(profile_one(args.profile[0], args.profile[1]))
        return
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1], args.epochs or 2)))
        return
    if args.pair:
        print(json.dumps(measure_interleaved(args.pair, args.epochs or 5)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = ["10000", "100000"] if args.quick else ["10000", "100000", "1000000"]
    if args.sizes:
        sizes = [s.strip() for s in args.sizes.split(",") if s.strip() and s.strip() != "ml100k"]
    if ML100K.exists() and (not args.sizes or "ml100k" in args.sizes.split(",")):
        sizes.append("ml100k")
    elif not ML100K.exists():
        log.warning("%s not found: skipping the ml100k row (it needs ../shared beside the repo)", ML100K)
    epochs = args.epochs or (1 if args.quick else 3)
    started = time.time()
    rows, ratios = run_all(sizes, epochs, args.interleave)
    result = {
        "benchmark": "training",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "cpus": __import__("os").cpu_count(),
        "epochs_timed": epochs,
        "rows": rows,
        "interleaved_pairs": args.interleave,
        "magnet_over_lightgcn": {size: r["ratio"] for size, r in ratios.items()},
        "ratio_detail": ratios,
        "wall_s": time.time() - started,
    }
    print(f"{'model':9s} {'size':>8s} {'train rows':>10s} {'s/epoch':>8s} {'peak MB':>8s}")
    for r in rows:
        print(f"{r['model']:9s} {r['size']:>8s} {r['n_train']:>10d} {r['s_per_epoch']:>8.3f} {r['peak_rss_mb']:>8.0f}")
    for size, r in ratios.items():
        pairs = " (per pair: " + ", ".join(f"{x:.2f}" for x in r["per_pair"]) + ")" if "per_pair" in r else ""
        print(f"MAGNET / LightGCN s/epoch at {size}: {r['ratio']:.2f}x, {r['method']}{pairs}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
