"""Top-K recommendations for one user (GET) or many (POST)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.dependencies import CacheDep, MetricsDep, ModelDep, SettingsDep
from service.ranking import recommendations
from service.responses import OrjsonResponse
from service.schemas import MAX_K, BatchRecommendRequest, BatchRecommendResponse, ErrorResponse, Recommendation

router = APIRouter(tags=["recommend"])
_503 = {503: {"model": ErrorResponse, "description": "no bundle loaded yet"}}


@router.get("/recommend/{user_id}", response_model=Recommendation, responses=_503,
            summary="Top-K items for a user")
async def recommend_one(
    user_id: str,
    state: ModelDep,
    cache: CacheDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="number of items")] = 10,
) -> OrjsonResponse:
    """Best-scoring items the user has not trained on, by e_u . e_i; an unknown user
    gets the most popular items with ``fallback: "popular"``. ``X-Cache`` says hit/miss."""
    ((body, status),) = await recommendations(state, cache, metrics, [user_id], k,
                                              use_cache=settings.cache_recommendations)
    return OrjsonResponse(body, headers={"x-cache": status})


@router.post("/recommend", response_model=BatchRecommendResponse, responses=_503,
             summary="Top-K items for many users")
async def recommend_many(
    request: BatchRecommendRequest,
    state: ModelDep,
    cache: CacheDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> OrjsonResponse:
    """One result per user id, in request order; one FAISS search and one cache
    round trip (MGET) for the whole batch."""
    parts = await recommendations(state, cache, metrics, request.user_ids, request.k,
                                  use_cache=settings.cache_recommendations)
    return OrjsonResponse(b'{"results":[' + b",".join(body for body, _ in parts) + b"]}")
