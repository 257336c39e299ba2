"""The serve-only install (the API image): service/ needs no torch and no training code.

requirements/serve.txt is what the API image installs (with the package --no-deps);
requirements/train.txt is what the full install adds. Checked here without building an
image (deploy/smoke.sh builds it and checks `import torch` fails inside):
- every third-party module service/ imports comes from a serve requirement;
- with the training requirements' modules (torch, torch_geometric, sentence_transformers,
  pandas, ...) and the torch-using packages (model/, offline.train) made unimportable,
  `magnet serve` still serves a bundle over HTTP and reports a bad bundle in one line.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import packages_distributions
from pathlib import Path

from service.server import free_port

REPO = Path(__file__).resolve().parents[1]
SERVE = REPO / "requirements" / "serve.txt"
TRAIN = REPO / "requirements" / "train.txt"


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\[<>=!~ ;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def modules_of(distributions: set[str]) -> set[str]:
    """Top-level modules the installed `distributions` provide."""
    return {module for module, dists in packages_distributions().items()
            if any(d.lower().replace("_", "-") in distributions for d in dists)}


def imported_top_level(package: Path) -> set[str]:
    names = set()
    for file in package.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_requirements_split_is_the_full_install() -> None:
    serve, train = requirement_names(SERVE), requirement_names(TRAIN)
    assert not serve & train, "a requirement is listed twice"
    assert "torch" in train and "torch" not in serve
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'file = ["requirements/serve.txt", "requirements/train.txt"]' in pyproject


def test_service_imports_only_serve_requirements() -> None:
    third_party = imported_top_level(REPO / "service") - set(sys.stdlib_module_names) - {"service", "__future__"}
    assert "model" not in third_party and "offline" not in third_party, "service/ must not import training code"
    serve_modules = modules_of(requirement_names(SERVE))
    # starlette arrives with fastapi; both are the serving stack
    serve_modules |= modules_of({"starlette"})
    missing = third_party - serve_modules
    assert not missing, f"service/ imports {sorted(missing)}, not provided by requirements/serve.txt"


BLOCKER = r"""
import runpy, sys
blocked = set(sys.argv[1].split(","))
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked or name in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in the serve install)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ["magnet", *sys.argv[2:]]
runpy.run_module("offline", run_name="__main__")
"""


def _blocked() -> str:
    train_only = modules_of(requirement_names(TRAIN)) - modules_of(requirement_names(SERVE))
    assert {"torch", "torch_geometric", "sentence_transformers", "pandas"} <= train_only
    return ",".join(sorted(train_only | {"model", "offline.train", "offline.config", "offline.dataset"}))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGNET_")}
    env.update(PYTHONPATH=str(REPO), MAGNET_ACCESS_LOG="false", MAGNET_LOG_JSON="false")
    return env


def test_magnet_serve_runs_without_the_training_dependencies(bundle_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BLOCKER, _blocked(), "serve", "--bundle", str(bundle_dir),
                             "--host", "127.0.0.1", "--port", str(port)], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"magnet serve exited: {proc.stdout.read()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    ready = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "magnet serve never became ready"
                time.sleep(0.2)
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        assert ready["model_version"] == manifest["model_version"]
        user = json.loads((bundle_dir / "user_ids.json").read_text())[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/recommend/{user}?k=3", timeout=10) as r:
            assert len(json.loads(r.read())["items"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_magnet_serve_reports_a_bad_bundle_in_one_line_without_torch(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", BLOCKER, _blocked(), "serve", "--bundle", str(tmp_path / "nope")],
                       env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "not a bundle directory" in r.stderr, r.stderr
    # a training command says what is missing, in one line, instead of a traceback
    r = subprocess.run([sys.executable, "-c", BLOCKER, _blocked(), "train", "--data", str(tmp_path), "--out",
                        str(tmp_path / "run")], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "No module named" in r.stderr, r.stderr
