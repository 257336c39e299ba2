"""Service settings, read from the environment (prefix ``MAGNET_``) or passed in.

The contract fixes MAGNET_BUNDLE, MAGNET_REDIS_URL, MAGNET_ADMIN_TOKEN and
MAGNET_CACHE_TTL_S; the rest are operational knobs with safe defaults.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


#: hard ceiling of MAGNET_MAX_BATCH_USERS; the request schema refuses longer lists outright
MAX_BATCH_USERS_CEILING = 100_000
DEFAULT_MAX_BATCH_USERS = 1000


class SettingsError(ValueError):
    """A MAGNET_* setting with an invalid value; the message names the variable."""


class Settings(BaseSettings):
    """Everything the app reads at start-up; one instance per app."""

    model_config = SettingsConfigDict(env_prefix="MAGNET_", env_file=None, extra="ignore")

    bundle: Path | None = Field(None, description="bundle directory to load at start-up; unset -> not ready")
    redis_url: str | None = Field(None, description="redis://host:port/db; unset -> in-process LRU cache")
    admin_token: SecretStr | None = Field(None, description="Bearer token for /admin/*; unset -> admin disabled")
    cache_ttl_s: int = Field(3600, ge=1, description="lifetime of cached explanations and recommendations")
    cache_max_items: int = Field(100_000, ge=1, description="entries kept by the in-process LRU cache")
    cache_recommendations: bool = Field(True, description="also cache /recommend results (explanations always are)")
    local_cache_size: int = Field(
        10_000, ge=0, description="with Redis: entries of the per-worker in-process LRU in front of it "
        "(0 = off, every lookup goes to Redis); a front-tier hit costs no Redis round trip"
    )
    local_cache_ttl_s: float = Field(
        60.0, gt=0, description="with Redis: seconds an entry stays in the in-process front tier (capped at "
        "MAGNET_CACHE_TTL_S); bodies are a pure function of (model version, key), so a copy that outlives its "
        "Redis entry is still right: the TTL only bounds how long a quiet key holds memory the LRU has not reclaimed"
    )
    redis_timeout_s: float = Field(0.05, gt=0, description="socket connect/read timeout per Redis call")
    redis_backoff_s: float = Field(1.0, gt=0, description="first pause before retrying Redis after an error")
    redis_backoff_max_s: float = Field(30.0, gt=0, description="longest pause between Redis retries")
    redis_max_connections: int = Field(256, ge=1, description="connections the Redis client pool may open")
    search_margin: int = Field(16, ge=0, description="extra candidates fetched so rescoring never loses the K-th item")
    max_batch_users: int = Field(DEFAULT_MAX_BATCH_USERS, ge=1, le=MAX_BATCH_USERS_CEILING,
                                 description="most user_ids one POST /recommend may carry (422 above)")
    offload_work: int = Field(4_000_000, ge=0, description="a /recommend search of more multiply-adds "
                              "(queries x items x dim) runs in a worker thread, off the event loop")
    foldin_method: Literal["mean", "als", "graph"] = Field(
        "graph", description="how a user the model never saw is folded in from items (history, events): mean of "
        "their vectors, implicit-ALS least squares, or MAGNET's graph aggregation mapped into the trained users' "
        "space; graph (reg 0.0003) led both validation checks (docs/benchmarks.md, 'Online fold-in')"
    )
    foldin_known_method: Literal["mean", "als", "graph"] = Field(
        "graph", description="how a known user's trained vector moves with items the model has not seen "
        "(e_u + f(seen + new) - f(seen)); graph gained the most from fresh items (docs/benchmarks.md)"
    )
    foldin_als_reg: float = Field(1.0, gt=0, description="ALS fold-in: ridge regularisation")
    foldin_als_alpha: float = Field(1.0, gt=0, description="ALS fold-in: confidence of an observed item")
    foldin_graph_reg: float = Field(0.0003, gt=0, description="graph fold-in: ridge of the map, per fitted user "
                                    "(0.0003 led 0.00001-0.1 on both validation checks, docs/benchmarks.md)")
    max_history: int = Field(1000, ge=1, description="most items in a request's history (422 above)")
    max_exclude: int = Field(10_000, ge=1, description="most items in a request's exclude list (422 above)")
    max_candidates: int = Field(100_000, ge=1, description="most items in a request's candidates list (422 above)")
    brute_force_max: int = Field(20_000, ge=0, description="a filtered request whose allowed set has at most this "
                                 "many items scores them all exactly instead of a FAISS search with an ID selector")
    events_per_user: int = Field(200, ge=1, description="recent events kept per user (folded in and excluded)")
    events_timeout_s: float = Field(1.0, gt=0, description="Redis timeout of POST /events (503 past it)")
    events_memory_max: int = Field(1_000_000, ge=1, description="without Redis: events kept in process memory "
                                   "for export-less serving (oldest dropped beyond it)")
    faiss_threads: int = Field(
        1, ge=1, description="OpenMP threads per FAISS search; 1 is fastest for single queries "
        "(parallelism comes from concurrent requests and workers; more threads spin on busy CPUs)"
    )
    load_in_background: bool = Field(
        True, description="start answering /healthz at once and load the bundle behind /readyz"
    )
    watch_s: float = Field(
        0.0, ge=0, description="poll the bundle's manifest every N seconds and reload when its model_version "
        "changes (0 = off); lets every worker of a multi-worker server pick up a re-export"
    )
    watch_retries: int = Field(3, ge=1, description="tries the watcher gives a new model_version (a load can "
                               "race the directory being replaced) before waiting for the next one")
    ui: bool = Field(True, description="serve the browser dashboard at /ui/ (false: no /ui routes at all)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(True, description="one JSON object per log line (false -> plain text)")
    access_log: bool = Field(True, description="one log line per request with route, status and latency")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes (metrics are per process)")
    graceful_shutdown_s: float = Field(10.0, gt=0, description="seconds requests in flight get to finish on shutdown")


def load_settings(**values: object) -> Settings:
    """Settings from the environment plus `values`; a bad value raises SettingsError naming it."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"MAGNET_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None


@lru_cache(maxsize=1)
def settings_from_env() -> Settings:
    """The environment's settings, read once (for the uvicorn factory entry point)."""
    return load_settings()


def with_worker_defaults(settings: Settings) -> Settings:
    """Several workers: turn on the manifest watcher (5 s) unless MAGNET_WATCH_S says otherwise,
    since POST /admin/reload reaches only the worker that receives it."""
    if settings.workers > 1 and settings.watch_s == 0:
        return settings.model_copy(update={"watch_s": 5.0})
    return settings
