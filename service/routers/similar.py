"""Items near an item in the embedding space."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from service.answers import compute_similar
from service.dependencies import model_or_503
from service.responses import OrjsonResponse
from service.schemas import ErrorResponse, KQuery, SimilarItems

router = APIRouter(tags=["recommend"])


@router.get("/similar/{item_id}", response_model=SimilarItems,
            responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
            summary="Nearest items to an item")
async def similar(item_id: str, request: Request, k: KQuery = 10) -> OrjsonResponse:
    """Items with the largest inner product with this item's embedding (the same
    index /recommend uses), excluding the item itself."""
    state = model_or_503(request)
    item = state.item_index.get(item_id)
    if item is None:
        raise HTTPException(status_code=404, detail=f"unknown item_id {item_id!r}")
    return OrjsonResponse(compute_similar(state, item, k))
