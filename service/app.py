"""The FastAPI application: `create_app(settings)` wires state, routers and handlers.

The lifespan opens the cache and loads the bundle named by the settings. By default
the load runs in the background so /healthz answers at once and /readyz turns 200
when the bundle is verified (what an orchestrator's probes expect); with
``load_in_background=False`` start-up waits for it and fails if it is bad.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.exception_handlers import request_validation_exception_handler

from service.cache import make_cache, uses_front_tier
from service.events import make_event_store
from service.metrics import Metrics
from service.middleware import SCOPE_KEY, RequestContextMiddleware
from service.responses import OrjsonResponse
from service.routers import admin, events, explain, health, metrics, recommend, similar, ui
from service.settings import Settings, load_settings, settings_from_env, with_worker_defaults
from service.state import ModelHolder

log = logging.getLogger(__name__)

DESCRIPTION = """
Top-K recommendations from a MAGNET bundle (FAISS over e_u . e_i), nearest items,
and explanations that split each score into a collaborative base and per-expert,
per-modality contributions. See CONTRACT.md for the fixed API.
"""


async def _initial_load(holder: ModelHolder, settings: Settings) -> None:
    try:
        await holder.load(settings.bundle)  # type: ignore[arg-type]
    except Exception as exc:  # stays up and unready; /readyz shows why, /admin/reload can fix it
        log.error("initial bundle load failed; not ready", extra={"bundle": str(settings.bundle), "error": str(exc)})


async def _watch(holder: ModelHolder, settings: Settings) -> None:
    """Reloads when the bundle directory's manifest names a new model_version.

    Each worker process runs its own watcher, so a re-export reaches all of them
    (POST /admin/reload only reaches the worker that received it). A version that
    fails to load is retried MAGNET_WATCH_RETRIES times (a load can race the
    directory being replaced), then left alone until the manifest changes again."""
    failures: dict[str, int] = {}
    while True:
        await asyncio.sleep(settings.watch_s)
        path = holder.path or settings.bundle
        if path is None or holder.loading:
            continue
        try:
            version = json.loads((Path(path) / "manifest.json").read_bytes()).get("model_version")
        except (OSError, ValueError, AttributeError):
            continue  # mid-replacement or unreadable: look again next tick
        current = holder.state.model_version if holder.state else None
        if version and version != current and failures.get(version, 0) < settings.watch_retries:
            try:
                await holder.load(path)
                failures.clear()
            except Exception as exc:
                failures[version] = failures.get(version, 0) + 1
                log.error("watched bundle rejected", extra={"bundle": str(path), "error": str(exc),
                                                            "attempt": failures[version]})


def create_app(settings: Settings | None = None) -> FastAPI:
    """A ready-to-serve app for `settings` (default: read from MAGNET_* environment)."""
    settings = settings or load_settings()
    metrics_ = Metrics("redis" if settings.redis_url else "local", front_tier=uses_front_tier(settings))
    holder = ModelHolder(metrics_, margin=settings.search_margin, faiss_threads=settings.faiss_threads,
                         settings=settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.cache = make_cache(settings, metrics_)
        app.state.events = make_event_store(settings)
        task: asyncio.Task | None = None
        if settings.bundle is not None:
            if settings.load_in_background:
                task = asyncio.create_task(_initial_load(holder, settings))
            else:
                await holder.load(settings.bundle)
        else:
            log.warning("no bundle configured (MAGNET_BUNDLE); not ready until POST /admin/reload")
        watcher = asyncio.create_task(_watch(holder, settings)) if settings.watch_s > 0 else None
        try:
            yield
        finally:
            for t in (task, watcher):
                if t is not None and not t.done():
                    t.cancel()
            await app.state.cache.close()
            await app.state.events.close()

    app = FastAPI(
        title="MAGNET serving",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.settings = settings
    app.state.metrics = metrics_
    app.state.holder = holder

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):  # noqa: ANN202
        """FastAPI's 422 body ({"detail": [{"loc": [..., field], "msg": ...}]}), logged."""
        log.info("validation error", extra={"errors": [".".join(map(str, e.get("loc", ()))) for e in exc.errors()]})
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> OrjsonResponse:
        """Last resort: log the trace server-side, give the client only a request id."""
        rid = request.scope.get(SCOPE_KEY)
        log.error("unhandled error", exc_info=exc, extra={"request_id": rid, "path": request.url.path})
        return OrjsonResponse({"detail": "internal server error", "request_id": rid}, status_code=500,
                              headers={"x-request-id": rid or ""})

    for module in (health, recommend, events, similar, explain, admin, metrics):
        app.include_router(module.router)
    if settings.ui:  # MAGNET_UI=false: no dashboard routes at all
        app.include_router(ui.router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics_, access_log=settings.access_log)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory for multi-worker serving: each worker reads MAGNET_* itself."""
    from service.logs import configure_logging

    settings = with_worker_defaults(settings_from_env())
    configure_logging(settings.log_level, json_lines=settings.log_json)
    return create_app(settings)
