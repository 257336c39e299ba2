"""One router per concern; `service.app.create_app` includes them all.

How a route reaches the served model, the cache, the metrics and the settings, in
one style for every route: it reads them from ``request.app.state`` (set by
`create_app`: one set per app, so several apps coexist in a process and tests need
no globals), the served model through `service.dependencies.model_or_503`. No
route resolves them through FastAPI ``Depends``: the model routes are the measured
hot path, where resolving even one async dependency per request costs a noticeable
share of a cached answer (docs/benchmarks.md, "Serving"), and two styles for the
same thing would be one too many. The only dependency left is `require_admin` on
the admin router: an authorization step (it puts the bearer scheme into the
OpenAPI document), not a way to reach state. One consequence, stated once: on the
model routes the parameters are validated (422) before readiness is checked (503).
"""
