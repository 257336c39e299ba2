"""deploy/compose_run.py: the compose file's settings as `docker build` / `docker run` arguments.

deploy/smoke.sh runs the images with these arguments where compose v2 is missing, so what
they carry must be what the compose file says: every environment entry, the volumes, the
healthcheck, the restart policy, the command; host networking with the service names on
loopback. The smoke check itself needs a Docker engine and runs from .ci/run.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "compose_run.py"
COMPOSE = REPO / "deploy" / "docker-compose.yml"

sys.path.insert(0, str(REPO / "deploy"))
import compose_run  # noqa: E402


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def cli(*args: str, env: dict[str, str] | None = None) -> list[str]:
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env or {})
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\0")
    return r.stdout.split("\0")[:-1]


def options(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert compose_run.interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET} $$HOME", env) == "x d  d  $HOME"
    assert compose_run.interpolate(["${SET}", {"k": "${UNSET:-v}"}, 3], env) == ["x", {"k": "v"}, 3]


def test_api_run_arguments_carry_the_compose_settings() -> None:
    env = {"API_PORT": "18001", "REDIS_PORT": "16380", "MAGNET_ADMIN_TOKEN": "t0k"}
    args = cli("run", "api", "--project", "proj", "--env", "MAGNET_HOST=127.0.0.1", env=env)
    api = compose()["services"]["api"]
    assert args[args.index("--network") + 1] == "host"
    assert set(options(args, "--add-host")) == {f"{name}:127.0.0.1" for name in compose()["services"]}
    got = dict(e.split("=", 1) for e in options(args, "--env"))
    want = {k: compose_run.interpolate(str(v), env) for k, v in api["environment"].items()}
    assert {k: got[k] for k in want} == want
    assert got["MAGNET_PORT"] == "18001" and got["MAGNET_REDIS_URL"] == "redis://redis:16380/0"
    assert got["MAGNET_ADMIN_TOKEN"] == "t0k" and got["MAGNET_HOST"] == "127.0.0.1"
    assert options(args, "--volume") == ["proj_bundles:/bundles:ro"]
    assert options(args, "--restart") == [api["restart"]]
    assert options(args, "--health-interval") == [api["healthcheck"]["interval"]]
    assert shlex.split(options(args, "--health-cmd")[0]) == api["healthcheck"]["test"][1:]
    assert options(args, "--name") == ["proj-api"]
    assert args[-1] == api["image"]  # the image's own CMD


def test_redis_and_trainer_commands_and_volumes(tmp_path: Path) -> None:
    env = {"REDIS_PORT": "16381", "API_PORT": "18002", "HOST_DATA_DIR": str(tmp_path), "TRAIN_EPOCHS": "2"}
    redis = cli("run", "redis", "--project", "p", "--", "--bind", "127.0.0.1", env=env)
    image = compose()["services"]["redis"]["image"]
    command = redis[redis.index(image) + 1:]
    assert command[:3] == ["redis-server", "--port", "16381"]
    assert command[command.index("--save") + 1] == "" and command[-2:] == ["--bind", "127.0.0.1"]
    assert shlex.split(options(redis, "--health-cmd")[0]) == ["redis-cli", "-p", "16381", "ping"]

    trainer = cli("run", "trainer", "--project", "p", env=env)
    assert options(trainer, "--entrypoint") == ["magnet-train-and-reload"]
    assert trainer[-1] == "magnet-train:cpu"
    assert sorted(options(trainer, "--volume")) == sorted(["p_bundles:/bundles", f"{tmp_path}:/data:ro"])
    got = dict(e.split("=", 1) for e in options(trainer, "--env"))
    assert got["RELOAD_HOST"] == "api" and got["RELOAD_PORT"] == "18002" and got["TRAIN_EPOCHS"] == "2"


def test_relative_bind_mounts_resolve_against_the_compose_folder() -> None:
    args = cli("run", "trainer", env={})
    assert f"{(REPO / 'data').resolve()}:/data:ro" in options(args, "--volume")


def test_build_arguments_point_the_base_argument_at_the_given_image() -> None:
    api = cli("build", "api", "--base", "magnet-base:test")
    assert api[:6] == ["--network", "host", "--tag", "magnet-serving:latest", "--file", str(REPO / "Dockerfile")]
    assert "PYTHON_IMAGE=magnet-base:test" in options(api, "--build-arg") and api[-1] == str(REPO)
    redis = cli("build", "redis", "--base", "magnet-base:test")
    assert options(redis, "--build-arg") == ["BASE_IMAGE=magnet-base:test"]
    assert redis[-1] == str(REPO / "deploy")
    train = cli("build", "trainer", "--base", "b", "--build-arg", "TORCH_INDEX_URL=http://127.0.0.1:1/")
    built = dict(a.split("=", 1) for a in options(train, "--build-arg"))
    assert built == {"TORCH_INDEX_URL": "http://127.0.0.1:1/", "FAISS_GPU_PACKAGE": "", "PYTHON_IMAGE": "b"}


def test_untranslatable_settings_are_errors_not_dropped(tmp_path: Path) -> None:
    doc = compose()
    doc["services"]["api"]["cap_add"] = ["NET_ADMIN"]
    bad = tmp_path / "compose.yml"
    bad.write_text(yaml.safe_dump(doc))
    r = subprocess.run([sys.executable, str(SCRIPT), "--file", str(bad), "run", "api"], capture_output=True, text=True)
    assert r.returncode == 1 and "cap_add" in r.stderr
    r = subprocess.run([sys.executable, str(SCRIPT), "run", "nope"], capture_output=True, text=True)
    assert r.returncode == 1 and "no service 'nope'" in r.stderr


@pytest.mark.parametrize("service", ["redis", "api", "trainer"])
def test_every_service_the_smoke_check_runs_translates(service: str) -> None:
    assert cli("run", service, env={})
