"""The gRPC server on its own, over a stand-in data plane: what every RPC goes through (the API
key, errors as the one table's codes, metrics, the answering worker, the message limit) and the
server's life (health that follows readiness, draining, closing). The doors' answers with real
models: tests/test_protocol_grpc_servicers.py and tests/test_protocol_grpc_doors.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

import grpc
import pytest
from deployments import service_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from served import free_port

from service.batching import QueueFull
from service.metrics import Metrics
from service.middleware import replica_identity
from service.protocols.grpc_server import Door, GrpcPortTaken, GrpcServer
from service.protocols.third_party import open_inference_pb2 as oip
from service.registry import UnknownModel

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
V2 = "inference.GRPCInferenceService"
INFER, LIVE = f"/{V2}/ModelInfer", f"/{V2}/ServerLive"
KEY = "server-key"


@dataclass
class Model:
    name: str
    problem: str | None = None


@dataclass
class Plane:
    """What the server reads of the data plane: readiness and the models' states (`looks`
    counts the reads)."""

    ready: bool = False
    models: list[Model] = field(default_factory=list)
    looks: int = 0

    def states(self) -> list[Model]:
        self.looks += 1
        return self.models

    @property
    def registry(self) -> Plane:
        """The server reads both from the plane's registry: here, the stand-in itself."""
        return self


class Servicer:
    """ModelInfer answers with its request's id, or raises what `id` names; ServerLive answers;
    nothing else is implemented."""

    async def ModelInfer(self, request: oip.ModelInferRequest) -> oip.ModelInferResponse:
        faults = {
            "unknown": UnknownModel("no model named 'tulip'"),
            "full": QueueFull("the queue is full", retry_after_s=3),
            "bug": RuntimeError("a bug"),
        }
        if request.id in faults:
            raise faults[request.id]
        if request.id == "slow":
            await asyncio.sleep(5)
        if request.id == "a second":
            await asyncio.sleep(1)
        return oip.ModelInferResponse(id=request.id)

    async def ServerLive(self, request: oip.ServerLiveRequest) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)


def server_for(tmp_path, plane: Plane, **settings) -> GrpcServer:
    """A server with the stand-in servicer; its connections kept (unless told otherwise), since
    a call meeting the end of an aged connection is UNAVAILABLE (docs/api/grpc.md)."""
    settings = service_settings(
        tmp_path, **{"grpc_port": free_port(), "grpc_max_connection_age_s": 0, **settings}
    )
    server = GrpcServer(plane, settings, Metrics())  # type: ignore[arg-type]
    server.add(
        oip.DESCRIPTOR.services_by_name["GRPCInferenceService"], "inference", Servicer(), ("ModelInfer",)
    )
    return server


async def call(server: GrpcServer, path: str, request, response_type, metadata=(), timeout=10):
    """(code, details, response or None, trailing metadata as a dict)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        rpc = channel.unary_unary(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        done = rpc(request, metadata=metadata, timeout=timeout)
        try:
            response = await done
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details(), None, dict(error.trailing_metadata() or ())
        return grpc.StatusCode.OK, "", response, dict(await done.trailing_metadata() or ())


async def infer(server: GrpcServer, id_: str = "ok", metadata=(), timeout=10):
    return await call(server, INFER, oip.ModelInferRequest(id=id_), oip.ModelInferResponse, metadata, timeout)


async def health(server: GrpcServer, service: str = "") -> int | grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
        return answer.status


async def health_becomes(server: GrpcServer, expected: dict[str, int | grpc.StatusCode]) -> None:
    """Wait (a few health intervals at most) until each service's health is as expected."""
    for _ in range(40):
        if {service: await health(server, service) for service in expected} == expected:
            return
        await asyncio.sleep(0.1)
    assert {service: await health(server, service) for service in expected} == expected


def running(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_health_answers_truly_from_the_first_call(tmp_path):
    """Not grpc's default (the whole server SERVING, every other name NOT_FOUND) until the
    server's first look at its models."""
    plane = Plane(ready=False, models=[Model("iris")])

    async def scenario():
        server = server_for(tmp_path, plane)
        await server.start()
        try:
            return {name: await health(server, name) for name in ("", V2, "iris")}
        finally:
            await server.stop(0)

    assert running(scenario()) == {"": NOT_SERVING, V2: NOT_SERVING, "iris": SERVING}


def test_health_follows_readiness_the_server_each_service_and_each_model_by_name(tmp_path):
    plane = Plane()

    async def scenario():
        server = server_for(tmp_path, plane)
        await server.start()
        try:
            await health_becomes(server, {"": NOT_SERVING, V2: NOT_SERVING})
            plane.models = [Model("iris"), Model("cifar10", problem="a broken version")]
            plane.ready = True
            await health_becomes(server, {"": SERVING, V2: SERVING, "iris": SERVING, "cifar10": NOT_SERVING})
            plane.models = [Model("cifar10")]
            await health_becomes(server, {"iris": NOT_SERVING, "cifar10": SERVING})
            assert await health(server, "tulip") == grpc.StatusCode.NOT_FOUND  # never served
        finally:
            await server.stop(0)
        looks = plane.looks
        await asyncio.sleep(1.2)  # two of health's intervals
        assert plane.looks == looks, "a stopped server still watches the models"

    running(scenario())


def test_draining_turns_health_off_and_closing_stops_taking_calls(tmp_path):
    plane = Plane(ready=True, models=[Model("iris")])

    async def scenario():
        server = server_for(tmp_path, plane)
        await server.start()
        await health_becomes(server, {"": SERVING})
        server.draining()
        await health_becomes(server, {"": NOT_SERVING, V2: NOT_SERVING})
        assert (await infer(server))[0] == grpc.StatusCode.OK  # still answering while it drains
        server.closing()
        stopping = server.stop(60)  # the stop under way, shared: not a second one
        assert server.stop(0) is stopping
        await asyncio.wait_for(stopping, 10)
        assert (await infer(server, timeout=2))[0] == grpc.StatusCode.UNAVAILABLE

    running(scenario())


def test_the_api_key_guards_only_the_methods_named_and_is_read_from_either_header(tmp_path):
    async def scenario():
        server = server_for(tmp_path, Plane(), api_key=KEY)
        await server.start()
        try:
            for metadata in ((), (("x-api-key", "wrong"),), (("authorization", "Bearer wrong"),)):
                assert (await infer(server, metadata=metadata))[:2] == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or wrong API key",
                )
            for metadata in ((("x-api-key", KEY),), (("authorization", f"Bearer {KEY}"),)):
                assert (await infer(server, metadata=metadata))[0] == grpc.StatusCode.OK
            assert (await call(server, LIVE, oip.ServerLiveRequest(), oip.ServerLiveResponse))[2].live
        finally:
            await server.stop(0)

    running(scenario())


def test_without_an_api_key_every_method_is_open(tmp_path):
    async def scenario():
        server = server_for(tmp_path, Plane())
        await server.start()
        try:
            return await infer(server)
        finally:
            await server.stop(0)

    assert running(scenario())[0] == grpc.StatusCode.OK


def test_errors_get_the_tables_code_and_message_and_a_full_queue_its_retry_hint(tmp_path, caplog):
    async def scenario():
        server = server_for(tmp_path, Plane())
        await server.start()
        try:
            answers = {name: await infer(server, name) for name in ("ok", "unknown", "full", "bug")}
            unimplemented = await call(
                server, f"/{V2}/ServerReady", oip.ServerReadyRequest(), oip.ServerReadyResponse
            )
            return server.metrics, answers, unimplemented
        finally:
            await server.stop(0)

    metrics, answers, unimplemented = running(scenario())
    served_by = ("x-served-by", replica_identity())
    assert answers["ok"][2].id == "ok" and served_by in answers["ok"][3].items()
    assert answers["unknown"][:2] == (grpc.StatusCode.NOT_FOUND, "no model named 'tulip'")
    assert answers["full"][:2] == (grpc.StatusCode.UNAVAILABLE, "the queue is full")
    assert {("retry-after", "3"), served_by} <= set(answers["full"][3].items())
    assert "retry-after" not in answers["unknown"][3]
    assert answers["bug"][:2] == (grpc.StatusCode.INTERNAL, "internal error")  # no detail leaks
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [f"{INFER} failed"]
    assert unimplemented[0] == grpc.StatusCode.UNIMPLEMENTED
    counted = {
        s.labels["status"]: s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "http_requests_total"
        and s.labels["route"] == INFER
        and (s.labels["method"], s.labels["protocol"]) == ("POST", "grpc")
    }
    assert counted == {"200": 1, "404": 1, "503": 1, "500": 1}
    latency = metrics.registry.get_sample_value(
        "http_request_duration_seconds_count", {"route": INFER, "protocol": "grpc"}
    )
    assert latency == 4
    took = metrics.registry.get_sample_value(
        "http_request_duration_seconds_sum", {"route": INFER, "protocol": "grpc"}
    )
    assert 0 < took < 10  # each call's own time, in seconds
    assert metrics.registry.get_sample_value("service_errors_total", {"kind": "unhandled"}) == 1


class CancelledContext:
    """What the Door reads of a call grpc.aio cancels: the time it had left, as grpc gives it
    (`max(deadline - now, 0)`: 0 once the deadline has passed; None without a deadline)."""

    def __init__(self, time_remaining: float | None):
        self.remaining = time_remaining

    def time_remaining(self) -> float | None:
        return self.remaining

    def set_trailing_metadata(self, metadata) -> None:
        pass

    def invocation_metadata(self):
        return ()


@pytest.mark.parametrize(
    "time_remaining, counted",
    [(0.0, "504"), (None, "499"), (0.001, "499"), (5.0, "499")],
    ids=["deadline passed", "no deadline", "a moment left", "time left"],
)
def test_a_cancelled_call_is_counted_504_once_its_deadline_has_passed_else_499(time_remaining, counted):
    """Which of the two a call over the wire reaches races (at its deadline the client cancels
    too, and either can reach the server first), so the Door is called here as grpc.aio calls
    it, with a call cancelled as grpc.aio cancels it."""
    metrics = Metrics()

    async def waits(request, context):
        raise asyncio.CancelledError

    answer = Door(metrics, guarded=(), expected_key=None)._answer(INFER, waits, guarded=False)
    with pytest.raises(asyncio.CancelledError):
        running(answer(oip.ModelInferRequest(), CancelledContext(time_remaining)))
    statuses = {
        s.labels["status"]: s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "http_requests_total"
    }
    assert statuses == {counted: 1}


def test_a_call_its_client_cancels_is_counted_499_however_little_time_it_had_left(tmp_path):
    """(One past its deadline is DEADLINE_EXCEEDED to its client, and counted 504 or, when the
    client's own cancel at the deadline reaches the server first, 499: a race, not tested here
    but above, in-process.)"""

    def counted(server: GrpcServer) -> dict[str, float]:
        return {
            s.labels["status"]: s.value
            for family in server.metrics.registry.collect()
            for s in family.samples
            if s.name == "http_requests_total"
        }

    async def scenario():
        server = server_for(tmp_path, Plane())
        await server.start()
        try:
            late = await infer(server, "slow", timeout=0.3)
            for _ in range(50):  # the server counts a call as its task ends
                if sum((before := counted(server)).values()) == 1:
                    break
                await asyncio.sleep(0.05)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
                rpc = channel.unary_unary(
                    INFER,
                    request_serializer=oip.ModelInferRequest.SerializeToString,
                    response_deserializer=oip.ModelInferResponse.FromString,
                )
                # Cancelled with much of its time left, and with under a second of it left.
                cancelled = [rpc(oip.ModelInferRequest(id="slow"), timeout=t) for t in (30, 1.5)]
                await asyncio.sleep(0.8)
                for call in cancelled:
                    call.cancel()
            for _ in range(50):
                if sum((after := counted(server)).values()) == 3:
                    break
                await asyncio.sleep(0.05)
            return late[0], {status: after[status] - before.get(status, 0) for status in after}
        finally:
            await server.stop(0)

    late, cancels = running(scenario())
    assert late == grpc.StatusCode.DEADLINE_EXCEEDED
    assert {status: n for status, n in cancels.items() if n} == {"499": 2}


def test_a_message_is_held_to_the_http_body_limit(tmp_path):
    def sizes(target: str) -> list[grpc.StatusCode]:
        codes = []
        with grpc.insecure_channel(target) as channel:  # a client of its own thread, as clients are
            rpc = channel.unary_unary(
                INFER,
                request_serializer=oip.ModelInferRequest.SerializeToString,
                response_deserializer=oip.ModelInferResponse.FromString,
            )
            for size in (3000, 5000):
                try:
                    rpc(oip.ModelInferRequest(id="x" * size), timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
        return codes

    async def scenario():
        server = server_for(tmp_path, Plane(), max_upload_bytes=4096)
        await server.start()
        try:
            return await asyncio.to_thread(sizes, f"127.0.0.1:{server.settings.grpc_port}")
        finally:
            await server.stop(0)

    assert running(scenario()) == [grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]


def test_a_port_another_listener_holds_is_refused_with_why(tmp_path):
    with socket.socket() as other:  # no SO_REUSEPORT: not a fellow worker's
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = server_for(tmp_path, Plane())
        server.settings = server.settings.model_copy(update={"grpc_port": port})
        with pytest.raises(
            GrpcPortTaken,
            match=rf"GRPC_PORT {port} on 127.0.0.1 cannot be bound \(Address already in use\): another",
        ):
            server.check_port()


def test_fellow_workers_share_the_port_and_an_ipv6_host_is_bracketed(tmp_path):
    first = server_for(tmp_path, Plane())

    async def scenario():
        await first.start()
        try:
            second = server_for(tmp_path, Plane())
            second.settings = first.settings
            second.check_port()  # SO_REUSEPORT, as the workers' servers bind it
        finally:
            await first.stop(0)

    running(scenario())
    ipv6 = server_for(tmp_path, Plane(), host="::1")
    assert ipv6.address == f"[::1]:{ipv6.settings.grpc_port}"
    if socket.has_ipv6:
        ipv6.check_port()


@pytest.mark.parametrize("age_s", [0, 0.2])
def test_connections_end_at_their_age_and_a_call_in_flight_still_finishes(tmp_path, age_s):
    """A channel's connection ends (GOAWAY) once GRPC_MAX_CONNECTION_AGE_S is past, so that its
    next call may reach another worker; 0 keeps it. A call still running when it ages finishes."""

    async def scenario():
        server = server_for(tmp_path, Plane(), grpc_max_connection_age_s=age_s, shutdown_timeout_s=10)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
                rpc = channel.unary_unary(
                    INFER,
                    request_serializer=oip.ModelInferRequest.SerializeToString,
                    response_deserializer=oip.ModelInferResponse.FromString,
                )
                answer = await rpc(oip.ModelInferRequest(id="a second"), timeout=10)
                return answer.id, channel.get_state()
        finally:
            await server.stop(0)

    answered, state = running(scenario())
    assert answered == "a second"
    assert (state == grpc.ChannelConnectivity.READY) == (age_s == 0)


def test_health_reads_the_models_twice_a_second_not_in_a_busy_loop(tmp_path):
    plane = Plane(ready=True)

    async def scenario():
        server = server_for(tmp_path, plane)
        await server.start()
        try:
            await asyncio.sleep(2.2)
            return plane.looks
        finally:
            await server.stop(0)

    # Once at the start, then every 0.5 s: five looks in 2.2 s, at least three on a machine
    # busy enough to hold the event loop back (once a second would be two), at most six.
    assert 3 <= running(scenario()) <= 6


def test_an_aged_connections_calls_get_shutdown_timeout_s_to_finish_and_no_more(tmp_path):
    """An aged connection is held open for its calls in flight for SHUTDOWN_TIMEOUT_S, as a
    draining server is: a call that outlives that is ended, not kept for ever."""

    async def scenario():
        server = server_for(tmp_path, Plane(), grpc_max_connection_age_s=0.2, shutdown_timeout_s=1)
        await server.start()
        try:
            started = time.monotonic()
            code, *_ = await call(server, INFER, oip.ModelInferRequest(id="slow"), oip.ModelInferResponse)
            return code, time.monotonic() - started
        finally:
            await server.stop(0)

    code, seconds = running(scenario())
    assert code == grpc.StatusCode.UNAVAILABLE
    assert seconds < 4  # the call takes 5 s: ended at the age plus the grace


def test_a_port_taken_between_the_check_and_the_start_is_refused_with_why(tmp_path):
    server = server_for(tmp_path, Plane())
    server.check_port()
    with socket.socket() as other:  # another program, quicker than the models' loading
        other.bind(("127.0.0.1", server.settings.grpc_port))
        other.listen()
        with pytest.raises(
            GrpcPortTaken, match=f"GRPC_PORT {server.settings.grpc_port} on 127.0.0.1 cannot be bound"
        ):
            running(server.start())
