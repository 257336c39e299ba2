"""Shared fixtures: fabricated runs and bundles, a real uvicorn server, a real Redis.

Nothing here is mocked: servers listen on free local ports and are called over
HTTP; Redis is the real `redis-server` binary (CI installs it; tests that need it
fail with a clear message when it is missing).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helpers such as run_fixture import as plain modules

from offline.synthetic import FakeRun, make_run  # noqa: E402
from service.server import free_port  # noqa: E402


# ----------------------------------------------------------------- runs / bundles


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> FakeRun:
    """A fabricated MAGNET-like run (4 experts); treat it as read-only."""
    return make_run(tmp_path_factory.mktemp("runs") / "magnet", seed=0)


@pytest.fixture(scope="session")
def bundle_dir(fake_run: FakeRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exact-index bundle exported from `fake_run`; read-only (copy before corrupting)."""
    from offline.export import export_bundle

    return export_bundle(fake_run.path, tmp_path_factory.mktemp("bundles") / "exact")


#: display names of the dashboard's bundle: every 5th item has none, one is markup that must stay text
UI_XSS_NAME = '<img src=x onerror="window.__xss=1"> & "Quoted"'


def ui_item_names(n_items: int) -> list[str | None]:
    names: list[str | None] = [None if n % 5 == 4 else f"Title {n:03d}" for n in range(n_items)]
    names[7] = UI_XSS_NAME
    return names


def ui_routing(n_experts: int = 4, epochs: int = 12, switch: int = 4) -> dict:
    """A routing block like `magnet train` writes (metrics.json), with known numbers."""
    util = [0.4, 0.3, 0.2, 0.1][:n_experts]
    return {
        "stage_switch_epoch": switch,
        "expert_utilization": util,
        "epochs": list(range(1, epochs + 1)),
        "coverage_entropy": [round(0.99 - 0.02 * e, 4) for e in range(epochs)],
        "sample_entropy": [round(0.8 - 0.04 * e, 4) for e in range(epochs)],
        "stage": [1 if e <= switch else 2 for e in range(1, epochs + 1)],
        "utilization_per_epoch": [util for _ in range(epochs)],
    }


@pytest.fixture(scope="session")
def ui_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with display names (some null, one full of markup) and a routing block: the dashboard's."""
    from offline.export import export_bundle

    run = make_run(tmp_path_factory.mktemp("runs") / "ui", seed=1, n_users=40, n_items=120,
                   item_names=ui_item_names(120), routing=ui_routing())
    return export_bundle(run.path, tmp_path_factory.mktemp("bundles") / "ui")


UI_ADMIN_TOKEN = "s3cret-admin-token-do-not-leak"


@pytest.fixture(scope="module")
def ui_target(ui_bundle: Path) -> Path:
    """The bundle the dashboard tests serve (a test module may override this fixture)."""
    return ui_bundle


@pytest.fixture(scope="module")
def ui_server(start_module_server, ui_target: Path) -> LiveServer:
    """A server on `ui_target` with an admin token set (that the UI must never leak)."""
    return start_module_server(bundle=ui_target, admin_token=UI_ADMIN_TOKEN)


@pytest.fixture(scope="module")
def ui_loaded(ui_target: Path):
    """`ui_target` loaded and verified, to compare the pages with."""
    from service.bundle import load_bundle

    return load_bundle(ui_target)


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of `bundle_dir` (same model_version)."""
    dest = tmp_path / "bundle"
    shutil.copytree(bundle_dir, dest)
    return dest


# ----------------------------------------------------------------- live server


class LiveServer:
    """A real uvicorn server running an app in a background thread."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def start(self, timeout: float = 30.0) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout: float = 30.0) -> dict:
        """Polls /readyz until 200; returns its body."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = httpx.get(f"{self.url}/readyz", timeout=5)
            if last.status_code == 200:
                return last.json()
            time.sleep(0.05)
        raise RuntimeError(f"server never became ready: {last.status_code if last else None} {last and last.text}")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 10), **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def _server_factory() -> Iterator[Callable[..., LiveServer]]:
    from service.app import create_app
    from service.settings import Settings

    servers: list[LiveServer] = []

    def _start(settings: Settings | None = None, *, wait_ready: bool = True,
               app_hook: Callable[[Any], None] | None = None, **overrides: Any) -> LiveServer:
        if settings is None:
            # Explicit values beat any MAGNET_* variables in the developer's environment.
            for key in ("bundle", "redis_url", "admin_token"):
                overrides.setdefault(key, None)
            overrides.setdefault("access_log", False)
            settings = Settings(**overrides)
        app = create_app(settings)
        if app_hook is not None:
            app_hook(app)
        live = LiveServer(app).start()
        servers.append(live)
        if wait_ready:
            live.wait_ready()
        return live

    try:
        yield _start
    finally:
        for live in servers:
            live.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., LiveServer]]:
    """Factory: start_server(settings=None, *, wait_ready=True, app_hook=None, **settings) -> LiveServer.

    Builds the app with `service.app.create_app` (app_hook may add test routes) and
    runs it under uvicorn; every server is stopped at teardown.
    """
    with _server_factory() as factory:
        yield factory


@pytest.fixture(scope="module")
def start_module_server() -> Iterator[Callable[..., LiveServer]]:
    """`start_server` whose servers live for the whole test module (for read-only tests)."""
    with _server_factory() as factory:
        yield factory


# ----------------------------------------------------------------- redis


class RedisProcess:
    """A throwaway `redis-server` on a free port (no persistence); killable mid-test."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
        if self.binary is None:
            pytest.fail("redis-server is not on PATH; install it (Debian/Ubuntu: apt-get install redis-server) "
                        "-- the cache tests need a real Redis", pytrace=False)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "RedisProcess":
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.5).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
            if self.proc.poll() is not None:
                break
        pytest.fail(f"redis-server did not start on port {self.port}", pytrace=False)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its socket but answers nothing (a hung Redis)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A private Redis for this test (tests may kill, pause or restart it)."""
    server = RedisProcess().start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.resume()
    server.kill()


@pytest.fixture(scope="session")
def shared_redis_url() -> Iterator[str]:
    """$MAGNET_TEST_REDIS_URL (CI's shared Redis) or a session-wide private one.

    Never kill it; use `redis_server` for tests that break Redis on purpose."""
    url = os.environ.get("MAGNET_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisProcess().start()
    yield server.url
    server.kill()
