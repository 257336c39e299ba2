"""POST /events: interactions the service has seen since the model was trained."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Request

from service.dependencies import model_or_503
from service.events import Event, EventsUnavailable
from service.responses import OrjsonResponse
from service.routers.recommend import unknown_items
from service.schemas import ErrorResponse, EventsAccepted, EventsRequest

router = APIRouter(tags=["events"])


@router.post("/events", status_code=202, response_model=EventsAccepted,
             responses={503: {"model": ErrorResponse, "description": "no bundle yet, or the event store "
                              "(Redis) is down: nothing was stored, retry"}},
             summary="Store interactions (1 to 1000)")
async def post_events(body: EventsRequest, request: Request) -> OrjsonResponse:
    """From now on every recommendation for each user excludes these items and is folded in from
    them. All or nothing: unknown item ids -> 422 naming them and nothing is stored; the event
    store down -> 503 and nothing is acknowledged."""
    state = model_or_503(request)
    index = state.item_index
    unknown = list(dict.fromkeys(e.item_id for e in body.events if e.item_id not in index))
    if unknown:
        raise unknown_items(("body", "events"), unknown, "; nothing was stored")
    now = time.time()
    events = [Event(e.user_id, e.item_id, e.timestamp if e.timestamp is not None else now) for e in body.events]
    try:
        accepted = await request.app.state.events.add(events)
    except EventsUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"{exc}; nothing was stored, retry") from None
    request.app.state.metrics.events.inc(accepted)
    return OrjsonResponse({"accepted": accepted}, status_code=202)
