"""Running the app under uvicorn (what `magnet serve`, `magnet quickstart` and the API image run)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from service.bundle import BundleError
from service.logs import configure_logging
from service.settings import Settings, SettingsError, load_settings, with_worker_defaults

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (for test and benchmark
    servers, and the data-parallel trainer's rendezvous)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def resolve_settings(bundle: Path | str | None = None, **overrides: Any) -> Settings:
    """Environment settings with explicit arguments (those not None) taking precedence."""
    env = load_settings()
    updates = {k: v for k, v in overrides.items() if v is not None}
    if bundle is not None:
        updates["bundle"] = Path(bundle)
    unknown = set(updates) - set(Settings.model_fields)
    if unknown:
        raise TypeError(f"unknown serve settings: {sorted(unknown)}")
    return load_settings(**{**env.model_dump(), **updates})


def serve(bundle: Path | str | None = None, host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> None:
    """Serves `bundle` (default: $MAGNET_BUNDLE) until interrupted.

    Extra keyword arguments override MAGNET_* settings (e.g. ``workers=4``,
    ``redis_url=...``). A missing bundle directory or manifest fails here with a
    `BundleError` before the port is opened; full verification happens in the app,
    which stays unready (503 on /readyz) if the bundle turns out to be bad.
    """
    settings = resolve_settings(bundle, host=host, port=port, **kw)
    if settings.bundle is None:
        raise BundleError("no bundle to serve: pass --bundle or set MAGNET_BUNDLE")
    if not (settings.bundle / "manifest.json").is_file():
        raise BundleError(f"{settings.bundle}: not a bundle directory (no manifest.json); run `magnet export` first")
    run(settings)


def run(settings: Settings) -> None:
    """Runs the app for `settings` under uvicorn until interrupted (host, port, workers and
    the graceful-shutdown time all come from `settings`)."""
    import uvicorn

    configure_logging(settings.log_level, json_lines=settings.log_json)
    settings = with_worker_defaults(settings)
    common = {"host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
              "timeout_graceful_shutdown": settings.graceful_shutdown_s, "proxy_headers": True}
    log.info("starting MAGNET serving", extra={
        "bundle": str(settings.bundle), "host": settings.host, "port": settings.port, "workers": settings.workers,
        "watch_s": settings.watch_s, "cache": "redis" if settings.redis_url else "local",
        "dashboard": f"http://{settings.host}:{settings.port}/ui/" if settings.ui else None})
    if settings.workers > 1:
        # Worker processes rebuild their settings from the environment: export ours.
        for name, value in settings.model_dump().items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            os.environ[f"MAGNET_{name.upper()}"] = str(value)
        uvicorn.run("service.app:create_app_from_env", factory=True, workers=settings.workers, **common)
    else:
        from service.app import create_app

        uvicorn.run(create_app(settings), **common)


def main() -> None:
    """The API image's command (`python -m service.server`): every setting from MAGNET_*.

    Unlike `serve`, it starts when MAGNET_BUNDLE holds no bundle yet (/healthz 200,
    /readyz 503 until POST /admin/reload or a restart finds one), so a container can come
    up before the first training run. A bad setting ends it with one line naming it.
    """
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.exit(f"error: {exc}")
    run(settings)


if __name__ == "__main__":
    main()
