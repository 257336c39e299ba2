"""What routes need beyond their parameters: the served model (or a 503) and the
admin check. See service/routers/__init__.py for why routes read ``app.state``
rather than resolving FastAPI dependencies."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.state import ModelState

_bearer = HTTPBearer(auto_error=False, description="MAGNET_ADMIN_TOKEN")


def model_or_503(request: Request) -> ModelState:
    """The model to answer with; 503 until a bundle has loaded."""
    state = request.app.state.holder.state
    if state is None:
        raise HTTPException(status_code=503, detail="no model loaded yet; see /readyz")
    return state


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Bearer MAGNET_ADMIN_TOKEN, compared in constant time; 401 otherwise (also when unset)."""
    settings = request.app.state.settings
    expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
    given = credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else ""
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        detail = "missing or wrong bearer token" if expected else "admin API disabled: MAGNET_ADMIN_TOKEN is not set"
        raise HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})
