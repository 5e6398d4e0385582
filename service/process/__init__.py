"""The life of the server's processes, from `python -m service` to its exit status.

- `serve`: the command (`python -m service`): settings, the environment workers inherit, one
  process or a supervisor of several, the exit status.
- `supervisor`: the parent of several workers, and its duties when one dies or the service stops.
- `layout`: how many workers and model threads this machine gets, when the settings leave it open.
- `device`: TensorFlow's import and logs, its thread pools, GPU or CPU.
- `worker`: the app each worker process serves (`uvicorn service.main:app` imports it too).
- `ready`: once the models are loaded, the gRPC port opens and the ready line is logged.
- `draining`: SIGTERM, reported not ready for DRAIN_DELAY_S before the server stops.

Nothing here is imported by this package's `__init__`: `service.settings` reads the layout, and
the worker imports TensorFlow before anything else.
"""
