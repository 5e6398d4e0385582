"""Soak test: does the service keep answering, and does its memory stay flat, under long load?

    python -m benchmarks.soak --minutes 10
    python -m benchmarks.soak --minutes 10 --url http://127.0.0.1:8000 --pid 12345

Starts the service (or uses a running one: `--url` and its process id `--pid`), loads both
endpoints with `locustfile.py` for the given time, and samples the server's resident memory
(RSS, workers included) every few seconds. The first minute is warm-up, excluded: allocators,
caches and TensorFlow's pools grow then by design. Passes when no request failed and RSS grew
by less than 5 % from the end of warm-up to the end of the run.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from benchmarks import report
from benchmarks.load import run_locust
from benchmarks.server import Running, rss_bytes, serve

MAX_GROWTH = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10, help="load duration; fractions allowed")
    parser.add_argument("--users", type=int, default=16, help="closed-loop users (default 16)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between RSS samples")
    parser.add_argument(
        "--warmup",
        type=float,
        default=60,
        help="seconds excluded from the growth (default 60; at most a third of the run)",
    )
    parser.add_argument("--model-dir", default="models", help="default: models")
    parser.add_argument("--url", help="a running service instead of starting one (needs --pid)")
    parser.add_argument("--pid", type=int, help="the running service's process id")
    parser.add_argument("--out", help="default: reports/soak/<UTC timestamp>/")
    args = parser.parse_args(argv)
    if (args.url is None) != (args.pid is None):
        parser.error("--url and --pid go together")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    conditions = report.conditions("benchmarks.soak")
    out = report.output_folder(args.out, "soak")
    seconds = args.minutes * 60
    # A short run still needs samples after warm-up to compare.
    warmup = min(args.warmup, seconds / 3)

    samples: list[tuple[float, int]] = []
    with _service(args, out) as server:

        def sample(elapsed: float) -> None:
            samples.append((round(elapsed, 1), rss_bytes(server.pid)))
            print(f"{elapsed:6.0f} s  RSS {samples[-1][1] / 2**20:,.1f} MiB", flush=True)

        sample(0)
        started = time.monotonic()
        run = run_locust(
            server.url, args.users, seconds, out / "locust" / "soak", every=args.interval, on_tick=sample
        )
        sample(time.monotonic() - started)

    after = [rss for t, rss in samples if t >= warmup]
    start, end = after[0], after[-1]
    growth = (end - start) / start
    results = {
        "conditions": conditions,
        "settings": {
            "minutes": args.minutes,
            "users": args.users,
            "interval_s": args.interval,
            "warmup_s": warmup,
            "url": args.url or "started here",
            "model_dir": args.model_dir,
        },
        "requests": run.total.requests,
        "failures": run.total.failures,
        "requests_per_s": round(run.total.requests_per_s, 1),
        "p50_ms": run.total.p50_ms,
        "p99_ms": run.total.p99_ms,
        "by_endpoint": {
            name: {"requests": s.requests, "failures": s.failures, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms}
            for name, s in run.by_name.items()
        },
        "rss_mib": {
            "after_warmup": _mib(start),
            "end": _mib(end),
            "peak_after_warmup": _mib(max(after)),
            "growth_percent": round(100 * growth, 2),
        },
        "rss_samples": [{"seconds": t, "rss_mib": _mib(rss)} for t, rss in samples],
        "locust_exit_code": run.exit_code,
        "verdict": "PASS" if run.total.failures == 0 and growth < MAX_GROWTH else "FAIL",
    }
    markdown = to_markdown(results)
    report.write(out, "soak", results, markdown)
    print(markdown)
    print(f"\nreport: {out / 'soak.md'}")


@contextlib.contextmanager
def _service(args, out: Path):
    if args.url:
        yield Running(args.url.rstrip("/"), args.pid)
    else:
        with serve("service", args.model_dir, out / "service.log") as running:
            yield running


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def to_markdown(r: dict) -> str:
    rss = r["rss_mib"]
    s = r["settings"]
    return "\n\n".join(
        [
            f"# Soak test: {r['verdict']}",
            report.conditions_markdown(r["conditions"]),
            f"{s['users']} closed-loop users on both endpoints for {s['minutes']:g} min; RSS sampled "
            f"every {s['interval_s']:g} s; the first {s['warmup_s']:g} s are warm-up.",
            report.markdown_table(
                [
                    "requests",
                    "failures",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "RSS after warm-up MiB",
                    "RSS at end MiB",
                    "peak MiB",
                    "growth",
                ],
                [
                    [
                        r["requests"],
                        r["failures"],
                        r["requests_per_s"],
                        f"{r['p50_ms']:g}",
                        f"{r['p99_ms']:g}",
                        rss["after_warmup"],
                        rss["end"],
                        rss["peak_after_warmup"],
                        f"{rss['growth_percent']} %",
                    ]
                ],
            ),
            report.markdown_table(
                ["endpoint", "requests", "failures", "p50 ms", "p99 ms"],
                [
                    [name, e["requests"], e["failures"], f"{e['p50_ms']:g}", f"{e['p99_ms']:g}"]
                    for name, e in r["by_endpoint"].items()
                ],
            ),
            f"Pass: 0 failures and RSS growth after warm-up < {100 * MAX_GROWTH:g} %.",
        ]
    )


if __name__ == "__main__":
    main()
