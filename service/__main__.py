"""`python -m service`: serve with uvicorn on HOST:PORT, everything else from the environment.

On SIGTERM or Ctrl-C uvicorn stops accepting connections and lets in-flight requests finish
(for up to SHUTDOWN_TIMEOUT_S), then the app drains its batchers and the process exits 0.
"""

import signal
import sys

import uvicorn

from service.main import app, settings

# After its graceful shutdown uvicorn raises the signal again, which would end the process as
# killed by SIGTERM (status 143); a clean drain is a successful exit.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))

uvicorn.run(
    app,
    host=settings.host,
    port=settings.port,
    log_level=settings.log_level,
    access_log=settings.access_log,
    timeout_keep_alive=settings.timeout_keep_alive_s,
    timeout_graceful_shutdown=settings.shutdown_timeout_s,
)
