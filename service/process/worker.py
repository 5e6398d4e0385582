"""The app of one worker process, configured from the environment.

`python -m service` starts the workers that import it, and tells them how their number was
chosen (WORKERS_WHY). Imported without it, by a server of one's own (`uvicorn service.main:app`,
gunicorn: service/main.py names this app), the process serves as one worker: the server decides
how many run, and they share no metrics (service/metrics.py)."""

from __future__ import annotations

import logging
import os

from service.process.device import import_tensorflow_quietly

import_tensorflow_quietly()  # first, before anything below imports it

from service.app import create_app  # noqa: E402
from service.process.layout import WORKERS_WHY  # noqa: E402
from service.settings import Settings  # noqa: E402

settings = Settings()
workers_why = os.environ.get(WORKERS_WHY)
if workers_why is None:
    settings = settings.model_copy(update={"workers": 1})
    workers_why = "this process, started by a server other than python -m service"
logging.basicConfig(
    level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
# python-multipart logs every malformed upload as a warning; those are the client's errors,
# answered with a 400, not the server's.
logging.getLogger("python_multipart").setLevel(logging.ERROR)
app = create_app(settings)
app.state.workers_why = workers_why
