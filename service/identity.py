"""Which replica answered: every response names its host and process in `X-Served-By`.

Behind a load balancer or a Kubernetes Service this tells replicas apart (the host is the
container's or pod's name, the process id the worker's) without any access to them."""

from __future__ import annotations

import os
import socket

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Served-By"


def replica_identity() -> str:
    """`<hostname>/<pid>` of this worker process."""
    return f"{socket.gethostname()}/{os.getpid()}"


class ServedBy:
    """ASGI middleware adding `X-Served-By: <hostname>/<pid>` to every HTTP response."""

    def __init__(self, app: ASGIApp):
        self.app = app
        # Built in the worker process (each worker imports the app), so the pid is the worker's.
        self.identity = replica_identity()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_identity(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(HEADER, self.identity)
            await send(message)

        await self.app(scope, receive, send_with_identity)
