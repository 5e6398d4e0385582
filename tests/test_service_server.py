"""The real server, `python -m service`, over real sockets: slow and oversized bodies, SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import wait_for
from test_service_errors import GOOD_FEATURES, GOOD_IMAGE

ROOT = Path(__file__).resolve().parents[1]
MAX_UPLOAD = 200_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_models):
    """`python -m service` on a free port, configured through its environment, ready."""
    model_dir = tmp_path_factory.mktemp("served") / "models"
    shutil.copytree(shared_models, model_dir)
    port = free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "PORT": str(port),
        "POLL_INTERVAL_S": "0",
        "BODY_TIMEOUT_S": "1",
        "MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "LOG_LEVEL": "warning",
    }
    log = (tmp_path_factory.getbasetemp() / "server.log").open("w+")
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"

    def ready():
        assert process.poll() is None, "server exited"
        try:
            return httpx.get(f"{base}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, timeout=120, interval=0.2)
        yield process, base, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.seek(0)
        print(log.read())


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
    _, base, _ = server
    assert httpx.post(f"{base}/predict/image", files={"file": GOOD_IMAGE}).status_code == 200
    assert httpx.post(f"{base}/predict/iris", json=GOOD_FEATURES).json()["model"] == "iris"


def test_a_client_trickling_its_body_is_cut_off(server):
    _, base, port = server
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
    _, _, port = server
    head = (
        b"POST /predict/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    status, body = raw_request(port, head)
    assert status == 413 and b"over 200000 bytes" in body


def test_chunked_body_over_the_cap_is_cut_off_while_streaming(server):
    _, _, port = server
    head = (
        b"POST /predict/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    part_head = chunk(b'--B\r\nContent-Disposition: form-data; name="file"\r\n\r\n')
    status, body = raw_request(port, head, [part_head] + [chunk(bytes(50_000))] * 40)  # 2 MB, 200 kB allowed
    assert status == 413 and b"over 200000 bytes" in body


def test_sigterm_lets_the_request_in_flight_finish_then_exits_cleanly(server):
    process, _, port = server  # the last test of this module: it stops the server
    body = b'{"features": [5.1, 3.5, 1.4, 0.2]}'
    head = (
        b"POST /predict/iris HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head + body[:10])
        time.sleep(0.2)  # the request is under way
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        connection.sendall(body[10:])
        response = b""
        while chunk := connection.recv(65536):  # the server closes the connection after answering
            response += chunk
    assert response.startswith(b"HTTP/1.1 200") and b'"model":"iris"' in response
    assert process.wait(timeout=30) == 0
    with pytest.raises(httpx.TransportError):  # and it took no new connections
        httpx.get(f"http://127.0.0.1:{port}/healthz")
