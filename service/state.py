"""The served model and its atomic replacement.

A request reads ``holder.state`` once and works on that object to the end, so it
sees one consistent bundle even if a reload lands meanwhile. A reload builds the
complete new `ModelState` off the event loop (verification, index, id maps) and
only then rebinds ``holder.state`` -- a single reference assignment, so readers
see the old model or the new one, never a mix, and nothing waits on a lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from service.bundle import Bundle, load_bundle
from service.explanations import expert_modalities
from service.filters import AttributeIndex, build_attribute_index
from service.foldin import FoldIn
from service.metrics import Metrics
from service.search import ItemSearcher
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ModelState:
    """Everything a request needs about the served bundle; immutable."""

    bundle: Bundle
    searcher: ItemSearcher
    user_index: dict[str, int]
    item_index: dict[str, int]
    attribution: list[list[str]]
    loaded_at: float
    foldin: FoldIn
    attributes: AttributeIndex

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    @classmethod
    def build(cls, bundle: Bundle, *, margin: int, faiss_threads: int = 1,
              settings: Settings | None = None) -> "ModelState":
        s = settings or Settings(bundle=None, redis_url=None)
        return cls(
            bundle=bundle,
            searcher=ItemSearcher(bundle, margin=margin, threads=faiss_threads, brute_force_max=s.brute_force_max),
            user_index={u: n for n, u in enumerate(bundle.user_ids)},
            item_index={i: n for n, i in enumerate(bundle.item_ids)},
            attribution=expert_modalities(bundle.experts),
            loaded_at=time.time(),
            foldin=FoldIn(bundle, method=s.foldin_method, known_method=s.foldin_known_method,
                          als_reg=s.foldin_als_reg, als_alpha=s.foldin_als_alpha,
                          graph_reg=s.foldin_graph_reg),
            attributes=build_attribute_index(bundle.item_attributes),
        )


def build_state(path: Path, *, margin: int, faiss_threads: int = 1, settings: Settings | None = None) -> ModelState:
    """Load + verify + index a bundle (blocking; run it in a worker thread)."""
    return ModelState.build(load_bundle(path), margin=margin, faiss_threads=faiss_threads, settings=settings)


class ModelHolder:
    """Owns the current `ModelState`; reloads are serialised, reads never block."""

    def __init__(self, metrics: Metrics, *, margin: int = 16, faiss_threads: int = 1,
                 settings: Settings | None = None) -> None:
        self.state: ModelState | None = None
        self.path: Path | None = None
        self.error: str | None = None
        self.loading = False
        self._metrics = metrics
        self._margin = margin
        self._faiss_threads = faiss_threads
        self._settings = settings
        self._lock = asyncio.Lock()

    async def load(self, path: Path) -> tuple[ModelState, ModelState | None]:
        """Verifies and swaps in the bundle at `path`; returns (new, previous).

        Raises whatever loading raised (BundleError for a bad bundle); the current
        state then stays in place untouched.
        """
        async with self._lock:
            self.loading = True
            try:
                new = await run_in_threadpool(build_state, Path(path), margin=self._margin,
                                              faiss_threads=self._faiss_threads, settings=self._settings)
            except Exception as exc:
                self.error = str(exc)
                self._metrics.reloads.labels("rejected").inc()
                raise
            finally:
                self.loading = False
            previous, self.state, self.path, self.error = self.state, new, Path(path), None
            self._metrics.reloads.labels("ok").inc()
            self._metrics.set_model(new.model_version, new.bundle.model,
                                    str(new.bundle.index_info.get("type", "flat")), new.loaded_at)
            log.info("serving bundle", extra={"model_version": new.model_version, "bundle": str(path),
                                              "previous_model_version": previous.model_version if previous else None})
            return new, previous
