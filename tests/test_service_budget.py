"""The decode budget: what decoding hostile uploads may cost in memory (per worker) and in
pixels (per request), measured, not only answered."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time

import pytest
from deployments import serving
from payloads import assert_error, encode, photo
from PIL import Image, ImageFile
from prometheus_client import CollectorRegistry, Gauge

from service.app import DECODER_NICENESS
from service.budget import MIB, BudgetExceeded, DecodeBudget, DecoderBusy
from service.images import decode_image
from service.process.serve import give_memory_back

SIZE = (32, 32)
MAX_PIXELS = 50_000_000

# Run in a fresh interpreter, so its peak RSS is this one decode's: the bytes decoding held
# beyond the interpreter's, next to what the budget was told it would hold.
MEASURE = """
import io, sys
from PIL import Image
from service.images import decode_image, decoding_cost, reduction
data = sys.stdin.buffer.read()
image = Image.open(io.BytesIO(data))
header = image.size
image.draft(None, (96, 96))
estimate = decoding_cost(image, header, reduction(image.size, (32, 32)))

def peak_rss():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024

open("/proc/self/clear_refs", "w").write("5")  # the peak so far: ours, not the parent's (fork)
before = peak_rss()
decode_image(data, (32, 32), 50_000_000)
print(peak_rss() - before, estimate)
"""


def bomb(mode: str, format: str, side: int = 4000, **params) -> bytes:
    """A small file that decodes to `side`² pixels of `mode`."""
    buffer = io.BytesIO()
    Image.new(mode, (side, side)).save(buffer, format, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mode, format, params",
    [
        ("I;16", "PNG", {}),  # 16-bit: was copied as int64, 8 bytes a pixel, three times
        ("RGBA", "PNG", {}),
        ("P", "GIF", {}),
        ("RGB", "WEBP", {"quality": 1}),
        ("I", "TIFF", {"compression": "tiff_deflate"}),
        ("F", "TIFF", {"compression": "tiff_deflate"}),
        ("RGB", "JPEG", {"progressive": True}),
        ("1", "BMP", {}),
    ],
)
def test_decoding_holds_no_more_memory_than_the_budget_is_told(mode, format, params):
    data = bomb(mode, format, **params)
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE], input=data, capture_output=True, check=True, timeout=60
    )
    peak, estimate = map(int, measured.stdout.split())
    assert peak <= estimate, f"{format} {mode}: held {peak / MIB:.0f} MiB, estimated {estimate / MIB:.0f}"


def test_a_file_that_can_never_fit_is_refused_naming_the_budget_before_decoding(monkeypatch):
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image))
    budget = DecodeBudget(16 * MIB, wait_s=0, max_request_pixels=MAX_PIXELS)
    with pytest.raises(BudgetExceeded, match="decode budget of 16 MiB per worker"):
        decode_image(bomb("RGB", "PNG", 3000), SIZE, MAX_PIXELS, budget.for_request())
    assert decoded == []
    assert budget.taken == 0


def test_a_request_waits_for_the_budget_other_decodes_hold_then_gets_busy():
    budget = DecodeBudget(64 * MIB, wait_s=0.3, max_request_pixels=MAX_PIXELS)
    data = bomb("L", "PNG", 4000)  # about 40 MiB with its strip: two never fit at once
    with budget.holding(40 * MIB):
        started = time.monotonic()
        with pytest.raises(DecoderBusy):
            decode_image(data, SIZE, MAX_PIXELS, budget.for_request())
        assert time.monotonic() - started >= 0.3

    budget.wait_s = 5.0
    held = threading.Event()

    def hold_briefly():
        with budget.holding(40 * MIB):
            held.set()
            time.sleep(0.2)

    other = threading.Thread(target=hold_briefly)
    other.start()
    held.wait()
    assert decode_image(data, SIZE, MAX_PIXELS, budget.for_request()).shape == (32, 32, 3)  # once freed
    other.join()
    assert budget.taken == 0


def test_the_budget_in_use_is_published_for_the_pod_wide_signal():
    registry = CollectorRegistry()
    in_use = Gauge("in_use_bytes", "held", registry=registry)
    capacity = Gauge("budget_bytes", "budget", registry=registry)
    budget = DecodeBudget(64 * MIB, wait_s=0, max_request_pixels=MAX_PIXELS, in_use=in_use, budget=capacity)
    assert registry.get_sample_value("budget_bytes") == 64 * MIB
    with budget.holding(10 * MIB), budget.holding(5 * MIB):
        assert registry.get_sample_value("in_use_bytes") == 15 * MIB
    assert registry.get_sample_value("in_use_bytes") == 0


def test_decodes_in_flight_never_hold_more_than_the_budget(monkeypatch):
    budget = DecodeBudget(100 * MIB, wait_s=10, max_request_pixels=MAX_PIXELS)
    most = []
    load = ImageFile.ImageFile.load

    def watched(image):
        most.append(budget.taken)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", watched)
    data = bomb("L", "PNG", 4000)  # about 66 MiB each: one at a time, of six threads
    threads = [
        threading.Thread(target=decode_image, args=(data, SIZE, MAX_PIXELS, budget.for_request()))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0 < max(most) <= 100 * MIB
    assert budget.taken == 0


def test_a_request_decodes_at_most_its_pixels_in_all(monkeypatch):
    loaded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile,
        "load",
        lambda image: (loaded.append(image), load(image))[1],
    )
    budget = DecodeBudget(100 * MIB, wait_s=0, max_request_pixels=25_000)
    request = budget.for_request()
    data = encode(photo(size=(100, 100)), "PNG")
    decode_image(data, SIZE, MAX_PIXELS, request)
    decode_image(data, SIZE, MAX_PIXELS, request)
    with pytest.raises(BudgetExceeded, match="25,000 pixels one request may decode"):
        decode_image(data, SIZE, MAX_PIXELS, request)
    assert len({id(image) for image in loaded if image.format == "PNG"}) == 2  # not the third
    assert decode_image(data, SIZE, MAX_PIXELS, budget.for_request()).shape == (32, 32, 3)  # a new request


def test_a_large_file_is_not_decoded_on_the_event_loop(monkeypatch):
    from service.resizing import NotBuiltYet

    data = bomb("L", "PNG", 2000)  # 5 KB, 4 M pixels
    assert len(data) < 16 * 1024
    with pytest.raises(NotBuiltYet):  # resizing to the model's size needs no matrix here
        decode_image(data, SIZE, MAX_PIXELS, undo_enlargements=False, build=False)


# --- through the routes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_budget(shared_models):
    with serving(
        shared_models, decode_budget_mb=64, decode_wait_s=1.0, max_request_pixels=16_000_000
    ) as client:
        yield client


def upload(client, *files: bytes, path="/predict/image/cifar10"):
    return client.post(path, files=[("file", (f"{i}.png", data)) for i, data in enumerate(files)])


def test_an_upload_over_the_budget_is_a_413_naming_it(small_budget):
    response = upload(small_budget, bomb("RGB", "PNG", 3500))  # 49 MB decoded + a 24 MB strip, 36 KB sent
    assert_error(response, 413, "decode budget of 64 MiB per worker (DECODE_BUDGET_MB)")


def test_a_request_over_its_pixels_is_a_413_naming_them(small_budget):
    response = upload(small_budget, *[bomb("L", "PNG", 2500)] * 3)  # 6.25 M pixels each
    assert_error(response, 413, "16,000,000 pixels one request may decode (MAX_REQUEST_PIXELS)")


def test_the_protocols_answer_the_budget_in_their_own_format(small_budget):
    data = base64.b64encode(bomb("RGB", "PNG", 3500)).decode()
    response = small_budget.post("/v1/models/cifar10:predict", json={"instances": [{"b64": data}]})
    assert response.status_code == 413 and "DECODE_BUDGET_MB" in response.json()["error"]


def test_a_busy_budget_is_a_503_with_retry_after(small_budget):
    budget = small_budget.app.state.dataplane.decode_budget
    with budget.holding(budget.capacity):  # another upload holds all of it
        response = upload(small_budget, bomb("L", "PNG", 1000))
    assert_error(response, 503, "busy decoding")
    assert response.headers["retry-after"] == "1"
    assert upload(small_budget, bomb("L", "PNG", 1000)).status_code == 200


def test_decoder_threads_run_at_a_lower_cpu_priority_than_the_event_loop(client):
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    (in_a_decoder,) = client.portal.call(client.app.state.decoders.map, lambda _: niceness(), [None])
    # Relative to the event loop's (the tests may run under `nice -n 19`: 19 is the lowest).
    assert in_a_decoder == min(niceness() + DECODER_NICENESS, 19)


def test_python_m_service_gives_freed_memory_back_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    give_memory_back()
    assert os.environ["MALLOC_ARENA_MAX"] == "2"
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "65536"  # the operator's own setting stays


def test_a_request_over_its_pixels_is_a_413_even_when_the_budget_is_busy(small_budget):
    budget = small_budget.app.state.dataplane.decode_budget
    with budget.holding(budget.capacity - 1):  # every file of it would have to wait
        response = upload(small_budget, *[bomb("L", "PNG", 2500)] * 3)
    assert_error(response, 413, "MAX_REQUEST_PIXELS")


def test_a_file_over_the_budget_is_refused_naming_both_sizes_in_mib():
    budget = DecodeBudget(64 * 1_048_576, wait_s=0, max_request_pixels=MAX_PIXELS)
    with pytest.raises(BudgetExceeded) as refused, budget.holding(1000 * 1_048_576):
        pass
    assert str(refused.value) == (
        "decoding it takes about 1000 MiB, more than the decode budget of 64 MiB per worker"
        " (DECODE_BUDGET_MB)"
    )
    with budget.holding(64 * 1_048_576):  # exactly the budget fits
        assert budget.taken == 67_108_864


def test_a_request_may_decode_exactly_its_pixels_and_not_one_more():
    budget = DecodeBudget(64 * 1_048_576, wait_s=0, max_request_pixels=1000)
    request = budget.for_request()
    with request.holding(600, 1), request.holding(400, 1):  # 1000 in all: exactly the cap
        pass
    with pytest.raises(BudgetExceeded, match="more than the 1,000 pixels"), request.holding(1, 1):
        pass
