"""`/docs` (Swagger UI) and `/redoc` (ReDoc), served with their assets from this app.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and fonts from Google, so on an
offline machine or cluster they stay blank. The `fastapi-offline` package ships those assets
(pinned in pyproject.toml); the pages are FastAPI's own, pointed at them. The app is created
with `docs_url=None, redoc_url=None` so these routes take the places of FastAPI's.

Swagger UI is started by an inline script, which the page's policy (`service.routes.page`)
forbids; here that one script is allowed by its hash, and inline styles, which both UIs set
from JavaScript, are allowed too.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS_URL = "/docs-assets"
ASSETS = importlib.resources.files("fastapi_offline") / "static"
MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# No online validator badge: it would be an image from validator.swagger.io.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}

router = APIRouter(include_in_schema=False)


def _policy(scripts: list[str]) -> dict[str, str]:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in scripts
    )
    policy = (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff"}


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    html = bytes(page.body).decode()
    inline = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return HTMLResponse(html, headers=_policy(inline))


def _page(request: Request, viewer: str, render: Callable[..., HTMLResponse], assets: dict, **options):
    """`render`'s page (FastAPI's) for this app's schema, with `assets` (argument -> file) served
    from this app, behind any root path."""
    root = request.scope.get("root_path", "")
    urls = {argument: f"{root}{ASSETS_URL}/{file}" for argument, file in assets.items()}
    title = f"{request.app.title} - {viewer}"
    return _with_policy(
        render(openapi_url=f"{root}{request.app.openapi_url}", title=title, **urls, **options)
    )


SWAGGER_ASSETS = {
    "swagger_js_url": "swagger-ui-bundle.js",
    "swagger_css_url": "swagger-ui.css",
    "swagger_favicon_url": "favicon.png",
}
REDOC_ASSETS = {"redoc_js_url": "redoc.standalone.js", "redoc_favicon_url": "favicon.png"}


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return _page(
        request,
        "Swagger UI",
        get_swagger_ui_html,
        SWAGGER_ASSETS,
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return _page(request, "ReDoc", get_redoc_html, REDOC_ASSETS, with_google_fonts=False)


@router.get(ASSETS_URL + "/{name}")
async def asset(name: str) -> FileResponse:
    if name not in MEDIA_TYPES:  # looked up, never joined to a path
        raise HTTPException(404, f"no documentation asset {name!r}")
    return FileResponse(
        str(ASSETS / name),
        media_type=MEDIA_TYPES[name],
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
