"""Overload and deadlines against `python -m service` with its defaults, measured from outside.

    python -m benchmarks.overload              # ~1.5 min; prints the figures
    python -m benchmarks.overload --json benchmarks/results/overload.json   # and keeps them
    python -m benchmarks.overload --stated     # clients also state their 1 s (Request-Timeout)
    python -m benchmarks.overload --client httpx   # the load sent with httpx (see RawClient)

1. Capacity: 32 clients send 16 photos a request (samples/*.jpg) back to back for 10 s, stating
   a deadline of 60 s (a header versions without deadlines ignore): images answered per second.
2. Overload: requests of 16 photos arrive at 2.5 x that capacity for 15 s, each from a client
   that gives up after 1 s (and closes its connection). Goodput: images answered within the
   1 s, per second, against the capacity. Then the recovery: seconds from the end of the load
   until a request is answered within 1 s again and the queues are empty; and the work done
   for clients that were gone: rows the model computed that no client received, in seconds
   at the measured capacity (and the rows computed after the load stopped).
3. gRPC: 20 concurrent ModelInfer calls of 128 rows with a 30 ms deadline (tritonclient's
   stubs): their codes, the rows that reached the model, the queue 1.5 s later, and whether
   the next call (128 rows, 10 s deadline) answers.

The load's clients speak HTTP/1.1 over bare sockets (`RawClient`): on a small machine an
HTTP library's own CPU would hold the offered load below the capacity. The figures come from
the clients' own clocks and the service's /metrics (rows computed:
`model_batch_size_sum`; queue: `model_queue_depth` + `model_rows_in_progress`, summed over
the workers). On a shared machine the capacity moves with the neighbours' load: the overload
is sized from the capacity measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from benchmarks.server import REPO, serve

MODEL = "cifar10"
ROUTE = f"/predict/image/{MODEL}"
PHOTOS_PER_REQUEST = 16
# 32 connections, so that SO_REUSEPORT's spread of them leaves every worker enough to do (with
# 8, the capacity measured moved between about 950 and 1,850 images/s from run to run).
CAPACITY_CLIENTS, CAPACITY_S = 32, 10.0
OVERLOAD, OVERLOAD_S, GIVE_UP_S = 2.5, 15.0, 1.0
GRPC_CALLS, GRPC_ROWS, GRPC_DEADLINE_S = 20, 128, 0.030


def multipart(photos: list[bytes]) -> tuple[bytes, str]:
    """One request's body, built once: its sending costs the client next to nothing."""
    request = httpx.Request(
        "POST", "http://x", files=[("file", (f"{i}.jpg", p)) for i, p in enumerate(photos)]
    )
    return request.read(), request.headers["content-type"]


class RawClient:
    """One request, sent again and again over HTTP/1.1 on asyncio's streams, its bytes built
    once: a client that costs next to nothing beside the service's work. httpx spends about a
    millisecond of CPU per request; on a 2-core machine shared with the service, that throttled
    the offered load to below the capacity as soon as most requests were answered. A request
    cancelled (its client giving up) closes its connection, as httpx's does."""

    def __init__(self, url: str, route: str, body: bytes, headers: dict[str, str]):
        self.address = httpx.URL(url)
        head = {"host": self.address.netloc.decode(), **headers, "content-length": str(len(body))}
        lines = [f"POST {route} HTTP/1.1", *(f"{name}: {value}" for name, value in head.items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self) -> int:
        """The response's status code (its body read and dropped)."""
        connection = self._idle.pop() if self._idle else await self._connect()
        reader, writer = connection
        try:
            writer.write(self.request)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("the service closed the connection")
            status = int(status_line.split()[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise RuntimeError("a response without Content-Length")
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self._idle.append(connection)
        return status

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.address.host, self.address.port)

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()


class HttpxClient:
    """The same request through httpx (`--client httpx`), as most Python clients send it."""

    def __init__(self, url: str, route: str, body: bytes, headers: dict[str, str]):
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
        self._client = httpx.AsyncClient(base_url=url, limits=limits, timeout=60)
        self._request = {"url": route, "content": body, "headers": headers}

    async def post(self) -> int:
        return (await self._client.post(**self._request)).status_code

    async def aclose(self) -> None:
        await self._client.aclose()


CLIENTS = {"raw": RawClient, "httpx": HttpxClient}


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples for MODEL (every worker's, already summed by the service)."""
    return sum(s.value for s in samples(text) if s.name == name and s.labels.get("model") == MODEL)


async def scrape(client: httpx.AsyncClient) -> tuple[float, float, float]:
    """(rows the model has computed so far, rows queued now, rows in the model now)."""
    text = (await client.get("/metrics", timeout=10)).text
    computed = metric(text, "model_batch_size_sum")
    return computed, metric(text, "model_queue_depth"), metric(text, "model_rows_in_progress")


def statuses(text: str, protocol: str) -> dict[str, int]:
    """Requests the service counted, by status: the image route's, or every gRPC call's."""
    counts: Counter = Counter()
    for s in samples(text):
        labels = s.labels
        ours = protocol == "grpc" or labels.get("route") == "/predict/image/{model}"
        if s.name == "http_requests_total" and labels.get("protocol") == protocol and ours:
            counts[labels["status"]] += int(s.value)
    return dict(sorted(counts.items()))


async def capacity(url: str, body: bytes, headers: dict[str, str], kind: str = "raw") -> float:
    """Images answered per second by CAPACITY_CLIENTS clients sending back to back, each
    stating a deadline of a minute: the service's throughput, with nothing refused for time."""
    headers = {**headers, "request-timeout": "60"}
    answered = 0
    stop = time.monotonic() + CAPACITY_S

    client = CLIENTS[kind](url, ROUTE, body, headers)

    async def client_loop() -> None:
        nonlocal answered
        while time.monotonic() < stop:
            status = await client.post()  # awaited first: `answered +=` reads before its right side
            answered += PHOTOS_PER_REQUEST if status == 200 else 0

    for _ in range(4):  # warm-up, on whichever workers the connections reach
        await asyncio.gather(*(client.post() for _ in range(CAPACITY_CLIENTS)))
    started = time.monotonic()
    stop = started + CAPACITY_S
    await asyncio.gather(*(client_loop() for _ in range(CAPACITY_CLIENTS)))
    await client.aclose()
    return answered / (time.monotonic() - started)


async def overload(
    url: str, body: bytes, headers: dict[str, str], images_per_s: float, kind: str = "raw"
) -> dict:
    rate = OVERLOAD * images_per_s / PHOTOS_PER_REQUEST  # requests per second
    outcomes: Counter = Counter()
    in_time = 0

    client = CLIENTS[kind](url, ROUTE, body, headers)

    async def one() -> None:
        nonlocal in_time
        try:
            async with asyncio.timeout(GIVE_UP_S):  # gives up, and closes its connection
                status = await client.post()
            outcomes[str(status)] += 1
            in_time += status == 200
        except TimeoutError:
            outcomes["gave up"] += 1
        except (OSError, EOFError, httpx.HTTPError) as error:  # reset, or closed mid-answer
            outcomes[type(error).__name__] += 1

    async with httpx.AsyncClient(base_url=url) as probe:
        computed_before, *_ = await scrape(probe)
        tasks, started = [], time.monotonic()
        for n in itertools.count():  # evenly spaced arrivals, not waiting for answers
            at = started + n / rate
            if at >= started + OVERLOAD_S:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        stopped = time.monotonic()
        computed_at_stop, *_ = await scrape(probe)
        # Recovery, probed from the moment the load stops (while its last clients still wait):
        # a request answered within GIVE_UP_S, and then nothing left queued or computing.
        answered_again = recovered = None
        probes_answered = 0
        while recovered is None and time.monotonic() - stopped < 30:
            probe_started = time.monotonic()
            try:
                response = await probe.post(ROUTE, content=body, headers=headers, timeout=GIVE_UP_S)
                ok = response.status_code == 200
            except httpx.TimeoutException:
                ok = False
            probes_answered += ok
            if ok and answered_again is None:
                answered_again = time.monotonic() - stopped
            _, queued, computing = await scrape(probe)
            if answered_again is not None and not queued + computing:
                recovered = time.monotonic() - stopped
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - probe_started)))
        await asyncio.gather(*tasks)
        await client.aclose()
        await asyncio.sleep(1.0)
        computed_after, *_ = await scrape(probe)
        text = (await probe.get("/metrics")).text
    probed = PHOTOS_PER_REQUEST * probes_answered  # the recovery probes' rows, not the load's
    computed = computed_after - computed_before - probed
    return {
        "offered_images_per_s": rate * PHOTOS_PER_REQUEST,
        # What this client managed to send: less than offered when its own CPU is short.
        "sent_images_per_s": len(tasks) * PHOTOS_PER_REQUEST / (stopped - started),
        "requests": len(tasks),
        "outcomes": dict(sorted(outcomes.items())),
        "goodput_images_per_s": in_time * PHOTOS_PER_REQUEST / (stopped - started),
        "answered_again_s": answered_again,
        "recovered_s": recovered,
        "rows_computed": computed,
        "rows_for_clients_gone": computed - PHOTOS_PER_REQUEST * in_time,
        "rows_computed_after_load": computed_after - computed_at_stop - probed,
        "server_statuses": statuses(text, "native"),
    }


async def grpc_deadlines(url: str, grpc_port: int) -> dict:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    metadata = await stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=MODEL), timeout=10)
    shape = [GRPC_ROWS, *metadata.inputs[0].shape[1:]]
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name=metadata.inputs[0].name, datatype=metadata.inputs[0].datatype, shape=shape)
    request.raw_input_contents.append(np.zeros(shape, np.uint8).tobytes())

    async def call(timeout: float) -> str:
        try:
            await stub.ModelInfer(request, timeout=timeout)
            return "OK"
        except grpc.aio.AioRpcError as error:
            return error.code().name

    async with httpx.AsyncClient(base_url=url) as probe:
        await call(10)  # each worker this channel reaches has measured a batch
        computed_before, *_ = await scrape(probe)
        codes = Counter(await asyncio.gather(*(call(GRPC_DEADLINE_S) for _ in range(GRPC_CALLS))))
        _, queued_at_end, computing_at_end = await scrape(probe)
        await asyncio.sleep(1.5)
        computed_after, queued_later, computing_later = await scrape(probe)
        next_call = await call(10)
        text = (await probe.get("/metrics")).text
    await channel.close()
    return {
        "codes": dict(codes),
        "rows_reaching_model": computed_after - computed_before + computing_later,  # or in it now
        "when_calls_ended": (queued_at_end, computing_at_end),
        "1.5_s_later": (queued_later, computing_later),
        "next_call": next_call,
        "server_statuses": statuses(text, "grpc"),
    }


def report_overload(o: dict, images_per_s: float, stated: bool) -> None:
    print(
        f"overload: {o['offered_images_per_s']:.0f} images/s offered ({OVERLOAD}x) for {OVERLOAD_S:.0f} s,"
        f" {o['requests']} requests, clients giving up after {GIVE_UP_S} s"
        + (" and stating it (Request-Timeout)" if stated else " without saying so")
    )
    print(f"  sent: {o['sent_images_per_s']:.0f} images/s ({o['sent_images_per_s'] / images_per_s:.1f}x)")
    print(f"  client outcomes: {o['outcomes']}")
    print(f"  server statuses: {o['server_statuses']}")
    goodput = o["goodput_images_per_s"]
    print(
        f"  goodput: {goodput:.0f} images/s answered within {GIVE_UP_S} s"
        f" = {goodput / images_per_s:.2f} of capacity"
    )
    print(
        f"  after the load: answered within {GIVE_UP_S} s again after {o['answered_again_s']} s;"
        f" recovered (answered, nothing queued or computing) after {o['recovered_s']} s"
    )
    gone = o["rows_for_clients_gone"]
    print(
        f"  rows computed: {o['rows_computed']:.0f}, for clients already gone: {gone:.0f}"
        f" = {gone / images_per_s:.2f} s of work at capacity;"
        f" computed after the load stopped: {o['rows_computed_after_load']:.0f}"
    )


def report_grpc(g: dict) -> None:
    print(
        f"gRPC: {GRPC_CALLS} concurrent ModelInfer calls of {GRPC_ROWS} rows,"
        f" {GRPC_DEADLINE_S * 1000:.0f} ms deadline"
    )
    print(f"  codes: {g['codes']}; server statuses (all gRPC calls): {g['server_statuses']}")
    print(
        f"  rows that reached the model: {g['rows_reaching_model']:.0f};"
        f" (queued, computing) rows when the calls ended: {g['when_calls_ended']},"
        f" 1.5 s later: {g['1.5_s_later']}; next call: {g['next_call']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stated", action="store_true", help="clients send Request-Timeout: 1")
    parser.add_argument("--model-dir", default=str(REPO / "models"))
    parser.add_argument(
        "--client", choices=CLIENTS, default="raw", help="how the load is sent (default: bare sockets)"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted((REPO / "samples").glob("*.jpg"))]
    body, content_type = multipart(list(itertools.islice(itertools.cycle(photos), PHOTOS_PER_REQUEST)))
    headers = {"content-type": content_type, **({"request-timeout": str(GIVE_UP_S)} if args.stated else {})}
    log = Path(tempfile.mkdtemp(prefix="overload-")) / "server.log"
    with serve("service", args.model_dir, log) as server:
        print(f"service: {server.url}, gRPC port {server.grpc_port}, its defaults; log {log}")
        images_per_s = asyncio.run(capacity(server.url, body, headers, args.client))
        print(
            f"capacity: {images_per_s:.0f} images/s"
            f" ({CAPACITY_CLIENTS} clients, {PHOTOS_PER_REQUEST} photos a request)"
        )
        overloaded = asyncio.run(overload(server.url, body, headers, images_per_s, args.client))
        report_overload(overloaded, images_per_s, args.stated)
        grpc_calls = asyncio.run(grpc_deadlines(server.url, server.grpc_port))
        report_grpc(grpc_calls)
    if args.json:
        figures = {
            "command": "python -m benchmarks.overload " + " ".join(sys.argv[1:]),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "client": args.client,
            "stated": args.stated,
            "capacity_images_per_s": images_per_s,
            "goodput_of_capacity": overloaded["goodput_images_per_s"] / images_per_s,
            "overload": overloaded,
            "grpc": grpc_calls,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
