"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.responses import OrjsonResponse
from service.schemas import Health, NotReady, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Process is alive")
async def healthz() -> OrjsonResponse:
    """200 whenever the process can answer, bundle or not (a liveness probe)."""
    return OrjsonResponse({"status": "ok"})


@router.get("/readyz", response_model=Ready, responses={503: {"model": NotReady}}, summary="A bundle is loaded")
async def readyz(request: Request) -> OrjsonResponse:
    """200 with the served model_version once a bundle is loaded, 503 before (a readiness probe)."""
    holder = request.app.state.holder
    state = holder.state
    if state is None:
        if holder.loading:
            return OrjsonResponse({"status": "loading", "detail": "bundle is loading"}, status_code=503)
        detail = holder.error or "no bundle loaded (set MAGNET_BUNDLE or POST /admin/reload)"
        return OrjsonResponse({"status": "not_ready", "detail": detail}, status_code=503)
    b = state.bundle
    return OrjsonResponse({"status": "ready", "model_version": b.model_version, "model": b.model,
                           "n_users": b.n_users, "n_items": b.n_items,
                           "index": str(b.index_info.get("type", "flat")),
                           "events": request.app.state.events.backend})
