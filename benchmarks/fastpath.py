"""The CPU's fast form of cifar10 (`MODEL_RUNTIME`, service/runtimes.py) against its SavedModel.

    python -m benchmarks.fastpath inprocess   # both runtimes in this process, interleaved (~2 min)
    python -m benchmarks.fastpath load        # locust, 32 users, 32 px PNGs: savedmodel, auto, savedmodel
    python -m benchmarks.fastpath accuracy    # every held-out photo over HTTP, both runtimes
    python -m benchmarks.fastpath tta         # what flip test-time augmentation buys, in process

`inprocess`: examples per second of each runtime at batch sizes 1-128, as the service's model
thread calls it (the fast form with its JPEG round trip in Pillow), in rounds that alternate the
runtimes so that load from other processes falls on both alike; with flip test-time augmentation
too, and what resizing an interpreter costs. `load`: the service (defaults but MODEL_RUNTIME) driven
by the repository's locustfile with held-out photos as 32 px PNGs, three phases A-B-A in one run.
`accuracy`: every photo of the held-out split (the validation split the model was trained without;
the data's official test split is not available) as a PNG through `/predict/image` and through v2
`infer` (`image_bytes`), with the defaults and with MODEL_RUNTIME=savedmodel: accuracy, ECE, top-1
agreement, and the largest difference between v2 and the native route. `tta`: accuracy, ECE and
NLL on every held-out photo of each runtime with and without flip TTA (TTA=flip), in process.

Each writes `fastpath_<command>.json` and `.md` to `--out` (default `benchmarks/results/`).
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks import report
from benchmarks.inprocess import latest_version, runtime_throughput
from benchmarks.load import run_locust
from benchmarks.server import REPO, serve
from model_repository import read_metadata
from service.predictor import Predictor
from training import calibration, data

DATA = "../shared/datasets/cifar10-train.tar.gz"
BATCH_SIZES = [1, 8, 32, 64, 128]
# The CPU layout's (service/process/layout.py), as the image runs it.
SERVICE_SETTINGS = {"INTRA_OP_THREADS": "1"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fastpath", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["inprocess", "load", "accuracy", "tta"])
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--data", default=DATA, help=f"the training data (default {DATA})")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument(
        "--seconds", type=float, default=None, help="inprocess: per measurement (1); load: per phase (60)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="inprocess: alternations of the runtimes")
    parser.add_argument("--users", type=int, default=32, help="load: locust users")
    parser.add_argument(
        "--images", type=int, default=None, help="accuracy: the first N held-out photos (all)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    conditions = report.conditions("benchmarks.fastpath")
    version_dir = latest_version(Path(args.model_dir), "cifar10")
    contract = read_metadata(version_dir)
    if not contract.runtimes:
        raise SystemExit(f"{version_dir} declares no fast form: python -m training fastpath {version_dir}")
    fast = sorted(contract.runtimes)[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = {"name": "cifar10", "version": contract.version, "fast": fast}
    if args.command == "inprocess":
        results = inprocess(version_dir, args.data, fast, args.seconds or 1.0, args.rounds)
        markdown = inprocess_markdown(results)
    elif args.command == "load":
        results = load(version_dir, args.data, args.seconds or 60, args.users, out)
        markdown = load_markdown(results)
    elif args.command == "tta":
        results = tta(version_dir, args.data, fast)
        markdown = tta_markdown(results)
    else:
        results = accuracy(version_dir, args.data, args.images)
        markdown = accuracy_markdown(results)
    results = {"conditions": conditions, "model": model, **results}
    title = f"# cifar10 v{contract.version}: {fast} against the SavedModel ({args.command})\n\n"
    report.write(
        out,
        f"fastpath_{args.command}",
        results,
        title + markdown + "\n\n" + report.conditions_markdown(conditions),
    )
    print(markdown)


# ---------------------------------------------------------------------------------------------
# In-process
# ---------------------------------------------------------------------------------------------


def inprocess(version_dir: Path, data_path: str, fast: str, seconds: float, rounds: int) -> dict:
    images = held_out_photos(data_path, max(BATCH_SIZES))
    measured: dict[str, dict[int, list[float]]] = {}
    variants = {
        "savedmodel": ("savedmodel", "none"),
        fast: (fast, "none"),
        f"{fast} + flip TTA": (fast, "flip"),
    }
    predictors = {
        label: Predictor(version_dir, "/CPU:0", runtime, 1, tta) for label, (runtime, tta) in variants.items()
    }
    for _ in range(rounds):
        for label, predictor in predictors.items():
            for size, rate in runtime_throughput(predictor.predict, images, BATCH_SIZES, seconds).items():
                measured.setdefault(label, {}).setdefault(size, []).append(rate)
    rates = {
        label: {size: round(statistics.median(r), 1) for size, r in by.items()}
        for label, by in measured.items()
    }
    return {
        "batch_sizes": BATCH_SIZES,
        "seconds_per_measurement": seconds,
        "rounds": rounds,
        "examples_per_second": rates,
        "resize_ms": resize_costs(version_dir, fast, images),
    }


def resize_costs(version_dir: Path, fast: str, images: np.ndarray) -> dict:
    """Median ms of one call at batch n on an interpreter allocated at n (what the service does),
    and of the same call after resizing it from n+1 (what reallocating on every change would add),
    with the cost of resize_tensor_input + allocate_tensors alone."""

    contract = read_metadata(version_dir)
    blob = (version_dir / contract.runtimes[fast].path).read_bytes()
    return {n: resize_cost(blob, n, images) for n in (1, 8, 32, 64)}


def resize_cost(blob: bytes, n: int, images: np.ndarray, repeats: int = 15) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob, num_threads=1)
    index = interpreter.get_input_details()[0]["index"]

    def resize(size: int) -> None:
        interpreter.resize_tensor_input(index, [size, *images.shape[1:]], strict=True)
        interpreter.allocate_tensors()

    def call(size: int) -> None:
        interpreter.set_tensor(index, images[:size])
        interpreter.invoke()

    resize(n)
    call(n)
    kept, resized, allocating = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        call(n)
        kept.append(time.perf_counter() - started)
        resize(n + 1)
        call(n + 1)
        started = time.perf_counter()
        resize(n)
        allocated = time.perf_counter()
        call(n)
        resized.append(time.perf_counter() - started)
        allocating.append(allocated - started)
    return {
        "call_ms": round(statistics.median(kept) * 1000, 3),
        "resize_allocate_ms": round(statistics.median(allocating) * 1000, 3),
        "resize_allocate_call_ms": round(statistics.median(resized) * 1000, 3),
    }


def inprocess_markdown(r: dict) -> str:
    sizes = r["batch_sizes"]
    base = r["examples_per_second"]["savedmodel"]
    rows = [
        [label, *(f"{rates[s]:,.0f} ({rates[s] / base[s]:.2f}×)" for s in sizes)]
        for label, rates in r["examples_per_second"].items()
    ]
    resize_rows = [
        [n, c["call_ms"], c["resize_allocate_ms"], c["resize_allocate_call_ms"]]
        for n, c in r["resize_ms"].items()
    ]
    return (
        "Examples per second on one thread, in this process, as the service's model thread calls each "
        f"runtime (median of {r['rounds']} interleaved rounds of {r['seconds_per_measurement']:g} s; "
        "ratio to the SavedModel):\n\n"
        + report.markdown_table(["runtime", *(f"batch {s}" for s in sizes)], rows)
        + "\n\nResizing an interpreter, median ms: a call at batch n on an interpreter allocated at n; "
        "resize_tensor_input + allocate_tensors alone; both and the call after them (XNNPACK sets its "
        "kernels up again):\n\n"
        + report.markdown_table(
            ["batch n", "call", "resize + allocate", "resize + allocate + call"], resize_rows
        )
    )


# ---------------------------------------------------------------------------------------------
# Load: locust A-B-A
# ---------------------------------------------------------------------------------------------


def load(version_dir: Path, data_path: str, seconds: float, users: int, out: Path) -> dict:
    phases = [("A", "savedmodel"), ("B", "auto"), ("A", "savedmodel")]
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "pngs"
        folder.mkdir()
        for i, image in enumerate(held_out_photos(data_path, 500)):
            Image.fromarray(image).save(folder / f"{i:04d}.png")
        for i, (phase, runtime) in enumerate(phases):
            settings = {**SERVICE_SETTINGS, "MODEL_RUNTIME": runtime}
            log = Path(scratch) / f"service-{i}.log"
            with serve("service", version_dir.parent.parent, log, settings=settings) as running:
                answering = model_runtime(running.url)
                prefix = Path(scratch) / "locust" / f"{i}-{runtime}"
                run_locust(
                    running.url,
                    1,
                    5,
                    prefix.with_name(prefix.name + "-warmup"),
                    ("image",),
                    image_files=folder,
                )
                run = run_locust(
                    running.url, users, seconds, prefix, ("image",), running.pid, image_files=folder
                )
            runs.append(
                {
                    "phase": phase,
                    "model_runtime": runtime,
                    "answering": answering,
                    "requests": run.total.requests,
                    "failures": run.total.failures,
                    "requests_per_s": round(run.total.requests_per_s, 1),
                    "p50_ms": run.total.p50_ms,
                    "p99_ms": run.total.p99_ms,
                    "server_cpu_s": round(run.server_cpu_s or 0, 1),
                    "locust_cpu_s": round(run.client_cpu_s, 1),
                }
            )
            print(runs[-1], flush=True)
    savedmodel = statistics.mean(r["requests_per_s"] for r in runs if r["model_runtime"] == "savedmodel")
    fast = runs[1]["requests_per_s"]
    return {
        "users": users,
        "seconds_per_phase": seconds,
        "runs": runs,
        "speedup": round(fast / savedmodel, 2),
    }


def model_runtime(url: str) -> str:
    (cifar10,) = [m for m in httpx.get(f"{url}/models").json()["models"] if m["name"] == "cifar10"]
    return cifar10["runtime"]


def per_cpu_second(run: dict) -> float:
    """Requests answered per CPU-second the server used: what the CPU buys, whatever share of
    the shared machine the server got."""
    return run["requests"] / run["server_cpu_s"] if run["server_cpu_s"] else math.nan


def load_markdown(r: dict) -> str:
    rows = [
        [
            p["phase"],
            f"`{p['model_runtime']}` ({p['answering']})",
            p["requests_per_s"],
            p["p50_ms"],
            p["p99_ms"],
            p["failures"],
            p["server_cpu_s"],
            f"{per_cpu_second(p):.0f}",
            p["locust_cpu_s"],
        ]
        for p in r["runs"]
    ]
    headers = ["phase", "MODEL_RUNTIME (answering)", "req/s", "p50 ms", "p99 ms", "failures"]
    headers += ["server CPU s", "req per server CPU-s", "locust CPU s"]
    a_runs = [p for p in r["runs"] if p["model_runtime"] == "savedmodel"]
    per_cpu = per_cpu_second(r["runs"][1]) / statistics.mean(per_cpu_second(p) for p in a_runs)
    return (
        f"locust (the repository's locustfile, `--tags image`), {r['users']} users, held-out photos as "
        f"32×32 PNGs, {r['seconds_per_phase']:g} s per phase, the three phases in one run; the service "
        "with its defaults but MODEL_RUNTIME:\n\n"
        + report.markdown_table(headers, rows)
        + f"\n\nB ÷ mean of the A phases: **{r['speedup']}×** in requests/s, {per_cpu:.2f}× in requests "
        "per server CPU-second."
    )


# ---------------------------------------------------------------------------------------------
# Accuracy over HTTP
# ---------------------------------------------------------------------------------------------


def accuracy(version_dir: Path, data_path: str, count: int | None) -> dict:
    split = data.load_cifar10(data_path, seed=0).validation
    images, labels = split.x[:count], split.y[:count]
    files = [png(image) for image in images]
    answers, v2_gap = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for runtime in ("auto", "savedmodel"):
            settings = {**SERVICE_SETTINGS, "MODEL_RUNTIME": runtime, "WORKERS": "1"}
            with serve(
                "service", version_dir.parent.parent, Path(scratch) / f"{runtime}.log", settings=settings
            ) as running:
                answering = model_runtime(running.url)
                native = over_http(running.url, files, native_batch)
                v2 = over_http(running.url, files, v2_batch)
            answers[answering] = native
            v2_gap[answering] = float(np.abs(native - v2).max())
            print(answering, calibration.calibration_metrics(native, labels), flush=True)
    (fast,) = [name for name in answers if name != "savedmodel"]
    scores = {name: calibration.calibration_metrics(p, labels) for name, p in answers.items()}
    return {
        "split": "validation",
        "examples": len(labels),
        "scores": scores,
        "top1_agreement": round(
            float(np.mean(answers[fast].argmax(1) == answers["savedmodel"].argmax(1))), 4
        ),
        "max_abs_probability_difference": round(
            float(np.abs(answers[fast] - answers["savedmodel"]).max()), 4
        ),
        "max_row_sum_error": {name: float(np.abs(p.sum(1) - 1).max()) for name, p in answers.items()},
        "v2_against_native_max_abs": v2_gap,
    }


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def over_http(url: str, files: list[bytes], send, batch: int = 64) -> np.ndarray:
    with httpx.Client(base_url=url, timeout=120) as client:
        return np.concatenate([send(client, files[i : i + batch]) for i in range(0, len(files), batch)])


def native_batch(client: httpx.Client, files: list[bytes]) -> np.ndarray:
    response = client.post("/predict/image", files=[("file", f) for f in files])
    response.raise_for_status()
    return np.array([list(p["probabilities"].values()) for p in response.json()["predictions"]], np.float32)


def v2_batch(client: httpx.Client, files: list[bytes]) -> np.ndarray:
    import base64

    tensor = {
        "name": "image_bytes",
        "datatype": "BYTES",
        "shape": [len(files)],
        "data": [base64.b64encode(f).decode() for f in files],
        "parameters": {"content_type": "base64"},
    }
    response = client.post(
        "/v2/models/cifar10/infer", json={"inputs": [tensor], "outputs": [{"name": "probabilities"}]}
    )
    response.raise_for_status()
    (output,) = response.json()["outputs"]
    return np.array(output["data"], np.float32).reshape(output["shape"])


def accuracy_markdown(r: dict) -> str:
    rows = [
        [
            name,
            f"{s['accuracy']:.2%}",
            s["ece"],
            s["nll"],
            f"{r['max_row_sum_error'][name]:.1e}",
            f"{r['v2_against_native_max_abs'][name]:.1e}",
        ]
        for name, s in r["scores"].items()
    ]
    return (
        f"All {r['examples']:,} photos of the held-out {r['split']} split as PNGs over HTTP "
        "(`/predict/image`, 64 per request; and v2 `infer` with `image_bytes`), the service with its "
        "defaults (the fast form answers) and with MODEL_RUNTIME=savedmodel:\n\n"
        + report.markdown_table(
            ["answering", "accuracy", "ECE", "NLL", "max \\|row sum − 1\\|", "max \\|v2 − native\\|"], rows
        )
        + f"\n\nTop-1 agreement between the two: **{r['top1_agreement']:.2%}**; largest probability "
        f"difference {r['max_abs_probability_difference']}."
    )


# ---------------------------------------------------------------------------------------------
# Flip test-time augmentation
# ---------------------------------------------------------------------------------------------


def tta(version_dir: Path, data_path: str, fast: str) -> dict:
    split = data.load_cifar10(data_path, seed=0).validation
    scores = {}
    for runtime in ("savedmodel", fast):
        for augmentation in ("none", "flip"):
            predictor = Predictor(version_dir, "/CPU:0", runtime, 1, augmentation)
            batches = (split.x[i : i + 256] for i in range(0, len(split.x), 256))
            probabilities = np.concatenate(
                [predictor.predict(batch)[predictor.output_name] for batch in batches]
            )
            m = calibration.calibration_metrics(probabilities, split.y)
            scores[f"{runtime}, TTA={augmentation}"] = {k: m[k] for k in ("accuracy", "ece", "nll")}
            print(runtime, augmentation, scores[f"{runtime}, TTA={augmentation}"], flush=True)
    return {"split": "validation", "examples": len(split.y), "scores": scores}


def tta_markdown(r: dict) -> str:
    rows = [[name, f"{s['accuracy']:.2%}", s["ece"], s["nll"]] for name, s in r["scores"].items()]
    return (
        f"Every photo of the held-out {r['split']} split ({r['examples']:,}), in process, each runtime "
        "without and with flip test-time augmentation (the probabilities of the image and its mirror "
        "averaged, after calibration):\n\n"
        + report.markdown_table(["runtime", "accuracy", "ECE", "NLL"], rows)
    )


def held_out_photos(data_path: str, count: int) -> np.ndarray:
    return data.load_cifar10(data_path, seed=0).validation.x[:count]


if __name__ == "__main__":
    main()
