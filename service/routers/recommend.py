"""Top-K recommendations for one user (GET) or many (POST)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError

from service.answers import recommendations
from service.dependencies import model_or_503
from service.responses import OrjsonResponse
from service.schemas import BatchRecommendRequest, BatchRecommendResponse, ErrorResponse, KQuery, Recommendation

router = APIRouter(tags=["recommend"])
_503 = {503: {"model": ErrorResponse, "description": "no bundle loaded yet"}}


@router.get("/recommend/{user_id}", response_model=Recommendation, responses=_503,
            summary="Top-K items for a user")
async def recommend_one(user_id: str, request: Request, k: KQuery = 10) -> OrjsonResponse:
    """Best-scoring items the user has not trained on, by e_u . e_i; an unknown user
    gets the most popular items with ``fallback: "popular"``. ``X-Cache`` says hit/miss."""
    app = request.app.state
    ((body, status),) = await recommendations(model_or_503(request), app.cache, app.metrics, [user_id], k,
                                              use_cache=app.settings.cache_recommendations,
                                              offload_work=app.settings.offload_work)
    return OrjsonResponse(body, headers={"x-cache": status})


@router.post("/recommend", response_model=BatchRecommendResponse, responses=_503,
             summary="Top-K items for many users")
async def recommend_many(body: BatchRecommendRequest, request: Request) -> OrjsonResponse:
    """One result per user id, in request order; one FAISS search and one cache
    round trip (MGET) for the whole batch."""
    app = request.app.state
    limit = app.settings.max_batch_users
    if len(body.user_ids) > limit:  # the same 422 shape as the schema's own checks
        raise RequestValidationError([{
            "type": "too_long", "loc": ("body", "user_ids"), "input": f"<{len(body.user_ids)} user ids>",
            "msg": f"List should have at most {limit} items after validation, not {len(body.user_ids)}",
            "ctx": {"field_type": "List", "max_length": limit, "actual_length": len(body.user_ids)},
        }])
    parts = await recommendations(model_or_503(request), app.cache, app.metrics, body.user_ids, body.k,
                                  use_cache=app.settings.cache_recommendations, offload_work=app.settings.offload_work)
    return OrjsonResponse(b'{"results":[' + b",".join(data for data, _ in parts) + b"]}")
