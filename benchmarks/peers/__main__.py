"""The service against the servers a user would pick instead, side by side on one machine.

    python -m benchmarks.peers                       # everything: about an hour
    python -m benchmarks.peers --peers litserve --payloads 32px --clients 8 --seconds 5
    python -m benchmarks.peers --peers triton --generators grpc   # gRPC: the service against Triton's

Installs each peer into its own cached venv on first use (`benchmarks.peers.install`), then for
the service (`python -m service`, defaults) and each peer in turn: starts it, waits for a real
prediction, warms it up, and drives it with each load generator at each client count on each
payload. Writes peers.md, peers.json and peers.png to reports/peers/<UTC time>/.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from benchmarks import report
from benchmarks.peers.loads import GENERATORS, measure
from benchmarks.peers.payloads import PAYLOADS, payload_files
from benchmarks.peers.servers import SERVERS, serving
from benchmarks.peers.tables import plot, to_markdown
from benchmarks.server import rss_bytes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])

    def listed(choices):
        def parse(text: str) -> list[str]:
            items = [i for i in text.split(",") if i]  # "" selects none
            if unknown := [i for i in items if i not in choices]:
                raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
            return items

        return parse

    parser.add_argument(
        "--peers",
        type=listed(SERVERS[1:]),
        default=list(SERVERS[1:]),
        help=f"comma-separated, of {','.join(SERVERS[1:])} (default all; '' none)",
    )
    parser.add_argument("--no-service", action="store_true", help="peers only")
    parser.add_argument(
        "--payloads",
        type=listed(PAYLOADS),
        default=list(PAYLOADS),
        help=f"comma-separated, of {','.join(PAYLOADS)} (default all)",
    )
    parser.add_argument(
        "--clients",
        type=lambda t: [int(c) for c in t.split(",")],
        default=[1, 8, 32, 64],
        help="default 1,8,32,64",
    )
    parser.add_argument(
        "--generators",
        type=listed(GENERATORS),
        default=["locust", "httpx"],
        help="locust,httpx (default) over HTTP; grpc over gRPC, for the service and triton only",
    )
    parser.add_argument("--seconds", type=float, default=20, help="per cell (default 20)")
    parser.add_argument("--warmup-seconds", type=float, default=5, help="per server and payload")
    parser.add_argument("--locust-processes", type=int, default=2, help="locust worker processes")
    parser.add_argument(
        "--peer-decode",
        choices=("service", "pillow"),
        default="service",
        help="peers decode uploads with the service's decode_image (default) or plain Pillow",
    )
    parser.add_argument("--model-dir", default="models", help="serves <model-dir>/cifar10/<newest>")
    parser.add_argument("--out", help="default: reports/peers/<UTC time>/")
    return parser.parse_args(argv)


def newest_version(model_dir: Path, name: str = "cifar10") -> Path:
    """<model_dir>/<name>/<highest numbered version>, as the service picks it by default."""
    versions = (
        [p for p in (model_dir / name).iterdir() if p.name.isdigit()] if (model_dir / name).is_dir() else []
    )
    if not versions:
        raise FileNotFoundError(f"no versions of {name!r} under {model_dir}")
    return max(versions, key=lambda p: int(p.name))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    conditions = report.conditions("benchmarks.peers")
    out = report.output_folder(args.out, "peers")
    version_dir = newest_version(Path(args.model_dir))
    folders = {name: payload_files(name)[0].parent for name in args.payloads}
    probe = payload_files("32px")[0].read_bytes()
    servers, cells = [], []
    for name in ([] if args.no_service else ["service"]) + args.peers:
        try:
            servers.append(run_server(name, args, version_dir, folders, probe, out, cells))
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as failure:
            # One peer that cannot install or start must not cost the other servers' hour.
            print(f"{name}: FAILED: {failure}", flush=True)
            servers.append({"name": name, "label": name, "error": str(failure)[:300]})
    settings = {
        k: getattr(args, k)
        for k in ("payloads", "clients", "generators", "seconds", "warmup_seconds", "peer_decode")
    }
    results = {
        "conditions": conditions,
        "model": str(version_dir),
        "settings": settings,
        "servers": servers,
        "cells": cells,
    }
    markdown = to_markdown(results)
    report.write(out, "peers", results, markdown)
    plot(results, out / "peers.png")
    print(markdown)
    print(f"\nreport: {out / 'peers.md'}")


def run_server(name, args, version_dir, folders, probe, out, cells) -> dict:
    """Start server `name`, warm it up, measure every cell into `cells`; its start-up facts."""
    with serving(name, version_dir, probe, out / "logs" / f"{name}.log", decode=args.peer_decode) as server:
        print(f"{server.label}: first prediction after {server.startup_s:.1f} s", flush=True)
        # Over the generators' own protocol: gRPC warms up paths (and Triton's threads) HTTP does not.
        warmer = "grpc" if args.generators == ["grpc"] else "httpx"
        for payload, folder in folders.items():
            warmup = out / "warmup" / f"{name}-{payload}"
            measure(warmer, server.url, server.pid, folder, 8, args.warmup_seconds, warmup, grpc=server.grpc)
        facts = {"name": name, "label": server.label, "startup_s": round(server.startup_s, 1)}
        facts["rss_mb"] = round(rss_bytes(server.pid) / 2**20)
        for payload, folder in folders.items():
            for generator in args.generators:
                if generator == "grpc" and server.grpc is None:
                    continue  # a peer without a gRPC endpoint
                for clients in args.clients:
                    prefix = out / "load" / f"{name}-{payload}-{generator}-c{clients}"
                    cell = measure(
                        generator, server.url, server.pid, folder, clients, args.seconds, prefix,
                        args.locust_processes, server.grpc,
                    )  # fmt: skip
                    cells.append({"server": server.label, "payload": payload, **cell})
                    print(
                        f"  {payload} {generator} {clients} clients: {cell['requests_per_s']} req/s, "
                        f"p50 {cell['p50_ms']} ms, p99 {cell['p99_ms']} ms, {cell['errors']} errors, "
                        f"{cell['server_cpu_s_per_1000']} CPU-s/1000",
                        flush=True,
                    )
    return facts


if __name__ == "__main__":
    main()
