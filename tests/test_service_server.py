"""The real server, `python -m service`, over real sockets: slow and oversized bodies, SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import time

import httpx
import pytest
from deployments import wait_for
from payloads import GOOD_FEATURES, GOOD_IMAGE
from served import serve

pytestmark = pytest.mark.server  # starts `python -m service`

MAX_UPLOAD = 200_000
SETTINGS = {
    "POLL_INTERVAL_S": "0",
    "BODY_TIMEOUT_S": "1",
    "MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "LOG_LEVEL": "warning",
}


@pytest.fixture(scope="module")
def server(shared_models, tmp_path_factory):
    """`python -m service` on a free port, configured through its environment, ready."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with serve(shared_models, log, ready_timeout=120, **SETTINGS) as running:
        yield running


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw_request(port: int, head: bytes, body_parts=(), pause: float = 0.0) -> tuple[int, bytes]:
    """Send a request by hand, a part at a time; returns the status and the response body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head)
        for part in body_parts:
            time.sleep(pause)
            try:
                connection.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed early, which is the point
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            response += chunk
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


def test_predictions_over_real_http(server):
    base = server.url
    assert httpx.post(f"{base}/predict/image", files={"file": GOOD_IMAGE}).status_code == 200
    assert httpx.post(f"{base}/predict/iris", json=GOOD_FEATURES).json()["model"] == "iris"


def test_a_client_trickling_its_body_is_cut_off(server):
    base, port = server.url, port_of(server.url)
    head = (
        b"POST /predict/iris HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    started = time.monotonic()
    status, body = raw_request(port, head, [b"{"] * 8, pause=0.25)  # 2 s for 8 of 1000 bytes
    assert status == 408 and b"not received in time" in body
    assert time.monotonic() - started < 8
    assert httpx.post(f"{base}/predict/iris", json=GOOD_FEATURES).status_code == 200


def test_declared_length_over_the_cap_is_refused_before_reading(server):
    port = port_of(server.url)
    head = (
        b"POST /predict/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    status, body = raw_request(port, head)
    assert status == 413 and b"over 200000 bytes" in body


def test_chunked_body_over_the_cap_is_cut_off_while_streaming(server):
    port = port_of(server.url)
    head = (
        b"POST /predict/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    part_head = chunk(b'--B\r\nContent-Disposition: form-data; name="file"\r\n\r\n')
    status, body = raw_request(port, head, [part_head] + [chunk(bytes(50_000))] * 40)  # 2 MB, 200 kB allowed
    assert status == 413 and b"over 200000 bytes" in body


def in_flight(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", headers={"Connection": "close"}).text
    return float(re.search(r"^http_requests_in_flight (\S+)$", metrics, re.MULTILINE)[1])


def test_sigterm_lets_the_request_in_flight_finish_then_exits_cleanly(shared_models, tmp_path):
    # The body is held back on purpose here; two workers, either of which may hold our request.
    patient = {**SETTINGS, "BODY_TIMEOUT_S": "30", "WORKERS": "2"}
    with serve(shared_models, tmp_path / "server.log", **patient) as server:
        port = port_of(server.url)
        body = b'{"features": [5.1, 3.5, 1.4, 0.2]}'
        head = (
            b"POST /predict/iris HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(head + body[:10])
            # Our request is under way once the app has it: in flight, counted by whichever
            # worker holds it, beside the scrape that asks (one scrape sums every worker's).
            wait_for(lambda: in_flight(server.url) == 2)
            server.process.send_signal(signal.SIGTERM)

            def refuses_connections() -> bool:  # shutting down: no longer listening
                try:
                    httpx.get(f"{server.url}/healthz", timeout=1)
                except httpx.TransportError:
                    return True
                return False

            wait_for(refuses_connections, timeout=30)
            connection.sendall(body[10:])
            response = b""
            while chunk := connection.recv(65536):  # the server closes the connection after answering
                response += chunk
        assert response.startswith(b"HTTP/1.1 200") and b'"model":"iris"' in response
        assert server.process.wait(timeout=30) == 0
