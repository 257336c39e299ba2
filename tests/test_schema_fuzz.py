"""A short schema fuzz of the whole OpenAPI document against a live server (schemathesis).

Every operation the app documents gets generated requests, valid and invalid, sent over
HTTP to a real uvicorn server on a verified bundle (with the admin token, so
/admin/reload is exercised too): no response may be a 5xx, and every response whose
status is documented must match its documented schema and content type. The long run
(more examples, the stateful phase, under a real Redis) is `python -m bench.chaos
--parts fuzz`; its results are in docs/benchmarks.md.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def fuzz_server(start_module_server, bundle_dir: Path):
    return start_module_server(bundle=bundle_dir, admin_token=TOKEN)


def test_the_document_describes_every_route_and_its_bodies(fuzz_server) -> None:
    paths = httpx.get(f"{fuzz_server.url}/openapi.json").json()["paths"]
    for route in ("/recommend/{user_id}", "/recommend", "/explain/{user_id}/{item_id}", "/healthz", "/readyz",
                  "/metrics", "/admin/reload", "/ui/api/model", "/ui/api/search", "/ui/api/items", "/events"):
        assert route in paths, f"{route} is not in the OpenAPI document"
    ok = paths["/recommend/{user_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok.get("$ref", "").endswith("/Recommendation"), f"the 200 body is documented as {ok}, not its model"
    assert paths["/events"]["post"]["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/EventsAccepted")
    for route, operations in paths.items():  # the dashboard's helpers too: every JSON body has its model
        for method, operation in operations.items():
            status = next(c for c in ("200", "202") if c in operation["responses"])  # the success status
            body = operation["responses"][status]["content"].get("application/json")
            assert body is None or "$ref" in body["schema"], f"{method.upper()} {route}: {status} body {body}"


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_fuzz_no_5xx_and_documented_schemas(fuzz_server, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    calls, fuzzed = 0, set()
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def fuzz(case) -> None:
            nonlocal calls
            case.call_and_validate(headers=headers, checks=checks)
            calls += 1

        try:
            fuzz()
            fuzzed.add(operation.label)
        except Unsatisfiable:
            # no invalid input exists (no parameters, or only free-form string path ids)
            assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid request could be generated"
    assert calls >= 4 * len(fuzzed), f"only {calls} requests were sent"
    if mode is GenerationMode.NEGATIVE:  # the operations with constrained inputs got invalid ones
        assert {"GET /recommend/{user_id}", "POST /recommend", "POST /admin/reload"} <= fuzzed, fuzzed
    else:
        assert len(fuzzed) == len(operations)
