"""Request context: request id, per-route metrics and the access log, as plain ASGI.

Plain ASGI (not BaseHTTPMiddleware) keeps the per-request overhead to a few
microseconds. The request id comes from a sane ``X-Request-ID`` header or is
generated, is echoed in the response, set in the logging context, and kept in the
scope so the last-resort error handler can report it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import request_id_var
from service.metrics import Metrics

log = logging.getLogger("service.access")
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
SCOPE_KEY = "magnet.request_id"


class RequestContextMiddleware:
    """Tags each HTTP request with an id, times it, counts it by route template."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SAFE_ID.match(value):
                rid = value.decode()
                break
        rid = rid or uuid.uuid4().hex
        scope[SCOPE_KEY] = rid
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("x-request-id", rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(scope["method"], template, status, elapsed)
            if self.access_log:
                log.info("request", extra={"method": scope["method"], "path": scope["path"], "route": template,
                                           "status": status, "ms": round(elapsed * 1000, 3)})
            request_id_var.reset(token)
