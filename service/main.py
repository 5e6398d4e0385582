"""`uvicorn service.main:app`: the app of one worker process, built in service/process/worker.py."""

from service.process.worker import app

__all__ = ["app"]
