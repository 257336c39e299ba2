"""Top-K recommendations for one user (GET, POST with history/exclude/candidates/filter) or many (POST)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.answers import Query as RankQuery
from service.answers import NO_ITEMS, recommend_query, recommendations
from service.dependencies import model_or_503
from service.filters import UnknownAttribute, allowed_items
from service.responses import OrjsonResponse
from service.schemas import (
    BatchRecommendRequest,
    BatchRecommendResponse,
    ErrorResponse,
    KQuery,
    Recommendation,
    RecommendRequest,
)
from service.state import ModelState

router = APIRouter(tags=["recommend"])
_503 = {503: {"model": ErrorResponse, "description": "no bundle loaded yet"}}


def invalid(loc: tuple, msg: str, value: object = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the problem."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def too_long(loc: tuple, n: int, limit: int) -> RequestValidationError:
    return RequestValidationError([{
        "type": "too_long", "loc": loc, "input": f"<{n} items>",
        "msg": f"List should have at most {limit} items after validation, not {n}",
        "ctx": {"field_type": "List", "max_length": limit, "actual_length": n},
    }])


def unknown_items(loc: tuple, unknown: list[str], note: str = "") -> RequestValidationError:
    """422 naming the unknown item ids (the first 20, and how many more)."""
    shown = ", ".join(map(repr, unknown[:20])) + (f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else "")
    return invalid(loc, f"unknown item ids: {shown}{note}", unknown[:20])


def item_indices(state: ModelState, ids: Sequence[str], loc: tuple, limit: int) -> np.ndarray:
    """Internal indices of external item ids, each once, in first-seen order; 422 over `limit`
    or naming the unknown ones."""
    if not ids:
        return NO_ITEMS
    if len(ids) > limit:
        raise too_long(loc, len(ids), limit)
    index = state.item_index
    found = [index.get(i, -1) for i in dict.fromkeys(ids)]
    if -1 in found:
        raise unknown_items(loc, [i for i in dict.fromkeys(ids) if i not in index])
    return np.array(found, dtype=np.int64)


@router.get("/recommend/{user_id}", response_model=Recommendation, responses=_503,
            summary="Top-K items for a user")
async def recommend_one(user_id: str, request: Request, k: KQuery = 10,
                        exclude: Annotated[str | None, Query(description="comma-separated item ids never "
                                                             "returned")] = None) -> OrjsonResponse:
    """Best-scoring items the user has not trained on (nor interacted with since: events), by
    e_u . e_i; a user the model never saw is folded in from its events (``fallback: "history"``)
    or gets the most popular items (``fallback: "popular"``). ``X-Cache`` says hit/miss."""
    app = request.app.state
    if exclude is not None:
        state = model_or_503(request)
        ids = [i for i in (p.strip() for p in exclude.split(",")) if i]
        q = RankQuery(k, exclude=item_indices(state, ids, ("query", "exclude"), app.settings.max_exclude))
        body = await recommend_query(state, app.metrics, user_id, q, offload_work=app.settings.offload_work,
                                     store=app.events)
        return OrjsonResponse(body, headers={"x-cache": "miss"})
    ((body, status),) = await recommendations(model_or_503(request), app.cache, app.metrics, [user_id], k,
                                              use_cache=app.settings.cache_recommendations,
                                              offload_work=app.settings.offload_work, store=app.events)
    return OrjsonResponse(body, headers={"x-cache": status})


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    """The request body as `model` (an empty body: the model's defaults), parsed by pydantic straight
    from the JSON bytes; invalid -> FastAPI's 422 with ``loc`` starting at "body". Cheaper than
    FastAPI's own body handling for long lists (docs/benchmarks.md, "Online serving: speed"); the
    route documents the body through `body_openapi`."""
    raw = await request.body()
    if not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"]),  # raw bytes are not echoed back
                                       "input": None if isinstance(e.get("input"), bytes) else e.get("input")}
                                      for e in errors]) from None


def body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the optional JSON request body."""
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.post("/recommend/{user_id}", response_model=Recommendation, responses=_503,
             openapi_extra=body_openapi(RecommendRequest),
             summary="Top-K items for a user, with history, exclusions, candidates and filters")
async def recommend_with(user_id: str, request: Request) -> OrjsonResponse:
    """Body (every field optional; unknown fields 422): ``k``; ``history`` is folded into the
    user's vector for this request and excluded (not stored); ``exclude`` items are never
    returned; ``candidates`` and ``filter`` restrict ranking to the items they keep. The answer
    is exactly the top-k of what remains. Unknown item ids or filter attributes, and lists over
    their limits: 422 naming them."""
    app = request.app.state
    s = app.settings
    body: RecommendRequest = await parse_body(request, RecommendRequest)
    state = model_or_503(request)
    history = item_indices(state, body.history, ("body", "history"), s.max_history)
    exclude = item_indices(state, body.exclude, ("body", "exclude"), s.max_exclude)
    allowed = None
    if body.candidates is not None:
        allowed = item_indices(state, body.candidates, ("body", "candidates"), s.max_candidates)
    if body.filter:
        try:
            matched = allowed_items(state.attributes, body.filter)
        except UnknownAttribute as exc:
            raise invalid(("body", "filter"), str(exc), sorted(body.filter)) from None
        allowed = matched if allowed is None else np.intersect1d(allowed, matched, assume_unique=True)
    q = RankQuery(body.k, history=history, exclude=exclude, allowed=allowed)
    data = await recommend_query(state, app.metrics, user_id, q, offload_work=s.offload_work, store=app.events)
    return OrjsonResponse(data, headers={"x-cache": "miss"})


@router.post("/recommend", response_model=BatchRecommendResponse, responses=_503,
             summary="Top-K items for many users")
async def recommend_many(body: BatchRecommendRequest, request: Request) -> OrjsonResponse:
    """One result per user id, in request order; one FAISS search and one cache
    round trip (MGET) for the whole batch."""
    app = request.app.state
    limit = app.settings.max_batch_users
    if len(body.user_ids) > limit:  # the same 422 shape as the schema's own checks
        raise too_long(("body", "user_ids"), len(body.user_ids), limit)
    parts = await recommendations(model_or_503(request), app.cache, app.metrics, body.user_ids, body.k,
                                  use_cache=app.settings.cache_recommendations, offload_work=app.settings.offload_work,
                                  store=app.events)
    return OrjsonResponse(b'{"results":[' + b",".join(data for data, _ in parts) + b"]}")
