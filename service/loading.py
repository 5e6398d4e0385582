"""With several workers, one still loading its models answers at once only what needs none.

Workers share one listening socket and the kernel hands each connection to whichever worker
accepts it, loaded or not. A worker still loading answers `/healthz` (it is alive: liveness
probes pass from the start) and `/metrics` at once, and holds every other request, `/readyz`
included, until its first scan of MODEL_DIR has loaded or rejected every model: no request
meets "loading" from one worker while another is ready. With one worker nothing is held:
`/readyz` says "loading" and predictions get 503 until its models are ready."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

ANSWERED_WHILE_LOADING = frozenset({"/healthz", "/metrics"})


class WaitForModels:
    """ASGI middleware holding requests, but for ANSWERED_WHILE_LOADING, until this worker's
    models are loaded (the app's `state.registry`, started by its lifespan)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in ANSWERED_WHILE_LOADING:
            await scope["app"].state.registry.first_scan()
        await self.app(scope, receive, send)
