"""Why an item scores what it does for a user: base + per-expert contributions."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from service.answers import explanation
from service.dependencies import model_or_503
from service.responses import OrjsonResponse
from service.schemas import ErrorResponse, Explanation

router = APIRouter(tags=["explain"])


@router.get("/explain/{user_id}/{item_id}", response_model=Explanation,
            responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
            summary="Explain a user-item score by expert and modality")
async def explain(user_id: str, item_id: str, request: Request) -> OrjsonResponse:
    """score = base + sum(contribution), with score identical to /recommend's for the
    pair; a user with events is explained with its folded-in vector (the one /recommend
    ranks with). Cached per model_version; ``cached`` says whether this answer came from it."""
    state = model_or_503(request)
    if item_id not in state.item_index:
        raise HTTPException(status_code=404, detail=f"unknown item_id {item_id!r}")
    app = request.app.state
    body = await explanation(state, app.cache, user_id, item_id, store=app.events)
    if body is None:
        raise HTTPException(status_code=404, detail=f"unknown user_id {user_id!r} (no events either)")
    return OrjsonResponse(body)
