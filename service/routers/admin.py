"""Operator endpoints, behind Bearer MAGNET_ADMIN_TOKEN."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request

from service.bundle import BundleError
from service.dependencies import require_admin
from service.responses import OrjsonResponse
from service.schemas import ErrorResponse, ReloadRequest, ReloadResponse

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses={401: {"model": ErrorResponse, "description": "missing or wrong bearer token"}})


@router.post("/reload", response_model=ReloadResponse,
             responses={409: {"model": ErrorResponse, "description": "bundle failed verification; old one serves"}},
             summary="Load a bundle and swap it in atomically")
async def reload(request: Request, body: ReloadRequest | None = None) -> OrjsonResponse:
    """Verifies the bundle (the current path, or ``{"bundle": path}``) completely
    before swapping; requests in flight finish on the old model, none is dropped.
    A bundle that fails verification -> 409 and the old one keeps serving."""
    holder, settings = request.app.state.holder, request.app.state.settings
    path = Path(body.bundle) if body and body.bundle else (holder.path or settings.bundle)
    if path is None:
        raise HTTPException(status_code=409, detail='no bundle path: pass {"bundle": path} or set MAGNET_BUNDLE')
    started = time.perf_counter()
    serving = holder.state.model_version if holder.state else None
    try:
        new, previous = await holder.load(path)
    except BundleError as exc:
        raise HTTPException(status_code=409, detail=f"bundle rejected ({exc}); still serving {serving}") from None
    except Exception as exc:  # an unreadable file etc.: still a refused bundle, not a server error
        log.exception("bundle load failed")
        raise HTTPException(status_code=409,
                            detail=f"bundle could not be loaded ({type(exc).__name__}); still serving {serving}") from None
    return OrjsonResponse({"model_version": new.model_version,
                           "previous_model_version": previous.model_version if previous else None,
                           "bundle": str(path), "seconds": round(time.perf_counter() - started, 4)})
