"""The `magnet` CLI end to end, and its one-line errors on bad input (no tracebacks)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from offline.dataset import write_dataset
from offline.synthetic import SyntheticSpec, generate


def magnet(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "offline", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, fragment):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err
    assert fragment.lower() in last.lower(), last


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "data"
    write_dataset(generate(SyntheticSpec(n_users=80, n_items=100, seed=1)).dataset, out)
    return out


def test_help_lists_every_command():
    proc = magnet("--help")
    assert proc.returncode == 0
    for cmd in ("import", "train", "evaluate", "export", "serve", "quickstart"):
        assert cmd in proc.stdout


def test_train_evaluate_export_round_trip(data_dir, tmp_path):
    run = tmp_path / "run"
    proc = magnet("train", "--data", data_dir, "--out", run, "--model", "popularity")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "popularity" and set(metrics["test"]) >= {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    proc = magnet("evaluate", "--run", run, "--split", "test")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["recall@20"] == pytest.approx(metrics["test"]["recall@20"], abs=1e-6)
    proc = magnet("export", "--run", run, "--out", tmp_path / "bundle")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    # A finished run is never overwritten silently.
    proc = magnet("train", "--data", data_dir, "--out", run, "--model", "popularity")
    assert_one_line_error(proc, "already exists")


def test_missing_data_dir(tmp_path):
    assert_one_line_error(magnet("train", "--data", tmp_path / "nope", "--out", tmp_path / "r"), "nope")


def test_unknown_model(data_dir, tmp_path):
    assert_one_line_error(magnet("train", "--data", data_dir, "--out", tmp_path / "r", "--model", "bpr"), "unknown model")


def test_bad_setting(data_dir, tmp_path):
    assert_one_line_error(magnet("train", "--data", data_dir, "--out", tmp_path / "r", "--set", "lr=-1"), "lr")


def test_nan_features_rejected(data_dir, tmp_path):
    bad = tmp_path / "bad"
    ds = generate(SyntheticSpec(n_users=80, n_items=100, seed=1)).dataset
    ds.features["text"][5, 3] = np.nan
    # write_dataset may refuse NaN itself; otherwise loading must.
    try:
        write_dataset(ds, bad)
    except ValueError as exc:
        assert "nan" in str(exc).lower()
        return
    assert_one_line_error(magnet("train", "--data", bad, "--out", tmp_path / "r"), "text_feat.npy")
    assert not (tmp_path / "r").exists()


def test_import_missing_file_and_column(tmp_path):
    assert_one_line_error(
        magnet("import", "--interactions", tmp_path / "none.csv", "--name", "x", "--out", tmp_path / "o"), "none.csv"
    )
    csv = tmp_path / "i.csv"
    csv.write_text("user,item_id,timestamp\n1,2,3\n")
    assert_one_line_error(magnet("import", "--interactions", csv, "--name", "x", "--out", tmp_path / "o"), "user_id")
    assert not (tmp_path / "o").exists()


def test_evaluate_and_export_need_a_run(tmp_path):
    assert_one_line_error(magnet("evaluate", "--run", tmp_path), "run")
    assert_one_line_error(magnet("export", "--run", tmp_path, "--out", tmp_path / "b"), "")
