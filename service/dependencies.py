"""FastAPI dependencies: the per-app settings, model state, cache and metrics.

Everything lives on ``app.state`` (set by `service.app.create_app`), so several apps
can coexist in one process and tests need no globals.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in the
thread pool, a thread hand-off per dependency per request (there were four on
/recommend), which cost more than the whole cached request. These only read attributes.

The model routes (/recommend, /explain, /similar) call `model_or_503` and read
``app.state`` themselves instead: resolving even one async dependency costs FastAPI
~12 us per request, a tenth of a cached answer. So on those routes the parameters
are validated (422) before readiness is checked (503).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.cache import Cache
from service.metrics import Metrics
from service.settings import Settings
from service.state import ModelHolder, ModelState

_bearer = HTTPBearer(auto_error=False, description="MAGNET_ADMIN_TOKEN")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def get_cache(request: Request) -> Cache:
    return request.app.state.cache


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def model_or_503(request: Request) -> ModelState:
    """The model to answer with; 503 until a bundle has loaded."""
    state = request.app.state.holder.state
    if state is None:
        raise HTTPException(status_code=503, detail="no model loaded yet; see /readyz")
    return state


async def get_model(request: Request) -> ModelState:
    """`model_or_503` as a dependency."""
    return model_or_503(request)


async def require_admin(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Bearer MAGNET_ADMIN_TOKEN, compared in constant time; 401 otherwise (also when unset)."""
    expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
    given = credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else ""
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        detail = "missing or wrong bearer token" if expected else "admin API disabled: MAGNET_ADMIN_TOKEN is not set"
        raise HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
CacheDep = Annotated[Cache, Depends(get_cache)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ModelDep = Annotated[ModelState, Depends(get_model)]
