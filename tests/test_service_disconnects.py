"""An HTTP client that hangs up after sending its body cancels its request (counted 499); one
that hangs up once its answer has started, or a request cancelled for another reason, is left
as it was."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import ClientDisconnect

from service.middleware import CancelWhenClientLeaves


class Client:
    """An ASGI client: sends a one-chunk body, hangs up when told (`leave`), keeps what it is sent."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.sent: list[dict] = []
        self._body_sent = False

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> dict:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def statuses(self) -> list[int]:
        return [m["status"] for m in self.sent if m["type"] == "http.response.start"]


def serve(app, client: Client):
    return asyncio.wait_for(CancelWhenClientLeaves(app)({"type": "http"}, client.receive, client.send), 5)


def test_a_client_that_hangs_up_before_its_answer_cancels_the_request_counted_499():
    async def scenario():
        client, cancelled = Client(), asyncio.Event()

        async def waits_for_the_model(scope, receive, send):
            await receive()
            client.leave()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        await serve(waits_for_the_model, client)
        return cancelled.is_set(), client.statuses()

    assert asyncio.run(scenario()) == (True, [499])


def test_a_client_that_hangs_up_once_its_answer_has_started_does_not_cancel_it():
    async def scenario():
        client = Client()

        async def streams(scope, receive, send):
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            client.leave()
            await asyncio.sleep(0.05)  # the watcher sees the disconnect meanwhile
            await send({"type": "http.response.body", "body": b"done"})

        await serve(streams, client)
        return client.statuses(), client.sent[-1]["body"]

    assert asyncio.run(scenario()) == ([200], b"done")


def test_a_request_cancelled_for_another_reason_stays_cancelled():
    async def scenario():
        client = Client()

        async def waits(scope, receive, send):
            await receive()
            await asyncio.Event().wait()

        task = asyncio.create_task(serve(waits, client))
        await asyncio.sleep(0.01)
        task.cancel()  # a shutdown, say: the client is still there
        with pytest.raises(asyncio.CancelledError):
            await task
        return client.statuses()

    assert asyncio.run(scenario()) == []


def test_a_client_that_hangs_up_while_its_body_comes_in_is_counted_499_not_an_error():
    async def scenario():
        client = Client()

        async def reads_a_body_that_never_ends(scope, receive, send):
            raise ClientDisconnect()  # what Starlette's request.stream() raises then

        await serve(reads_a_body_that_never_ends, client)
        return client.statuses()

    assert asyncio.run(scenario()) == [499]
