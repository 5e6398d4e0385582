"""The app for `uvicorn service.main:app`, configured from the environment."""

from __future__ import annotations

import logging

from service.device import import_tensorflow_quietly

import_tensorflow_quietly()  # first, before anything below imports it

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

settings = Settings()
logging.basicConfig(
    level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
# python-multipart logs every malformed upload as a warning; those are the client's errors,
# answered with a 400, not the server's.
logging.getLogger("python_multipart").setLevel(logging.ERROR)
app = create_app(settings)
