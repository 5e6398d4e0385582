"""The app for `uvicorn service.main:app`, configured from the environment."""

from __future__ import annotations

import logging

from service.app import create_app
from service.settings import Settings

settings = Settings()
logging.basicConfig(
    level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
# python-multipart logs every malformed upload as a warning; those are the client's errors,
# answered with a 400, not the server's.
logging.getLogger("python_multipart").setLevel(logging.ERROR)
app = create_app(settings)
