"""A client that hangs up stops its request: nothing is computed for a client that is gone.

Once a request's body is in, the only message the server has left for it is the disconnect
(uvicorn's `receive()` then waits for the connection to close or the response to finish), so a
watcher waits for it beside the route. If the client leaves before the answer starts, the
request's task is cancelled: whatever it awaits is cancelled with it, and a request waiting in
a model's queue leaves the queue at once (service/batching.py). The request is counted with
status 499, nginx's "client closed request" (the answer goes nowhere: uvicorn drops it); so is
one whose client leaves while its body is still coming in (Starlette's ClientDisconnect), which
is the client's doing, not an error of the service's.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLIENT_CLOSED_REQUEST = 499


class CancelWhenClientLeaves:
    """ASGI middleware: cancel a request whose client disconnects after sending its body and
    before the answer starts."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = asyncio.current_task()
        assert request is not None
        watcher: asyncio.Task | None = None
        answering = gone = False

        def client_left(watch: asyncio.Task) -> None:
            nonlocal gone
            if watch.cancelled() or answering:
                return
            gone = True
            request.cancel()

        async def receive_and_watch() -> Message:
            nonlocal watcher
            if watcher is not None:  # the app reads on after its body: the disconnect is all there is
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.create_task(_disconnect(receive), name="client-watch")
                watcher.add_done_callback(client_left)
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_and_watch, send_and_note)
        except asyncio.CancelledError:
            if not gone or request.uncancel():  # cancelled for another reason too: a shutdown
                raise
            await _closed_by_client(send)
        except ClientDisconnect:  # the client left while its body was still coming in
            if answering:
                raise
            await _closed_by_client(send)
        finally:
            if watcher is not None:
                watcher.cancel()


async def _closed_by_client(send: Send) -> None:
    """For the request metrics: the server has nobody to send the answer to, and drops it."""
    await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _disconnect(receive: Receive) -> Message:
    while (message := await receive())["type"] != "http.disconnect":
        pass
    return message
