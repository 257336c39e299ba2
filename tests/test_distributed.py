"""Two data-parallel processes (torch.distributed, gloo on the CPU) train like one
process at the same effective batch size."""

import json
import subprocess
import sys

import pytest

from offline.dataset import write_dataset
from offline.synthetic import SyntheticSpec, generate


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "data"
    write_dataset(generate(SyntheticSpec(n_users=120, n_items=150, seed=3)).dataset, out)
    return out


def _train(data, out, nproc):
    cmd = [
        sys.executable, "-m", "offline", "train", "--data", str(data), "--out", str(out),
        "--model", "lightgcn", "--epochs", "3", "--seed", "0", "--nproc", str(nproc),
        "--set", "batch_size=256", "--set", "progress=false", "--set", "lr=0.01",
        # MMRec's embedding-norm regularizer is not additive over shards (a norm, not a
        # squared norm), so it is switched off here to compare the data-parallel maths alone.
        "--set", "lightgcn.reg_weight=0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_process_gloo_matches_one_process(small_data, tmp_path):
    one = _train(small_data, tmp_path / "one", 1)
    two = _train(small_data, tmp_path / "two", 2)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["epochs_run"] == one["epochs_run"] == 3
    # Same effective batch, averaged gradients: the same model up to float summation order.
    for split in ("valid", "test"):
        for key in ("recall@20", "ndcg@20"):
            assert two[split][key] == pytest.approx(one[split][key], abs=0.01), (split, key)


def _monitor_rank(rank: int, store_path: str, out_path: str) -> None:
    """One rank of a gloo group: observes its own shard's entropies for two epochs."""
    import torch.distributed as dist

    from model.magnet.regularizer import RoutingMonitor
    from offline.distributed import sum_over_ranks

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    monitor = RoutingMonitor(threshold=0.9, window=2, ramp_epochs=1)
    results = []
    for epoch in (1, 2):
        # rank 0 alone would see 0.95 (above the threshold), rank 1 alone 0.80 (below),
        # with 3 batches against 1: the global mean is (3 * 0.95 + 0.80) / 4 = 0.9125.
        for _ in range(3 if rank == 0 else 1):
            monitor.observe(0.95 if rank == 0 else 0.80, 0.5 + rank * 0.1)
        results.append(monitor.end_epoch(epoch, sum_over_ranks))  # what the trainer passes in
    dist.destroy_process_group()
    with open(out_path, "w") as f:
        json.dump(results, f)


def test_routing_monitor_decides_on_the_mean_over_all_ranks(tmp_path):
    import torch.multiprocessing as mp

    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_monitor_rank, args=(r, str(tmp_path / "store"), str(outs[r]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    ranks = [json.loads(o.read_text()) for o in outs]
    assert ranks[0] == ranks[1]  # one decision for the whole group
    first, second = ranks[0]
    assert first["coverage_entropy"] == pytest.approx(0.9125)
    assert first["sample_entropy"] == pytest.approx((3 * 0.5 + 0.6) / 4)
    # 0.9125 > 0.9 in both epochs: the window of 2 fills and the stage switches at epoch 2,
    # although rank 1's own shard never crossed the threshold.
    assert (first["stage_switch_epoch"], second["stage_switch_epoch"]) == (None, 2)
