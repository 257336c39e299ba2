"""The README's main job, minus the blocking server: demo data -> MAGNET -> bundle."""

import json
import subprocess
import sys

from service.bundle import load_bundle


def test_quickstart_builds_a_verified_magnet_bundle(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "offline", "quickstart", "--workdir", str(tmp_path), "--epochs", "2", "--no-serve"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "curl 'http://127.0.0.1:8000/recommend/" in proc.stdout
    bundle = load_bundle(tmp_path / "bundle")  # verifies every checksum and shape
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["model"] == "magnet" and manifest["n_items"] == 1000
    assert {e["role"] for e in manifest["experts"]} == {"dominant", "balanced", "complementary"}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and "routing" in metrics
    assert metrics["routing"]["epochs"] == [1, 2]  # the x axis of the dashboard's entropy chart
    assert manifest["metrics"]["routing"] == metrics["routing"]  # exported as the run wrote it
    names = bundle.item_names  # the demo carries display names for the dashboard
    assert names is not None and len(names) == 1000 and all(isinstance(n, str) for n in names)
    assert "/ui/" in proc.stdout
    assert bundle is not None
