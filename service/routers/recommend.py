"""Top-K recommendations for one user (GET) or many (POST)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.dependencies import model_or_503
from service.ranking import recommendations
from service.responses import OrjsonResponse
from service.schemas import MAX_K, BatchRecommendRequest, BatchRecommendResponse, ErrorResponse, Recommendation

router = APIRouter(tags=["recommend"])
_503 = {503: {"model": ErrorResponse, "description": "no bundle loaded yet"}}


@router.get("/recommend/{user_id}", response_model=Recommendation, responses=_503,
            summary="Top-K items for a user")
async def recommend_one(
    user_id: str,
    request: Request,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="number of items")] = 10,
) -> OrjsonResponse:
    """Best-scoring items the user has not trained on, by e_u . e_i; an unknown user
    gets the most popular items with ``fallback: "popular"``. ``X-Cache`` says hit/miss."""
    app = request.app.state  # no Depends(): see service.dependencies
    ((body, status),) = await recommendations(model_or_503(request), app.cache, app.metrics, [user_id], k,
                                              use_cache=app.settings.cache_recommendations)
    return OrjsonResponse(body, headers={"x-cache": status})


@router.post("/recommend", response_model=BatchRecommendResponse, responses=_503,
             summary="Top-K items for many users")
async def recommend_many(
    body: BatchRecommendRequest,
    request: Request,
) -> OrjsonResponse:
    """One result per user id, in request order; one FAISS search and one cache
    round trip (MGET) for the whole batch."""
    app = request.app.state
    parts = await recommendations(model_or_503(request), app.cache, app.metrics, body.user_ids, body.k,
                                  use_cache=app.settings.cache_recommendations)
    return OrjsonResponse(b'{"results":[' + b",".join(data for data, _ in parts) + b"]}")
