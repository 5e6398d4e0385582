"""Limits on request bodies, enforced while they arrive: size (413) and time (408).

A declared Content-Length over the cap is refused at the first read, before receiving anything;
bodies without one (chunked) are counted as they stream in and cut off at the cap. The deadline
covers the whole body, so a client trickling a byte at a time cannot hold the service either.
The body's last byte is when the request has come in, for the default deadline
(service/deadlines.py): a slow upload does not use up the time it may wait for the model.
(FastAPI's own `max_body_size` answers 413 in plain text; this keeps every error JSON.)
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import deadlines


class BodyLimits:
    """ASGI middleware: at most `max_bytes` of body, all received within `seconds`."""

    def __init__(self, app: ASGIApp, max_bytes: int, seconds: float):
        self.app = app
        self.max_bytes = max_bytes
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body over {self.max_bytes} bytes (MAX_UPLOAD_BYTES)"
        declared = Headers(scope=scope).get("content-length", "")
        # Refused at the first read, before anything is received, rather than answered here:
        # the route that reads the body answers in its own protocol's error format.
        declared_too_large = declared.isdigit() and int(declared) > self.max_bytes
        deadline = asyncio.get_running_loop().time() + self.seconds
        received = 0
        body_done = False

        async def receive_within_limits() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect, which may take any time
                return await receive()
            if declared_too_large:
                raise HTTPException(413, too_large)
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, "request body not received in time") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large)
                body_done = not message.get("more_body", False)
                if body_done:  # REQUEST_TIMEOUT_S counts from here: the network's time is not the queue's
                    deadlines.arrived()
            else:
                body_done = True
            return message

        await self.app(scope, receive_within_limits, send)
