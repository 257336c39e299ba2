"""Prometheus metrics, one registry per app (so several apps in one process, as in
tests, never collide on the global registry).

Routes are labelled by their template (``/recommend/{user_id}``), never the raw
path, so label cardinality stays bounded whatever ids clients send.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CACHE_KINDS = ("recommend", "explain")
CACHE_OPS = ("get", "set")


class Metrics:
    """The service's counters and histograms, registered on a private registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, cache_backend: str = "local", *, front_tier: bool = False) -> None:
        """`front_tier`: an in-process LRU sits in front of `cache_backend` (Redis); its hits
        are counted under backend="local", so they need zero series up front too."""
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("magnet_http_requests", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("magnet_http_request_duration_seconds", "HTTP request latency by route template",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.cache_hits = Counter("magnet_cache_hits", "cache lookups answered from the cache",
                                  ["backend", "kind"], registry=r)
        self.cache_misses = Counter("magnet_cache_misses", "cache lookups that had to compute",
                                    ["backend", "kind"], registry=r)
        self.cache_errors = Counter("magnet_cache_errors", "cache operations that failed (timeouts, lost connection)",
                                    ["backend", "op"], registry=r)
        self.cache_bypassed = Counter("magnet_cache_bypassed", "cache operations skipped while backing off after errors",
                                      ["backend", "op"], registry=r)
        self.cache_up = Gauge("magnet_cache_up", "1 while the cache backend answers, 0 while backing off",
                              ["backend"], registry=r)
        self.model = Info("magnet_model", "the bundle being served", registry=r)
        self.model_loaded = Gauge("magnet_model_loaded_timestamp_seconds", "when the served bundle was loaded",
                                  registry=r)
        self.events = Counter("magnet_events_accepted", "interaction events stored by POST /events", registry=r)
        self.reloads = Counter("magnet_model_reloads", "bundle loads by outcome", ["result"], registry=r)
        self.fallbacks = Counter("magnet_recommend_fallbacks", "recommendations answered by a fallback",
                                 ["reason"], registry=r)
        # Create the label sets up front so dashboards see zeros, not gaps.
        for kind in CACHE_KINDS:
            self.cache_hits.labels(cache_backend, kind)
            self.cache_misses.labels(cache_backend, kind)
            if front_tier:  # a front-tier lookup is a local hit or passes on to the backend: no local misses
                self.cache_hits.labels("local", kind)
        for op in CACHE_OPS:
            self.cache_errors.labels(cache_backend, op)
            self.cache_bypassed.labels(cache_backend, op)
        self.cache_up.labels(cache_backend).set(1)
        for result in ("ok", "rejected"):
            self.reloads.labels(result)
        self.fallbacks.labels("popular")
        # Labelled children resolved once and reused: .labels() takes a lock and
        # builds a tuple of str on every call, a few us per request on the hot path.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:  # bounded: route templates x methods x statuses
            children = self._request_children[key] = (self.requests.labels(method, route, str(status)),
                                                       self.latency.labels(method, route))
        children[0].inc()
        children[1].observe(seconds)

    def cache_counters(self, backend: str, kind: str) -> tuple[Any, Any]:
        """(hits, misses) counters of one backend and kind, to keep and .inc() directly."""
        return self.cache_hits.labels(backend, kind), self.cache_misses.labels(backend, kind)

    def set_model(self, model_version: str, model: str, index: str, loaded_at: float) -> None:
        self.model.info({"model_version": model_version, "model": model, "index": index})
        self.model_loaded.set(loaded_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)
