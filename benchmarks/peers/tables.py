"""The peers report: one Markdown table per load generator and payload, and a plot of
requests/s against clients, one panel per generator and payload."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks import report
from benchmarks.peers.servers import SERVICE

COLUMNS = [
    "server",
    "clients",
    "req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "server CPU-s / 1000 req",
    "server RSS MB",
    "client CPU %",
]


def _number(value: float, digits: int = 1) -> str:
    return (
        "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"
    )


def cell_row(cell: dict) -> list[str]:
    return [
        cell["server"],
        str(cell["clients"]),
        _number(cell["requests_per_s"]),
        _number(cell["p50_ms"], 0),
        _number(cell["p99_ms"], 0),
        str(cell["errors"]),
        _number(cell["server_cpu_s_per_1000"], 2),
        str(cell["server_rss_mb"]),
        str(cell["client_cpu_percent"]),
    ]


def to_markdown(results: dict) -> str:
    parts = ["# The service against its alternatives", report.conditions_markdown(results["conditions"])]
    parts.append(
        report.markdown_table(
            ["server", "start-up s (launch to first prediction)", "RSS MB after warm-up"],
            [
                [s["label"], f"{s['startup_s']:.1f}", str(s["rss_mb"])]
                if "error" not in s
                else [s["label"], f"failed: {s['error']}", "–"]
                for s in results["servers"]
            ],
        )
    )
    for generator in results["settings"]["generators"]:
        for payload in results["settings"]["payloads"]:
            cells = [c for c in results["cells"] if c["generator"] == generator and c["payload"] == payload]
            if cells:
                parts += [
                    f"## {payload} JPEG, {generator}",
                    report.markdown_table(COLUMNS, map(cell_row, cells)),
                ]
    if leads := lead(results["cells"]):
        parts += [
            "## The service against the best peer in each cell",
            report.markdown_table(
                [
                    "generator",
                    "payload",
                    "clients",
                    "best peer",
                    "service ÷ best peer req/s",
                    "p50 service / peer ms",
                    "p99 service / peer ms",
                    "target",
                ],
                leads,
            ),
        ]
    parts.append(
        "req/s counts answered predictions only; p50/p99 are over them. Server CPU and RSS cover "
        "all of a server's processes (workers, Triton's binary, Ray's daemons); client CPU % is "
        "the load generator's own CPU time over the cell's wall time (100 % is one core)."
    )
    return "\n\n".join(parts)


LEAD = 1.25  # the service's req/s over the best peer's the project aims for, from 8 clients up


def target(service: dict, best: dict, ratio: float) -> str:
    """The project's aim for one cell: at one client a p50 no higher than the best peer's; from
    8 clients up LEAD times its req/s with a p99 no higher. "met", or what is missing."""
    if service["clients"] == 1:
        return "met" if service["p50_ms"] <= best["p50_ms"] else "p50 higher"
    missing = [f"under {LEAD}×"] if not ratio >= LEAD else []
    missing += ["p99 higher"] if service["p99_ms"] > best["p99_ms"] else []
    return "; ".join(missing) or "met"


def lead(cells: list[dict]) -> list[list[str]]:
    """For each generator, payload and client count with the service and a peer: the peer with
    the most req/s, the service's ratio to it, both p50s and p99s, and whether the target is met."""
    rows = []
    for key in dict.fromkeys((c["generator"], c["payload"], c["clients"]) for c in cells):
        same = [c for c in cells if (c["generator"], c["payload"], c["clients"]) == key]
        service = next((c for c in same if c["server"] == SERVICE), None)
        peers = [c for c in same if c["server"] != SERVICE]
        if service is None or not peers:
            continue
        best = max(peers, key=lambda c: c["requests_per_s"])
        ratio = service["requests_per_s"] / best["requests_per_s"] if best["requests_per_s"] else math.nan
        p50, p99 = (f"{_number(service[k], 0)} / {_number(best[k], 0)}" for k in ("p50_ms", "p99_ms"))
        verdict = target(service, best, ratio)
        rows.append([*map(str, key), best["server"], _number(ratio, 2), p50, p99, verdict])
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generators, payloads = results["settings"]["generators"], results["settings"]["payloads"]
    figure, axes = plt.subplots(
        len(generators),
        len(payloads),
        figsize=(4 * len(payloads) + 2.5, 3.2 * len(generators)),
        squeeze=False,
    )
    servers = list(dict.fromkeys(c["server"] for c in results["cells"]))
    for row, generator in enumerate(generators):
        for col, payload in enumerate(payloads):
            ax = axes[row][col]
            for server in servers:
                cells = [
                    c
                    for c in results["cells"]
                    if (c["server"], c["generator"], c["payload"]) == (server, generator, payload)
                ]
                ax.plot(
                    [c["clients"] for c in cells], [c["requests_per_s"] for c in cells], "o-", label=server
                )
            ax.set(title=f"{payload}, {generator}", xlabel="concurrent clients", ylabel="requests/s")
            ax.set_xscale("log", base=2)
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))  # off the data
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
