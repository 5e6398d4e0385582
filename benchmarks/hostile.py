"""Hostile clients against `python -m service` with its defaults, measured from outside.

    python -m benchmarks.hostile            # ~2.5 min; writes benchmarks/results/hostile.{json,md}

Starts the service on models/ with its defaults (WORKERS unset: one per core), then a victim
classifies flowers on /predict/iris without pause while 4 hostile clients send a corpus built
here, phase by phase (decompression bombs in every accepted format, bit-depth and palette
tricks, many frames and pages, huge ICC/EXIF/text chunks, progressive JPEGs, JSON bombs, deep
nesting, malformed protocol headers), each item over and over for the phase's time. Per phase
it prints the statuses, answers that are not JSON, 5xx other than 503, the peak RSS of the
process tree over its idle size, server CPU per hostile request, and the victim's p50/p99;
then the RSS kept 20 s after the last hostile request.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.server import REPO, cpu_seconds, rss_bytes, serve
from service.process.serve import MALLOC

RESULTS = REPO / "benchmarks" / "results"
CLIENTS = 4
IMAGE_ROUTE = "/predict/image/cifar10"
MIB = 1024 * 1024

Item = tuple[str, Callable[[httpx.Client], httpx.Response]]


def encoded(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **params)
    return buffer.getvalue()


def upload(*files: bytes, path: str = IMAGE_ROUTE) -> Callable[[httpx.Client], httpx.Response]:
    parts = [("file", (f"{i}", data)) for i, data in enumerate(files)]
    return lambda client: client.post(path, files=parts)


def post(path: str, content: bytes, **headers: str) -> Callable[[httpx.Client], httpx.Response]:
    return lambda client: client.post(path, content=content, headers=headers)


def image_corpus() -> list[Item]:
    big = (7000, 7000)  # 49 M pixels: within MAX_IMAGE_PIXELS (50 M)
    frames = [Image.new("P", (512, 512), i % 256) for i in range(300)]
    sixteen = encoded(Image.new("I;16", big), "PNG")
    return [
        ("png 16-bit 7000x7000", upload(sixteen)),
        ("8 x png 16-bit 7000x7000", upload(*[sixteen] * 8)),
        ("png RGBA 7000x7000", upload(encoded(Image.new("RGBA", big), "PNG"))),
        ("png palette 7000x7000", upload(encoded(Image.new("P", big), "PNG"))),
        ("gif 7000x7000", upload(encoded(Image.new("P", big), "GIF"))),
        ("webp 7000x7000", upload(encoded(Image.new("RGB", big), "WEBP", quality=1))),
        ("webp 3000x3000", upload(encoded(Image.new("RGB", (3000, 3000)), "WEBP", quality=1))),
        ("tiff 32-bit 7000x7000", upload(encoded(Image.new("I", big), "TIFF", compression="tiff_deflate"))),
        ("tiff float 7000x7000", upload(encoded(Image.new("F", big), "TIFF", compression="tiff_deflate"))),
        ("bmp 1-bit 7000x7000", upload(encoded(Image.new("1", big), "BMP"))),
        ("jpeg progressive 7000x7000", upload(encoded(Image.new("RGB", big), "JPEG", progressive=True))),
        ("jpeg CMYK 7000x7000", upload(encoded(Image.new("CMYK", big), "JPEG"))),
        ("gif 300 frames", upload(encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]))),
        ("tiff 300 pages", upload(encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:]))),
        (
            "png 8 MB ICC profile",
            upload(encoded(Image.new("RGB", (64, 64)), "PNG", icc_profile=bytes(8 * MIB))),
        ),
        ("jpeg 8 MB ICC + 64 KB EXIF", upload(_jpeg_with_metadata())),
        ("png 50000x50000 header", upload(_png_declaring(50_000, 50_000))),
        ("128 x png 2000x2000", upload(*[encoded(Image.new("L", (2000, 2000)), "PNG")] * 128)),
    ]


def legitimate_corpus() -> list[Item]:
    """Heavy but legitimate requests, measured apart: they load the CPU as much as any
    client at full rate may, and are not refused."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), np.uint8))
    images = np.random.default_rng(1).integers(0, 256, (128, 32, 32, 3)).tolist()
    v2 = {"inputs": [{"name": "image", "shape": [128, 32, 32, 3], "datatype": "UINT8", "data": images}]}
    return [
        ("12 MP photo", upload(encoded(photo, "JPEG", quality=75))),
        ("v2 128 images as JSON", post("/v2/models/cifar10/infer", json.dumps(v2).encode())),
        (
            "tfs 128 images as JSON",
            post("/v1/models/cifar10:predict", json.dumps({"instances": images}).encode()),
        ),
    ]


def json_corpus() -> list[Item]:
    iris_v2, iris_tfs = "/v2/models/iris/infer", "/v1/models/iris:predict"
    many = json.dumps([[1.5, 2.5, 3.5, 4.5]] * 250_000).encode()  # ~9.5 MiB

    def v2(shape, data, name="features", datatype="FP32") -> bytes:
        return json.dumps(
            {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}
        ).encode()

    binary_header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1] * 70,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    ).encode()
    octet = "application/octet-stream"
    return [
        (
            "v2 9.5 MiB JSON",
            post(
                iris_v2,
                b'{"inputs":[{"name":"features","shape":[250000,4],"datatype":"FP32","data":' + many + b"}]}",
            ),
        ),
        ("tfs 9.5 MiB JSON", post(iris_tfs, b'{"instances":' + many + b"}")),
        (
            "tfs nested 100,000 deep",
            post(iris_tfs, b'{"instances":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ),
        ("tfs nested 20,000 deep", post(iris_tfs, b'{"instances":' + b"[" * 20_000 + b"]" * 20_000 + b"}")),
        ("v2 nested 20,000 deep", post(iris_v2, b"[" * 20_000 + b"]" * 20_000)),
        (
            "native nested 20,000 deep",
            post("/predict/iris", b"[" * 20_000 + b"]" * 20_000, **{"Content-Type": "application/json"}),
        ),
        ("v2 shape of 70 ones (JSON)", post(iris_v2, v2([1] * 70, [1.0]))),
        (
            "v2 shape of 70 ones (binary)",
            post(
                iris_v2,
                binary_header + bytes(4),
                **{"Inference-Header-Content-Length": str(len(binary_header)), "Content-Type": octet},
            ),
        ),
        ("v2 shape [10^12, 4]", post(iris_v2, v2([10**12, 4], [1.0] * 4))),
        (
            "v2 gzip bomb (1 GB inflated)",
            post(iris_v2, gzip.compress(bytes(1024 * MIB), 9), **{"Content-Encoding": "gzip"}),
        ),
    ]


def header_corpus() -> list[Item]:
    iris_v2 = "/v2/models/iris/infer"
    body = b'{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    octet = "application/octet-stream"
    return [
        *[
            (
                f"v2 header length {value!r}",
                post(iris_v2, body, **{"Inference-Header-Content-Length": value, "Content-Type": octet}),
            )
            for value in ("abc", "-1", "99999999999999999999999", "0")
        ],
        ("v2 Content-Encoding br", post(iris_v2, body, **{"Content-Encoding": "br"})),
        ("v2 gzip garbage", post(iris_v2, b"\x1f\x8b" + bytes(100), **{"Content-Encoding": "gzip"})),
        (
            "multipart without boundary",
            post(IMAGE_ROUTE, b"--x\r\n", **{"Content-Type": "multipart/form-data"}),
        ),
        (
            "multipart garbage",
            post(IMAGE_ROUTE, bytes(range(256)) * 100, **{"Content-Type": "multipart/form-data; boundary=x"}),
        ),
        (
            "multipart 70-char boundary",
            post(
                IMAGE_ROUTE,
                b"--" + b"b" * 70,
                **{"Content-Type": "multipart/form-data; boundary=" + "b" * 70},
            ),
        ),
        ("JSON to the image route", post(IMAGE_ROUTE, b"{}", **{"Content-Type": "application/json"})),
    ]


def _png_declaring(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    import zlib

    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _jpeg_with_metadata() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: one APP1 segment holds at most 64 KB
    return encoded(Image.new("RGB", (64, 64)), "JPEG", exif=exif, icc_profile=bytes(8 * MIB))


class Watch:
    """The server's tree RSS every 50 ms, the victim's latencies, by phase."""

    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.latencies: dict[str, list[float]] = {}
        self.victim_errors: Counter = Counter()
        self.stopping = threading.Event()

    def sample_rss(self) -> None:
        while not self.stopping.is_set():
            rss = rss_bytes(self.pid)
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            time.sleep(0.05)

    def victim(self) -> None:
        flower = {"features": [5.1, 3.5, 1.4, 0.2]}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stopping.is_set():
                phase, started = self.phase, time.perf_counter()
                status = client.post("/predict/iris", json=flower).status_code
                self.latencies.setdefault(phase, []).append(time.perf_counter() - started)
                if status != 200:
                    self.victim_errors[status] += 1
                time.sleep(0.02)


def run_phase(url: str, items: list[Item], seconds: float) -> dict:
    """Each of CLIENTS clients sends the items in turn, from its own offset, until `seconds`."""
    statuses: dict[str, Counter] = {name: Counter() for name, _ in items}
    problems: list[str] = []
    sent = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client_loop(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = offset
            while time.monotonic() < deadline:
                name, send = items[i % len(items)]
                i += 1
                try:
                    response = send(client)
                    status = str(response.status_code)
                    is_json = response.headers.get("content-type", "").startswith("application/json")
                    if not is_json or (response.status_code >= 500 and response.status_code != 503):
                        problems.append(
                            f"{name}: {status} {response.headers.get('content-type')} {response.text[:120]!r}"
                        )
                except httpx.HTTPError as error:
                    status = type(error).__name__
                    problems.append(f"{name}: {status}")
                with lock:
                    statuses[name][status] += 1
                    sent[0] += 1

    threads = [
        threading.Thread(target=client_loop, args=(k * len(items) // CLIENTS,)) for k in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "statuses": {n: dict(c) for n, c in statuses.items()},
        "problems": sorted(set(problems)),
        "requests": sent[0],
    }


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase-seconds", type=float, default=20)
    parser.add_argument("--settle-seconds", type=float, default=20)
    parser.add_argument("--report", default="hostile", help="report name under benchmarks/results")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]  # what else the machine was doing, before the service
    phases = [
        ("images", image_corpus()),
        ("json", json_corpus()),
        ("headers", header_corpus()),
        ("legitimate heavy (not hostile)", legitimate_corpus()),
    ]
    log = Path(tempfile.gettempdir()) / "hostile_server.log"
    with serve("service", REPO / "models", log, settings={"ACCESS_LOG": "false"}) as running:
        watch = Watch(running.url, running.pid)
        helpers = [threading.Thread(target=watch.sample_rss), threading.Thread(target=watch.victim)]
        for thread in helpers:
            thread.start()
        watch.phase = "idle"
        cpu = cpu_seconds(running.pid)
        time.sleep(8)
        idle_cpu_rate = (cpu_seconds(running.pid) - cpu) / 8
        idle_rss = watch.peaks["idle"]
        report: dict = {"idle_rss_mib": idle_rss / MIB, "phases": {}}
        for name, items in phases:
            watch.phase = name
            cpu, started = cpu_seconds(running.pid), time.monotonic()
            result = run_phase(running.url, items, args.phase_seconds)
            elapsed = time.monotonic() - started
            spent = cpu_seconds(running.pid) - cpu
            result.update(
                peak_over_idle_mib=(watch.peaks[name] - idle_rss) / MIB,
                server_cpu_s=spent,
                cpu_s_per_request=(spent - idle_cpu_rate * elapsed) / max(1, result["requests"]),
                victim_p50_ms=p(watch.latencies.get(name, []), 50),
                victim_p99_ms=p(watch.latencies.get(name, []), 99),
                victim_requests=len(watch.latencies.get(name, [])),
            )
            report["phases"][name] = result
            print_phase(name, result)
        watch.phase = "settle"
        time.sleep(args.settle_seconds)
        kept = rss_bytes(running.pid)
        watch.stopping.set()
        for thread in helpers:
            thread.join()
    report.update(
        kept_over_idle_mib=(kept - idle_rss) / MIB,
        settle_seconds=args.settle_seconds,
        victim_p99_idle_ms=p(watch.latencies.get("idle", []), 99),
        victim_p99_settle_ms=p(watch.latencies.get("settle", []), 99),
        victim_errors=dict(watch.victim_errors),
        clients=CLIENTS,
        phase_seconds=args.phase_seconds,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=f"{os.cpu_count()} cores, CPU only, load average {load_at_start:.1f} before it started",
        # What the service's workers ran with: unset here, python -m service sets its own.
        malloc={name: os.environ.get(name, "service default") for name in MALLOC},
    )
    print(
        f"idle RSS {idle_rss / MIB:.0f} MiB; kept {report['kept_over_idle_mib']:+.0f} MiB after"
        f" {args.settle_seconds:.0f} s; victim p99 idle {report['victim_p99_idle_ms']:.0f} ms,"
        f" settle {report['victim_p99_settle_ms']:.0f} ms; victim errors {dict(watch.victim_errors)}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.report}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.report}.md").write_text(markdown(report))


def print_phase(name: str, result: dict) -> None:
    totals: Counter = Counter()
    for counts in result["statuses"].values():
        totals.update(counts)
    print(
        f"{name}: {result['requests']} requests {dict(sorted(totals.items()))}; peak"
        f" {result['peak_over_idle_mib']:+.0f} MiB over idle; {result['cpu_s_per_request']:.2f} CPU-s per"
        f" request; victim p50 {result['victim_p50_ms']:.0f} ms p99 {result['victim_p99_ms']:.0f} ms;"
        f" problems: {len(result['problems'])}"
    )
    for problem in result["problems"]:
        print(f"  {problem}")


def markdown(report: dict) -> str:
    lines = [
        "# Hostile clients (`python -m benchmarks.hostile`)",
        "",
        f"{report['date']}; {report['machine']}. `python -m service` with its defaults on models/,"
        f" {report['clients']} hostile clients for {report['phase_seconds']:.0f} s a phase, a victim"
        f" classifying flowers on /predict/iris throughout. Workers' malloc settings: {report['malloc']}.",
        "",
        f"Idle RSS of the process tree: {report['idle_rss_mib']:.0f} MiB. Kept"
        f" {report['settle_seconds']:.0f} s after the last hostile request:"
        f" {report['kept_over_idle_mib']:+.0f} MiB. Victim p99 idle {report['victim_p99_idle_ms']:.0f} ms;"
        f" victim errors: {report['victim_errors'] or 'none'}.",
        "",
        *phases_table(report),
    ]
    for name, r in report["phases"].items():
        lines += ["", f"## {name}", "", "| input | statuses |", "|---|---|"]
        lines += [f"| {item} | {counts} |" for item, counts in r["statuses"].items()]
        lines += [f"- problem: `{problem}`" for problem in r["problems"]]
    return "\n".join(lines) + "\n"


def phases_table(report: dict) -> list[str]:
    """One row per phase: what it cost the server and what the victim saw (the docs show it too)."""
    lines = [
        "| phase | requests | peak RSS over idle | CPU-s per request | victim p50 / p99 |"
        " not JSON or 5xx (not 503) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["phases"].items():
        lines.append(
            f"| {name} | {r['requests']} | {r['peak_over_idle_mib']:+.0f} MiB |"
            f" {r['cpu_s_per_request']:.2g} | {r['victim_p50_ms']:.0f} / {r['victim_p99_ms']:.0f} ms |"
            f" {len(r['problems'])} |"
        )
    return lines


if __name__ == "__main__":
    main()
