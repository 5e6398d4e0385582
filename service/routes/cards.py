"""A model's card and its figures: `MODEL_CARD.md` and the PNGs beside it in the live
version's `assets.extra/`, and nothing else from the model folders.

The file name is checked against that short list and then looked up among the files present,
never joined to a path as given, so no request can reach another file.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from service.schemas import Error

CARD = "MODEL_CARD.md"
FIGURE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.png")
MEDIA_TYPES = {".md": "text/markdown; charset=utf-8", ".png": "image/png"}
# Shown by a browser as a document of its own: nothing in it may run or load anything else.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; sandbox",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(tags=["status"])


@router.get(
    "/models/{model}/card/{file}",
    response_class=FileResponse,
    responses={
        200: {"content": {"text/markdown": {}, "image/png": {}}},
        404: {"model": Error},
        503: {"model": Error},
    },
)
async def model_card(request: Request, model: str, file: str) -> FileResponse:
    """The live version's model card (`MODEL_CARD.md`) or one of the PNG figures beside it."""
    live = request.app.state.dataplane.live(model).predictor  # 404 unknown, 503 not loaded
    folder = live.assets_dir
    if file != CARD and not FIGURE.fullmatch(file):
        raise HTTPException(404, f"only {CARD} and its PNG figures are served, not {file!r}")
    files = folder.iterdir() if folder.is_dir() else []
    present = {path.name: path for path in files if path.is_file() and not path.is_symlink()}
    if file not in present:
        raise HTTPException(404, f"model {model!r} version {live.version} has no {file}")
    path = present[file]
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)
