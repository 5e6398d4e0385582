"""The page for people at `/`: plain HTML, CSS and JavaScript from `service/static/`, no build
step and nothing from elsewhere, so it works on machines and clusters without internet access.

The files are listed once at import and looked up by name, so no request path is ever joined to
a folder. Every response carries a strict Content-Security-Policy: scripts, styles and fetches
from this origin only, no inline scripts; images also from `blob:` (the user's own files, shown
before upload) and `data:` (the model-input previews).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[1] / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
FILES = {
    path.relative_to(STATIC).as_posix(): path
    for path in sorted(STATIC.rglob("*"))
    if path.is_file() and path.suffix in MEDIA_TYPES
}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise HTTPException(404, f"no file {name!r} in the page's static files")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("/")
async def page() -> FileResponse:
    """The page: classify photos and flowers, see what is served."""
    return _file("index.html")


@router.get("/static/{name:path}")
async def static(name: str) -> FileResponse:
    """The page's scripts, styles and sample photos."""
    return _file(name)
