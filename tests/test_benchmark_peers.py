"""The pure parts of `python -m benchmarks.peers`: which photos become payloads and how, the
CPU-per-request arithmetic, percentiles, the report's tables, and the command line. No peer is
installed or started here."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.peers.__main__ import newest_version, parse_args
from benchmarks.peers.httpx_load import is_prediction
from benchmarks.peers.loads import cpu_per_1000, nearest_rank
from benchmarks.peers.model import pillow_decode
from benchmarks.peers.payloads import enlarge, payload_files, training_photos
from benchmarks.peers.tables import lead, target, to_markdown


def jpeg(colour: tuple[int, int, int], size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A CIFAR-10-shaped archive: a test split first (to be ignored), then two training classes."""
    path = tmp_path / "cifar10.tar.gz"
    members = [
        ("cifar10/test/cat/0000.jpg", jpeg((0, 0, 255))),
        ("cifar10/train/airplane/0000.jpg", jpeg((255, 0, 0))),
        ("cifar10/train/airplane/0001.jpg", jpeg((255, 255, 0))),
        ("cifar10/train/cat/0000.jpg", jpeg((0, 255, 0))),
    ]
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def colour_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).mean(axis=(0, 1))


def test_payloads_are_the_first_training_photo_of_each_class_never_the_test_split(dataset):
    photos = training_photos(dataset)
    assert len(photos) == 2
    red, green = (colour_of(p) for p in photos)
    assert red[0] > 200 and red[1] < 50  # airplane/0000, not 0001 (yellow) nor test/cat (blue)
    assert green[1] > 200 and green[0] < 50


def test_enlarged_payloads_are_jpegs_of_the_asked_size_and_32px_is_the_original_bytes():
    original = jpeg((10, 200, 30))
    assert enlarge(original, None) is original
    with Image.open(io.BytesIO(enlarge(original, (640, 480)))) as image:
        assert (image.format, image.size) == ("JPEG", (640, 480))


def test_payloads_are_built_once_then_read_from_the_cache(dataset, tmp_path):
    files = payload_files("640x480", tmp_path / "cache", dataset)
    assert [f.name for f in files] == ["00.jpg", "01.jpg"]
    with Image.open(files[0]) as first:
        assert first.size == (640, 480)
    dataset.unlink()  # a rebuild would now fail
    assert payload_files("640x480", tmp_path / "cache", dataset) == files


def test_cpu_per_1000_requests():
    assert cpu_per_1000(2.5, 500) == 5.0
    assert cpu_per_1000(0.3, 3000) == 0.1
    assert math.isnan(cpu_per_1000(1.0, 0))


def test_nearest_rank_percentiles():
    latencies = sorted(float(ms) for ms in range(1, 101))
    assert nearest_rank(latencies, 0.50) == 50
    assert nearest_rank(latencies, 0.99) == 99
    assert nearest_rank([7.0], 0.99) == 7
    assert math.isnan(nearest_rank([], 0.5))


def cell(server: str, generator: str, payload: str, rps: float, cpu: float) -> dict:
    return {
        "server": server,
        "generator": generator,
        "payload": payload,
        "clients": 8,
        "requests_per_s": rps,
        "p50_ms": 12.0,
        "p99_ms": 40.0,
        "errors": 0,
        "server_cpu_s_per_1000": cpu,
        "server_rss_mb": 900,
        "client_cpu_percent": 35,
    }


def test_report_has_one_table_per_generator_and_payload_with_every_server():
    results = {
        "conditions": {
            "command": "python -m benchmarks.peers",
            "date": "d",
            "cpus": 2,
            "load_average_1m": 0.1,
            "platform": "p",
            "python": "3.11",
        },  # fmt: skip
        "settings": {"generators": ["locust", "httpx"], "payloads": ["32px", "640x480"]},
        "servers": [
            {"label": "litserve 0.2.19", "startup_s": 7.0, "rss_mb": 700},
            {"name": "ray", "label": "ray", "error": "server exited with 1; see logs/ray.log"},
        ],
        "cells": [
            cell("this service (defaults)", "locust", "32px", 238.04, 4.2),
            cell("litserve 0.2.19", "locust", "32px", 227.0, math.nan),
            cell("litserve 0.2.19", "httpx", "640x480", 114.0, 8.5),
        ],
    }
    markdown = to_markdown(results)
    assert "## 32px JPEG, locust" in markdown and "## 640x480 JPEG, httpx" in markdown
    assert "## 640x480 JPEG, locust" not in markdown  # nothing measured there
    assert "| this service (defaults) | 8 | 238.0 | 12 | 40 | 0 | 4.20 | 900 | 35 |" in markdown
    assert "| litserve 0.2.19 | 8 | 227.0 | 12 | 40 | 0 | – | 900 | 35 |" in markdown
    assert "| litserve 0.2.19 | 7.0 | 700 |" in markdown
    assert "| ray | failed: server exited with 1; see logs/ray.log | – |" in markdown


def test_command_line_subsets_and_refuses_unknown_names():
    args = parse_args(["--peers", "litserve,ray", "--payloads", "32px", "--clients", "1,8", "--seconds", "3"])
    assert (args.peers, args.payloads, args.clients, args.seconds) == (
        ["litserve", "ray"],
        ["32px"],
        [1, 8],
        3,
    )
    assert parse_args([]).peers == ["triton", "litserve", "litserve-int8", "bentoml", "ray"]
    with pytest.raises(SystemExit):
        parse_args(["--peers", "torchserve"])
    with pytest.raises(SystemExit):
        parse_args(["--payloads", "8k"])


def test_newest_version_is_the_highest_number_not_the_last_in_text_order(tmp_path):
    for version in ("2", "10", "9", "notes"):
        (tmp_path / "cifar10" / version).mkdir(parents=True)
    assert newest_version(tmp_path).name == "10"
    with pytest.raises(FileNotFoundError):
        newest_version(tmp_path, "iris")


def test_a_success_is_a_prediction_or_bentomls_list_of_exactly_one():
    prediction = {"label": "cat", "probabilities": {"cat": 0.9, "dog": 0.1}}
    assert is_prediction(prediction)
    assert is_prediction([prediction])  # BentoML's batchable API: batch of one in, one out
    assert not is_prediction([prediction, prediction])
    assert not is_prediction([])
    assert not is_prediction({"detail": "Internal Server Error"})
    assert not is_prediction("cat")


def test_lead_compares_the_service_with_the_fastest_peer_of_each_cell():
    cells = [
        cell("this service (defaults)", "locust", "32px", 300.0, 4.0),
        cell("litserve 0.2.19", "locust", "32px", 200.0, 6.0),
        cell("ray 2.60.0", "locust", "32px", 250.0, 20.0),
        cell("ray 2.60.0", "httpx", "32px", 90.0, 20.0),  # no service figure: no row
    ]
    assert lead(cells) == [["locust", "32px", "8", "ray 2.60.0", "1.20", "12 / 12", "40 / 40", "under 1.25×"]]


def test_the_target_is_a_lower_p50_at_one_client_and_a_lead_with_no_worse_p99_from_eight():
    def figures(clients, p50, p99):
        return {"clients": clients, "p50_ms": p50, "p99_ms": p99}

    assert target(figures(1, 5, 30), figures(1, 6, 10), 0.9) == "met"  # one client: the p50 only
    assert target(figures(1, 7, 10), figures(1, 6, 10), 2.0) == "p50 higher"
    assert target(figures(8, 20, 40), figures(8, 30, 40), 1.25) == "met"
    assert target(figures(32, 20, 41), figures(32, 30, 40), 1.3) == "p99 higher"
    assert target(figures(64, 20, 50), figures(64, 30, 40), 1.1) == "under 1.25×; p99 higher"


def test_the_plain_pillow_decode_gives_the_models_input_from_any_size_and_mode():
    for size, mode, fmt in [
        ((640, 480), "RGB", "JPEG"),
        ((4032, 3024), "L", "JPEG"),
        ((48, 40), "RGBA", "PNG"),
    ]:
        buffer = io.BytesIO()
        Image.new(mode, size, {"RGB": (200,) * 3, "L": 200, "RGBA": (200, 200, 200, 255)}[mode]).save(
            buffer, fmt
        )
        pixels = pillow_decode(buffer.getvalue())
        assert (pixels.shape, pixels.dtype) == ((32, 32, 3), np.uint8)
        assert abs(int(pixels.mean()) - 200) <= 2
