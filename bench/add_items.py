"""`magnet add-items` at scale: 10,000 new items on the CPU, wall time and peak memory.

    OMP_NUM_THREADS=1 python -m bench.add_items [--new 10000] [--json OUT]

A synthetic catalogue (titles, genres and tags from planted topics; 2,000 trained
items, 1,000 users, about 30,000 interactions) is imported with `magnet import`
(text through the bundled all-MiniLM-L6-v2, meta through TF-IDF + SVD) and MAGNET is
trained for a few epochs (quality is not the point). Then, each in its own
subprocess so peak RSS is that command's alone:

- `magnet export` of the run (the baseline, measured in the same run);
- `magnet add-items` of `--new` new items (text encoding included).

Reported: wall seconds and peak RSS of both, the ratio add-items / export, and
add-items' own split of its time (read, encode, model rebuild, content path, write).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.add_items")
WORDS = ["river", "night", "city", "war", "love", "robot", "island", "king", "winter", "song", "ghost", "road",
         "storm", "garden", "mirror", "train", "doctor", "secret", "sun", "wolf"]


def catalogue(n_items: int, first_id: int, rng: np.random.Generator) -> list[str]:
    """CSV lines `item_id,title,genres,tags` with topic-driven words."""
    lines = []
    for i in range(first_id, first_id + n_items):
        topic = rng.integers(20)
        words = rng.choice(WORDS, 3, replace=False)
        title = f"The {words[0]} of {words[1]} {i}"
        genres = "|".join(f"g{(topic + j) % 18}" for j in range(rng.integers(1, 4)))
        tags = "|".join(f"t{t}" for t in rng.choice(400, 4, replace=False) + topic * 3)
        lines.append(f"{i},{title} about a {words[2]},{genres},{tags}")
    return lines


#: runs the magnet CLI in this process and reports its own peak RSS (KiB) on the last stderr line
_RUN_CLI = (
    "import resource, runpy, sys\n"
    "sys.argv = ['magnet', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('offline', run_name='__main__')\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "else:\n"
    "    code = 0\n"
    "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def measured(args: list[str]) -> dict[str, float]:
    """Wall seconds and peak RSS (MB) of one magnet command in its own process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUN_CLI, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {lines[-2] if len(lines) > 1 else proc.stderr}")
    peak = int(lines[-1].split()[-1])
    out: dict[str, float] = {"seconds": wall, "peak_rss_mb": peak / 1024}
    summary = [ast.literal_eval(line.split("add-items: ", 1)[1]) for line in lines if "add-items: {" in line]
    if summary:
        out["parts_s"] = summary[0]["parts_s"]
    return out


def main(argv: list[str] | None = None) -> None:
    from bench.common import machine_info, setup_logging, utc_now, write_json
    from offline.config import load_config
    from offline.importer import import_dataset
    from offline.train import train

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-add-items-") as tmp:
        root = Path(tmp)
        header = "item_id,title,genres,tags\n"
        (root / "items.csv").write_text(header + "\n".join(catalogue(args.items, 0, rng)) + "\n")
        (root / "new.csv").write_text(header + "\n".join(catalogue(args.new, 10**6, rng)) + "\n")
        rows = []
        for u in range(args.users):
            for t, i in enumerate(rng.choice(args.items, 30, replace=False)):
                rows.append(f"{u},{i},{t}")
        (root / "inter.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
        import_dataset(root / "inter.csv", root / "items.csv", text_cols=["title", "genres"],
                       meta_cols=["genres", "tags"], name="synthetic", out=root / "data")
        cfg = load_config(None, ["progress=false"], model="magnet", epochs=args.epochs, seed=0, device="cpu")
        train(root / "data", root / "run", cfg)
        export = measured(["export", "--run", str(root / "run"), "--out", str(root / "bundle-export")])
        added = measured(["add-items", "--run", str(root / "run"), "--items", str(root / "new.csv"),
                          "--out", str(root / "bundle-add")])
    report = {"started": utc_now(), "machine": machine_info(("numpy", "torch", "faiss")),
              "trained_items": args.items, "users": args.users, "new_items": args.new,
              "export": export, "add_items": added, "add_items_over_export": added["seconds"] / export["seconds"]}
    print(json.dumps(report, indent=1))
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
