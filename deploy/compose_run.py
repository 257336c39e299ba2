#!/usr/bin/env python3
"""`docker build` / `docker run` arguments for one service of deploy/docker-compose.yml.

For machines without compose v2 (Debian ships compose v1, which rejects the file's
top-level `name:` and builds without BuildKit): deploy/smoke.sh runs the compose services
with plain `docker` from the compose file's own settings, read here rather than restated.

    python3 deploy/compose_run.py build api --base magnet-base:bookworm [--build-arg K=V ...]
    python3 deploy/compose_run.py run api --project magnet-smoke [--env K=V ...] [-- extra command args]

Prints the arguments (after `docker build` / `docker run`) NUL-separated, for
`mapfile -d ''`. Values are interpolated as compose does (`${VAR}`, `${VAR:-default}`,
`${VAR-default}`, `$$`) from this process' environment.

Containers get host networking (`--network host`): every compose service name resolves to
127.0.0.1 (`--add-host`), so `redis://redis:...` and `RELOAD_HOST=api` work unchanged, and a
service listens on its own port on the host (the compose file's API_PORT / REDIS_PORT);
`ports:` mappings have no meaning there and are dropped. Named volumes become
`<project>_<name>`, relative bind mounts are resolved against the compose file's folder.
A service key this script does not translate is an error, never silently dropped.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

COMPOSE = Path(__file__).resolve().parent / "docker-compose.yml"
# keys with no `docker run` counterpart: the caller handles them (build: the `build`
# subcommand, depends_on: start order) or they mean nothing on the host network (ports)
NOT_RUN_OPTIONS = {"build", "profiles", "depends_on", "ports", "deploy"}
BASE_IMAGE_ARGS = ("PYTHON_IMAGE", "BASE_IMAGE")  # the Dockerfiles' base-image build arguments
VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\})")


class ComposeError(ValueError):
    """A compose setting this script cannot turn into docker arguments."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose variable substitution on strings (recursively in lists and dicts)."""
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return VARIABLE.sub(sub, value)


def load(path: Path = COMPOSE) -> dict[str, Any]:
    import yaml  # PyYAML resolves the file's anchors and `<<:` merge keys

    with path.open() as fh:
        return yaml.safe_load(fh)


def service(doc: dict[str, Any], name: str, env: dict[str, str]) -> dict[str, Any]:
    if name not in doc.get("services", {}):
        raise ComposeError(f"no service {name!r} in the compose file (it has {', '.join(doc['services'])})")
    return interpolate(doc["services"][name], env)


def _dockerfile_args(dockerfile: Path) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", dockerfile.read_text(), re.M)}


def build_args(doc: dict[str, Any], name: str, env: dict[str, str], base: str | None,
               extra: list[str], compose_dir: Path) -> list[str]:
    """`docker build` arguments: the service's image tag, Dockerfile, args and context;
    `base` goes to whichever base-image argument the Dockerfile declares."""
    svc = service(doc, name, env)
    build = svc.get("build")
    if build is None:
        raise ComposeError(f"service {name!r} has no build section")
    if isinstance(build, str):
        build = {"context": build}
    context = (compose_dir / build.get("context", ".")).resolve()
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    args = dict(build.get("args") or {})
    if base:
        declared = _dockerfile_args(dockerfile)
        for arg in BASE_IMAGE_ARGS:
            if arg in declared:
                args[arg] = base
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise ComposeError(f"--build-arg needs KEY=VALUE, got {item!r}")
        args[key] = value
    out = ["--network", "host", "--tag", svc["image"], "--file", str(dockerfile)]
    for key, value in args.items():
        out += ["--build-arg", f"{key}={'' if value is None else value}"]
    return out + [str(context)]


def _health(check: dict[str, Any]) -> list[str]:
    if check.get("disable"):
        return ["--no-healthcheck"]
    test = check["test"]
    if isinstance(test, str):
        cmd = test
    elif test[0] == "CMD":
        cmd = shlex.join(test[1:])  # docker run's --health-cmd is a shell command
    elif test[0] == "CMD-SHELL":
        cmd = test[1]
    elif test[0] == "NONE":
        return ["--no-healthcheck"]
    else:
        raise ComposeError(f"healthcheck test {test!r} is not CMD, CMD-SHELL or NONE")
    out = ["--health-cmd", cmd]
    for key, flag in (("interval", "--health-interval"), ("timeout", "--health-timeout"),
                      ("start_period", "--health-start-period"), ("retries", "--health-retries")):
        if key in check:
            out += [flag, str(check[key])]
    return out


def _environment(env: Any) -> dict[str, str | None]:
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in (env or {}).items()}


def _volume(spec: Any, project: str, named: set[str], compose_dir: Path) -> str:
    if not isinstance(spec, str):
        raise ComposeError(f"only the short volume syntax is translated, got {spec!r}")
    source, _, rest = spec.partition(":")
    if not rest:
        raise ComposeError(f"anonymous volume {spec!r} is not translated")
    if source in named:
        source = f"{project}_{source}"
    elif not source.startswith("/"):
        source = str((compose_dir / source).resolve())
    return f"{source}:{rest}"


def run_args(doc: dict[str, Any], name: str, env: dict[str, str], project: str, overrides: list[str],
             extra_command: list[str], compose_dir: Path, extra_volumes: list[str] = ()) -> list[str]:
    """`docker run` options, image and command for service `name` on the host network."""
    svc = service(doc, name, env)
    unknown = set(svc) - NOT_RUN_OPTIONS - {"image", "command", "entrypoint", "environment", "volumes",
                                             "healthcheck", "restart", "user"}
    if unknown:
        raise ComposeError(f"service {name!r}: no docker run translation for {sorted(unknown)}")
    out = ["--name", f"{project}-{name}", "--network", "host",
           "--label", f"com.docker.compose.project={project}", "--label", f"com.docker.compose.service={name}"]
    for other in doc["services"]:
        out += ["--add-host", f"{other}:127.0.0.1"]
    environment = _environment(svc.get("environment"))
    for item in overrides:
        key, sep, value = item.partition("=")
        environment[key] = value if sep else None
    for key, value in environment.items():
        out += ["--env", key if value is None else f"{key}={value}"]
    named = set(doc.get("volumes") or {})
    for spec in svc.get("volumes", []):
        out += ["--volume", _volume(spec, project, named, compose_dir)]
    for spec in extra_volumes:
        out += ["--volume", spec]
    if "healthcheck" in svc:
        out += _health(svc["healthcheck"])
    if svc.get("restart"):
        out += ["--restart", str(svc["restart"])]
    if svc.get("user"):
        out += ["--user", str(svc["user"])]
    entrypoint = svc.get("entrypoint")
    entry_rest: list[str] = []
    if entrypoint is not None:
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
        out += ["--entrypoint", entrypoint[0]]
        entry_rest = entrypoint[1:]
    command = svc.get("command")
    command = shlex.split(command) if isinstance(command, str) else list(command or [])
    return out + [svc["image"], *entry_rest, *command, *extra_command]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", type=Path, default=COMPOSE, help="compose file (default deploy/docker-compose.yml)")
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build", help="docker build arguments")
    b.add_argument("service")
    b.add_argument("--base", help="base image for the Dockerfile's PYTHON_IMAGE / BASE_IMAGE argument")
    b.add_argument("--build-arg", action="append", default=[], help="KEY=VALUE, overrides the compose file's")
    r = sub.add_parser("run", help="docker run arguments")
    r.add_argument("service")
    r.add_argument("--project", default="magnet", help="container and volume name prefix (default magnet)")
    r.add_argument("--env", action="append", default=[], help="KEY=VALUE set or overridden in the environment")
    r.add_argument("--volume", action="append", default=[], help="SRC:DST[:ro] mounted besides the service's volumes")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # appended to the service's command
    a = p.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])
    env = dict(os.environ)
    try:
        doc = load(a.file)
        compose_dir = a.file.resolve().parent
        if a.what == "build":
            args = build_args(doc, a.service, env, a.base, a.build_arg, compose_dir)
        else:
            args = run_args(doc, a.service, env, a.project, a.env, extra, compose_dir, a.volume)
    except (ComposeError, OSError, KeyError) as exc:
        print(f"compose_run: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("\0".join(args) + "\0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
