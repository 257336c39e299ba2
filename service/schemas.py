"""Request and response models: they define what /docs and /openapi.json show.

Handlers build plain dicts and return them as orjson bytes (see
`service.responses`) for speed, so these models document the wire format; the tests
validate real responses against them to keep the two in step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from service.settings import DEFAULT_MAX_BATCH_USERS, MAX_BATCH_USERS_CEILING

MAX_K = 1000
#: the ?k= query parameter of GET /recommend and /similar (422 outside 1..MAX_K)
KQuery = Annotated[int, Query(ge=1, le=MAX_K, description="number of items")]


class ScoredItem(BaseModel):
    item_id: str = Field(description="external item id")
    score: float = Field(description="e_u . e_i (popular fallback: training interaction count)")


class Recommendation(BaseModel):
    user_id: str
    model_version: str
    fallback: Literal["popular", "history"] | None = Field(
        description='null for a known user (its trained vector, folded in with its events when there are any); '
        '"history" for a user the model never saw, folded in from the request\'s history or the user\'s events; '
        '"popular" when there is nothing to fold in (the most popular items)'
    )
    items: list[ScoredItem] = Field(description="best first; never the user's training items")


class BatchRecommendRequest(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True, extra="forbid")

    user_ids: list[str] = Field(
        max_length=MAX_BATCH_USERS_CEILING,
        description=f"external user ids; at most MAGNET_MAX_BATCH_USERS (default {DEFAULT_MAX_BATCH_USERS})"
    )
    k: int = Field(10, ge=1, le=MAX_K, description="items per user")


class BatchRecommendResponse(BaseModel):
    results: list[Recommendation] = Field(description="one entry per requested user id, in request order")


FilterValue = str | list[str]


class RecommendRequest(BaseModel):
    """POST /recommend/{user_id}: every field optional; lists hold external item ids."""

    model_config = ConfigDict(coerce_numbers_to_str=True, extra="forbid")

    k: int = Field(10, ge=1, le=MAX_K, description="number of items")
    history: list[str] = Field(default_factory=list, description="items folded into the user's vector for this "
                               "request and excluded from the answer; not stored (at most MAGNET_MAX_HISTORY)")
    exclude: list[str] = Field(default_factory=list, description="items never returned, nor folded in "
                               "(at most MAGNET_MAX_EXCLUDE)")
    candidates: list[str] | None = Field(None, description="rank only these items (at most MAGNET_MAX_CANDIDATES)")
    filter: dict[str, FilterValue] | None = Field(
        None, description="keep items whose attribute (magnet import --meta-cols) equals one of the values; "
        "a multi-valued attribute matches when any of its values does; several attributes must all match"
    )


class EventIn(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True, extra="forbid")

    user_id: str = Field(min_length=1)
    item_id: str
    timestamp: float | None = Field(None, allow_inf_nan=False, description="UNIX seconds; omitted -> now")


MAX_EVENTS = 1000


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS, description="1 to 1000 interactions")


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events stored (all of the request's)")


class SimilarItems(BaseModel):
    item_id: str
    model_version: str
    items: list[ScoredItem] = Field(description="largest inner product e_i . e_j first; the item itself excluded")


class Expert(BaseModel):
    name: str
    role: Literal["dominant", "balanced", "complementary"]
    modality: str | None


class ExpertContribution(Expert):
    weight: float = Field(description="routing gate g_ie of this expert for the item (0 when not routed)")
    contribution: float = Field(description="g_ie * (e_u . x_ie): this expert's share of the score")


class Explanation(BaseModel):
    user_id: str
    item_id: str
    model_version: str
    score: float = Field(description="e_u . e_i, identical to /recommend's score for the pair")
    base: float = Field(description="e_u . c_i, the collaborative part; base + sum(contribution) == score")
    experts: list[ExpertContribution]
    modalities: dict[str, float] = Field(
        description="share of the expert evidence per modality, summing to 1 (empty without experts): "
        "each expert's |contribution| goes to its modality if dominant, and is split evenly over the "
        "modalities involved if balanced or complementary"
    )
    top_expert: str = Field(description='expert with the largest contribution ("base" when none is routed)')
    reason: str = Field(description="one human-readable sentence")
    cold: bool = Field(description="true when the item was embedded from its content alone (magnet add-items: "
                       "no interactions, no ID embedding); the parts add up the same way")
    cached: bool = Field(description="true when served from the cache")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    model_version: str
    model: str
    n_users: int
    n_items: int
    index: str
    events: Literal["redis", "memory"] = Field(description="where POST /events stores interactions")


class NotReady(BaseModel):
    status: Literal["loading", "not_ready"]
    detail: str


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str | None = Field(None, description="bundle directory; omitted -> reload the current path")


class ReloadResponse(BaseModel):
    model_version: str
    previous_model_version: str | None
    bundle: str
    seconds: float


class ErrorResponse(BaseModel):
    detail: str
    request_id: str | None = None
