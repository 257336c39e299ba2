"""`magnet quickstart`: the demo end to end on a fresh machine, no other service needed."""

from __future__ import annotations

import logging
from pathlib import Path

from offline.config import load_config
from offline.dataset import write_dataset
from offline.synthetic import SyntheticSpec, generate
from offline.train import train
from service.item_files import ITEM_NAMES

log = logging.getLogger(__name__)

DEMO_SPEC = SyntheticSpec(n_users=800, n_items=1000, seed=7)


def run_quickstart(workdir: Path, *, epochs: int = 30, host: str = "127.0.0.1", port: int = 8000, serve: bool = True) -> Path:
    """Generates the demo dataset, trains MAGNET briefly, exports and (optionally) serves.

    Returns the bundle path. Re-running replaces the previous demo in ``workdir``.
    """
    from offline.export import export_bundle

    data_dir, run_dir, bundle_dir = workdir / "data", workdir / "run", workdir / "bundle"
    synth = generate(DEMO_SPEC, name="demo")
    write_dataset(synth.dataset, data_dir, item_files={ITEM_NAMES: synth.item_names})
    log.info("demo dataset: %d users, %d items, %d interactions -> %s",
             synth.dataset.n_users, synth.dataset.n_items, len(synth.interactions), data_dir)
    cfg = load_config(None, None, model="magnet", epochs=epochs, patience=10, seed=0)
    metrics = train(data_dir, run_dir, cfg, overwrite=True, dataset=synth.dataset)
    log.info("trained MAGNET: test recall@20 %.4f (best epoch %d)", metrics["test"]["recall@20"], metrics["best_epoch"])
    export_bundle(run_dir, bundle_dir)  # replaces a previous demo bundle atomically
    user = synth.dataset.user_ids[0]
    item = synth.dataset.item_ids[int(synth.dataset.test[synth.dataset.test[:, 0] == 0][0, 1])] if len(synth.dataset.test) else synth.dataset.item_ids[0]
    base = f"http://{host}:{port}"
    print(f"\nbundle ready: {bundle_dir}\ntry:\n  curl '{base}/recommend/{user}?k=5'\n  curl '{base}/explain/{user}/{item}'\n"
          f"dashboard: {base}/ui/ (e.g. {base}/ui/users/{user})\n", flush=True)
    if serve:
        from service.server import serve as run_server

        run_server(bundle_dir, host=host, port=port)
    return bundle_dir
