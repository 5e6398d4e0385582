"""HTTP serving of the exported models: `uvicorn service.main:app` or `python -m service`."""
