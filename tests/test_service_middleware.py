"""The HTTP middleware's own edges, called directly as ASGI (the routes' answers to them are
tests/test_service_errors.py's and, end to end, tests/test_service_server.py's): the body's size
cap to the byte, its timer, when the request counts as come in, and which layers an app gets."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from service import deadlines
from service.metrics import Metrics
from service.middleware import BodyLimits, CancelWhenClientLeaves, WaitForModels, install
from service.settings import Settings

CAP = 100


def body(chunks: list[bytes], declared: int | None = None, pause_s: float = 0.0):
    """(scope, receive) of a request whose body comes in `chunks`, each after `pause_s`."""
    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    scope = {"type": "http", "headers": headers, "path": "/x"}
    pending = list(chunks)

    async def receive():
        await asyncio.sleep(pause_s)  # a receive always waits for the network a moment
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    return scope, receive


def read_through(scope, receive, seconds: float = 5.0) -> dict:
    """What an app behind BodyLimits reads: the body, and when the request came in."""
    seen: dict = {}

    async def app(scope, receive, send):
        chunks = []
        while True:
            message = await receive()
            chunks.append(message["body"])
            if not message["more_body"]:
                break
        seen["body"] = b"".join(chunks)
        seen["came_in"] = deadlines._arrived.get()
        seen["now"] = asyncio.get_running_loop().time()

    async def run():
        await BodyLimits(app, CAP, seconds)(scope, receive, None)

    asyncio.run(run())
    return seen


@pytest.mark.parametrize("declared", [CAP, None], ids=["declared", "streamed"])
def test_a_body_of_exactly_the_cap_is_read_whole(declared):
    scope, receive = body([b"a" * 60, b"b" * 40], declared)
    assert len(read_through(scope, receive)["body"]) == CAP


@pytest.mark.parametrize("declared", [CAP + 1, None], ids=["declared", "streamed"])
def test_one_byte_over_the_cap_is_a_413(declared):
    scope, receive = body([b"a" * 60, b"b" * 41], declared)
    with pytest.raises(HTTPException) as refused:
        read_through(scope, receive)
    assert refused.value.status_code == 413 and "MAX_UPLOAD_BYTES" in refused.value.detail


def test_a_body_still_coming_when_its_time_is_up_is_a_408():
    scope, receive = body([b"a", b"b", b"c"], pause_s=0.2)
    with pytest.raises(HTTPException) as late:
        read_through(scope, receive, seconds=0.3)
    assert late.value.status_code == 408 and late.value.detail == "request body not received in time"


def test_the_request_comes_in_with_the_last_byte_of_its_body():
    scope, receive = body([b"only"])
    seen = read_through(scope, receive)
    assert seen["came_in"] is not None and seen["came_in"] <= seen["now"]


def layers(**settings) -> list[type]:
    app = FastAPI()
    install(app, Settings(**settings), Metrics())
    return [middleware.cls for middleware in app.user_middleware]


def test_only_several_workers_hold_requests_while_the_models_load(tmp_path):
    assert WaitForModels not in layers(model_dir=tmp_path, workers=1)
    assert WaitForModels in layers(model_dir=tmp_path, workers=2)


def test_cross_origin_requests_are_answered_only_for_the_origins_named(tmp_path):
    assert CORSMiddleware not in layers(model_dir=tmp_path)
    assert CORSMiddleware in layers(model_dir=tmp_path, cors_origins=["https://example.org"])


def test_while_loading_only_what_needs_no_model_is_answered_without_waiting():
    scan_waited = []

    class Registry:
        async def first_scan(self):
            scan_waited.append(True)

    class State:
        registry = Registry()

    class App:
        state = State()

    async def run(scope):
        async def app(scope, receive, send):
            pass

        await WaitForModels(app)(scope, None, None)

    asyncio.run(run({"type": "http", "path": "/healthz", "app": App()}))
    assert scan_waited == []
    asyncio.run(run({"type": "http", "path": "/predict/iris", "app": App()}))
    assert scan_waited == [True]
    asyncio.run(run({"type": "lifespan", "path": "/predict/iris", "app": App()}))
    assert scan_waited == [True]  # only HTTP requests wait


def test_the_disconnect_is_watched_for_only_once_the_whole_body_is_in():
    """The watcher reads the messages after the body: started on a first chunk, it would take
    the rest of the body from the route."""
    scope, receive = body([b"a" * 10, b"b" * 10, b"c" * 10])
    read: list[bytes] = []

    async def route(scope, receive, send):
        while True:
            message = await receive()
            read.append(message["body"])
            await asyncio.sleep(0.01)  # the watcher, if started, would read meanwhile
            if not message["more_body"]:
                break

    async def run():
        async def sent(message):
            pass

        await asyncio.wait_for(CancelWhenClientLeaves(route)(scope, receive, sent), 5)

    asyncio.run(run())
    assert read == [b"a" * 10, b"b" * 10, b"c" * 10]
