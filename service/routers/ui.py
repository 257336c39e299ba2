"""The dashboard at /ui/: HTML pages, their static assets, and read-only JSON helpers.

Every page is the same HTML shell; ``static/app.js`` reads the path and draws the
user, item, model or landing page from the JSON API. Assets are read once from the
package (no CDN, no build step) and served from a fixed list, so no request path
ever reaches the file system. Included by `service.app.create_app` unless
``MAGNET_UI=false``. Nothing here touches the admin API or its token.
"""

from __future__ import annotations

import hashlib
import html
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from service.dependencies import model_or_503
from service.responses import OrjsonResponse
from service.schemas import ErrorResponse
from service.ui import data
from service.ui.schemas import ItemsInfo, ModelInfo, SearchResults

router = APIRouter(tags=["ui"])

MAX_LOOKUP_IDS = 1000
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
#: the pages load only our own script and stylesheet and call only this origin
_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def _load_assets() -> dict[str, tuple[bytes, str, str]]:
    """{file name: (bytes, media type, etag)} of the shipped static files."""
    assets = {}
    for entry in resources.files("service.ui").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _MEDIA_TYPES:
            body = entry.read_bytes()
            assets[entry.name] = (body, _MEDIA_TYPES[suffix], f'"{hashlib.sha256(body).hexdigest()[:16]}"')
    return assets


_ASSETS = _load_assets()
_SHELL = _ASSETS.pop("index.html")[0].decode("utf-8")


def _page(request: Request) -> Response:
    """The HTML shell with the app's mount prefix filled in (asset and API URLs hang off it)."""
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    return Response(_SHELL.replace("__ROOT__", root), media_type=_MEDIA_TYPES[".html"],
                    headers={**_SECURITY_HEADERS, "cache-control": "no-cache"})


# ------------------------------------------------------------------ pages


@router.get("/ui", include_in_schema=False)
async def ui_root_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{request.scope.get('root_path', '').rstrip('/')}/ui/", status_code=307)


@router.get("/ui/", include_in_schema=False)
async def landing_page(request: Request) -> Response:
    return _page(request)


@router.get("/ui/model", include_in_schema=False)
async def model_page(request: Request) -> Response:
    return _page(request)


@router.get("/ui/users/{user_id}", include_in_schema=False)
async def user_page(user_id: str, request: Request) -> Response:
    return _page(request)


@router.get("/ui/items/{item_id}", include_in_schema=False)
async def item_page(item_id: str, request: Request) -> Response:
    return _page(request)


@router.get("/ui/static/{name}", include_in_schema=False)
async def static_asset(name: str, request: Request) -> Response:
    """A shipped asset by exact name; revalidated by ETag (304 when unchanged)."""
    asset = _ASSETS.get(name)
    if asset is None:
        raise HTTPException(status_code=404, detail=f"no dashboard asset {name!r}")
    body, media_type, etag = asset
    headers = {"etag": etag, "cache-control": "no-cache", "x-content-type-options": "nosniff"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


# ------------------------------------------------------------------ JSON helpers

_503 = {503: {"model": ErrorResponse, "description": "no bundle loaded yet"}}


@router.get("/ui/api/model", response_model=ModelInfo, responses=_503,
            summary="Dashboard: the served model and live cache figures")
async def ui_model(request: Request) -> OrjsonResponse:
    """Manifest facts (version, sizes, experts), the run's metrics and routing block as
    exported, this worker's cache hit ratio, and example ids."""
    state = model_or_503(request)
    return OrjsonResponse(data.model_info(state, request.app.state.metrics))


@router.get("/ui/api/search", response_model=SearchResults, responses=_503,
            summary="Dashboard: find users and items by id or title")
async def ui_search(
    request: Request,
    q: Annotated[str, Query(max_length=200, description="text to look for (case-insensitive)")] = "",
    limit: Annotated[int, Query(ge=1, le=data.SEARCH_LIMIT, description="most users and most items")] = 8,
) -> OrjsonResponse:
    """Users whose id contains ``q``; items whose id or display name contains it."""
    state = model_or_503(request)
    return OrjsonResponse(await run_in_threadpool(data.search, state, q, limit))


@router.get("/ui/api/items", response_model=ItemsInfo, responses=_503,
            summary="Dashboard: names (and routing) of items")
async def ui_items(
    request: Request,
    id: Annotated[list[str], Query(max_length=MAX_LOOKUP_IDS,
                                   description="external item id; repeat for several")] = [],  # noqa: B006
    routing: Annotated[bool, Query(description="include routing gates and modality shares")] = False,
) -> OrjsonResponse:
    """``{"items": {id: {"item_id", "name", "popularity", [routing]} | null}}``: null for an
    id the model does not know (a batch lookup, so unknown ids are data, not errors)."""
    state = model_or_503(request)
    return OrjsonResponse(data.items_info(state, id, routing=routing))
