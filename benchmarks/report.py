"""Where benchmark results go and how they are written: one folder per run holding a JSON file
for machines and a Markdown file for people, with the command and machine state that produced
them, since a figure without its conditions cannot be compared."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from benchmarks.server import REPO


def output_folder(out: str | None, kind: str) -> Path:
    """`out`, or `reports/<kind>/<UTC timestamp>/` in the repository."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(out) if out else REPO / "reports" / kind / stamp
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def conditions(module: str) -> dict:
    """The command and the machine as they were when the run started. The load average shows
    whether something else was competing for the CPUs."""
    return {
        "command": shlex.join(["python", "-m", module, *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def conditions_markdown(c: dict) -> str:
    return (
        f"`{c['command']}`, {c['date']}, {c['cpus']} CPUs, load average {c['load_average_1m']} "
        f"at start, {c['platform']}, Python {c['python']}."
        + (
            f" Service settings: {', '.join(f'{k}={v}' for k, v in c['service_settings'].items())}."
            if c.get("service_settings")
            else ""
        )
    )


def write(folder: Path, stem: str, data: dict, markdown: str) -> None:
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (folder / f"{stem}.md").write_text(markdown + "\n")
