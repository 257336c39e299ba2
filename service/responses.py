"""A JSON response rendered by orjson (several times faster than the stdlib encoder).

Our own small class rather than FastAPI's ORJSONResponse, which recent FastAPI
deprecates; handlers return it directly so FastAPI skips re-validating the body.
A JSONResponse subclass so that OpenAPI documents each route's response_model (FastAPI
documents any other response class's body as a plain string).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    """application/json rendered with orjson; bytes pass through untouched (cache hits)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, (bytes, bytearray)):
            return bytes(content)
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
