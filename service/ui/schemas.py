"""Response models of the dashboard's /ui/api helpers: what /openapi.json documents.

Like `service.schemas`, they describe the wire format of bodies the handlers build as
plain dicts (`service.ui.data`); the schema fuzz (tests/test_schema_fuzz.py) checks real
responses against them. Facts copied from a bundle's manifest are optional, since
bundles made by older exports may lack them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.schemas import Expert


class ItemBrief(BaseModel):
    item_id: str = Field(description="external item id")
    name: str | None = Field(description="display name from the import's title column (null: none)")
    popularity: int = Field(description="training interactions of the item")


class ExpertGate(Expert):
    weight: float = Field(description="routing gate g_ie of this expert for the item")


class ItemInfo(ItemBrief):
    experts: list[ExpertGate] | None = Field(None, description="with routing=true: the item's gates")
    modalities: dict[str, float] | None = Field(
        None, description="with routing=true: routing weight per modality, summing to 1 (empty without experts)")
    top_expert: str | None = Field(None, description="with routing=true: the expert with the largest gate")


class ItemsInfo(BaseModel):
    model_version: str
    items: dict[str, ItemInfo | None] = Field(description="per requested id; null for an id the model does not know")


class SearchResults(BaseModel):
    query: str = Field(description="the query as sent")
    users: list[str] = Field(description="matching user ids, best first")
    items: list[ItemBrief] = Field(description="matching items (by id or name), best first")


class KindCache(BaseModel):
    hits: int
    misses: int
    hit_ratio: float | None = Field(description="null before the first lookup")


class CacheStats(KindCache):
    backend: str = Field(description='"redis" or "local"')
    front_tier_hits: int | None = Field(description="hits the in-process tier answered in front of Redis")
    errors: int = Field(description="cache operations that failed (the request was answered without the cache)")
    by_kind: dict[str, KindCache] = Field(description="per cached answer kind (recommend, similar, explain)")
    scope: str = Field(description="whose counters these are")


class IndexInfo(BaseModel):
    type: str = Field(description="FAISS index type (flat, ivf, hnsw, ...)")
    exact: bool | None = None


class TrainingInfo(BaseModel):
    best_epoch: int | None = None
    epochs_run: int | None = None
    seed: int | None = None
    device: str | None = None
    train_seconds: float | None = None


class RoutingHistory(BaseModel):
    """The run's metrics.json routing block, as exported."""

    epochs: list[int] = Field(description="the epoch each per-epoch entry was measured at")
    stage_switch_epoch: int | None = None
    expert_utilization: list[float] | None = None
    coverage_entropy: list[float] | None = None
    sample_entropy: list[float] | None = None
    stage: list[int] | None = None
    utilization_per_epoch: list[list[float]] | None = None


class ExampleUser(BaseModel):
    user_id: str
    interactions: int = Field(description="training interactions of the user")


class Examples(BaseModel):
    users: list[ExampleUser]
    items: list[ItemBrief] = Field(description="the most popular items")


class ModelInfo(BaseModel):
    model_version: str
    model: str
    dataset: str | None
    created_at: str | None
    loaded_at: float = Field(description="when this worker loaded the bundle (Unix time)")
    n_users: int
    n_items: int
    dim: int
    index: IndexInfo
    experts: list[Expert]
    metrics: dict[str, dict[str, float]] = Field(description="valid/test metrics from the bundle manifest")
    training: TrainingInfo
    routing: RoutingHistory | None = Field(description="null for expert-less models")
    item_files: list[str] = Field(description="optional per-item files the bundle carries")
    has_names: bool
    cold_items: int | None
    cache: CacheStats = Field(description="this worker's cache counters (the ones /metrics exports)")
    examples: Examples
