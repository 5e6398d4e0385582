"""MkDocs hook: every table of figures in the docs, made at build time from the committed files.

A page asks for one with an HTML comment on a line of its own, which stays invisible where the
Markdown is read without this hook:

    <!-- figures: models -->                 the shipped models, from their metadata.json
    <!-- figures: peers PATH -->             the service against its peers, from a results JSON
    <!-- figures: recipe-ceiling PATH -->    the recipe's accuracy ceiling, from a results JSON
    <!-- figures: settings -->               the service's settings, from service/settings.py
    <!-- figures: hostile PATH -->           hostile clients against the service, from a results JSON
    <!-- figures: hostile-malloc PATH,PATH -->  the same runs side by side, one row per malloc setting
    <!-- figures: fastpath PATH -->          cifar10's fast form against its SavedModel, from a
                                             `python -m benchmarks.fastpath` results JSON

Each table is stamped with where its figures come from (file and commit), when and on what they
were measured, and the commit the page was built from. An unknown request fails the build.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checkout_importable() -> None:
    """This checkout's mkdocs_hooks/, benchmarks/ and service/ importable, from wherever mkdocs
    was started (`mkdocs build` puts no checkout on sys.path, `python -m mkdocs` only the
    working directory)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


_checkout_importable()
from mkdocs_hooks.stamp import line, source  # noqa: E402

REQUEST = re.compile(r"^<!-- figures: (?P<kind>[\w-]+)(?: (?P<path>\S+))? -->$", re.M)


def on_config(config):
    # MkDocs puts sys.path back as it was once a hook is loaded, and the tables below import
    # this checkout's code when the pages are built.
    _checkout_importable()
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:
    return REQUEST.sub(lambda m: figures(m["kind"], m["path"], page.file.src_uri), markdown)


def figures(kind: str, path: str | None, where: str) -> str:
    makers = {
        "models": models,
        "peers": peers,
        "recipe-ceiling": recipe_ceiling,
        "settings": settings,
        "hostile": hostile,
        "hostile-malloc": hostile_malloc,
        "mutation": mutation,
        "generators": generators,
        "fastpath": fastpath,
    }
    if kind not in makers or (path is None) != (kind in ("models", "settings")):
        raise ValueError(f"{where}: no such figures request: {kind} {path or ''}")
    return makers[kind](*(ROOT / p for p in path.split(","))) if path else makers[kind]()


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def models() -> str:
    """One row per shipped version: how it was made, its accuracy and its calibration."""
    metadata = sorted(
        ROOT.glob("models/*/*/assets.extra/metadata.json"),
        key=lambda p: (p.parts[-4], -int(p.parts[-3])),
    )
    newest = {}
    rows = []
    for path in metadata:
        meta = json.loads(path.read_text())
        name, version = meta["name"], str(meta["version"])
        served = newest.setdefault(name, version) == version
        metrics, training = meta.get("metrics", {}), meta.get("training", {})
        accuracy = [f"validation {percent(metrics['validation']['accuracy'])}"]
        if "test" in metrics:
            accuracy.append(f"test {percent(metrics['test']['accuracy'])}")
        if cv := metrics.get("cross_validation"):
            accuracy.append(
                f"{cv['folds']}-fold CV {percent(cv['mean_accuracy'])} ± {percent(cv['std_accuracy'])}"
            )
        if calibration := meta.get("calibration"):
            before, after = calibration["before"], calibration["after"]
            calibrated = (
                f"T = {calibration['temperature']:.3g} (on {calibration['fitted_on']}); "
                f"ECE {before['ece']:.3f} → {after['ece']:.3f}, NLL {before['nll']:.3f} → {after['nll']:.3f}"
            )
        else:
            calibrated = "uncalibrated"
        made = (meta.get("lineage") or {}).get("command") or training.get("command", "")
        trained = (
            f"{training.get('training_seconds', 0) / 60:.1f} min on {training.get('devices', 1)} "
            f"{training.get('accelerator', '?')}, {training.get('precision', 'float32')}, "
            f"{training.get('date', '?')[:10]}"
        )
        fast = [
            f"`{form_name}`: {percent(e[form_name]['accuracy'])}, ECE {e[form_name]['ece']:.3f}, "
            f"agrees {percent(e['top1_agreement'])}"
            for form_name, e in sorted((n, f["evaluation"]) for n, f in meta.get("runtimes", {}).items())
        ]
        rows.append(
            [
                f"`{name}/{version}`" + (" (served)" if served else ""),
                f"`{made}`",
                "; ".join(accuracy),
                calibrated,
                trained + (" (the source version's fit)" if meta.get("lineage") else ""),
                "; ".join(fast) or "—",
            ]
        )
    headers = ["model", "made by", "accuracy", "calibration", "fit took", "CPU fast form (validation)"]
    sources = ", ".join(source(p) for p in metadata)
    return table(headers, rows) + "\n\n" + line(f"each version's `metadata.json`: {sources}")


def peers(path: Path) -> str:
    """The service against the best peer in each cell, and what each server costs to run."""
    from benchmarks.peers.tables import lead  # the report's own comparison, not a copy of it

    results = json.loads(path.read_text())
    c = results["conditions"]
    servers = table(
        ["server", "start-up s", "RSS MB after warm-up"],
        [
            [s["label"], f"{s['startup_s']:.1f}", str(s["rss_mb"])]
            if "error" not in s
            else [s["label"], f"failed: {s['error']}", "–"]
            for s in results["servers"]
        ],
    )
    leads = table(
        [
            "generator",
            "payload",
            "clients",
            "best peer",
            "service ÷ best req/s",
            "p50 ms",
            "p99 ms",
            "target",
        ],
        lead(results["cells"]),
    )
    measured = (
        f"{source(path)}: `{c['command']}`, measured {c['date'][:16].replace('T', ' ')} UTC on "
        f"{results['model']}, {c['cpus']} CPUs ({c['platform']}, load average {c['load_average_1m']} "
        f"at start), Python {c['python']}"
    )
    return f"{leads}\n\n{servers}\n\n{line(measured)}"


def generators(path: Path) -> str:
    """One server reached by several generators (say its REST and its gRPC) side by side: per
    payload and client count, each generator's req/s, p50 and server CPU per 1,000 requests."""
    results = json.loads(path.read_text())
    c, cells = results["conditions"], results["cells"]
    names = list(dict.fromkeys(cell["generator"] for cell in cells))
    rows = []
    for payload, clients in dict.fromkeys((cell["payload"], cell["clients"]) for cell in cells):
        row = [payload, str(clients)]
        for name in names:
            cell = next(
                x for x in cells if (x["payload"], x["clients"], x["generator"]) == (payload, clients, name)
            )
            row.append(
                f"{cell['requests_per_s']:.0f}, {cell['p50_ms']:.0f}, {cell['server_cpu_s_per_1000']:.2f}"
            )
        rows.append(row)
    headers = ["payload", "clients", *(f"{name}: req/s, p50 ms, CPU-s / 1,000" for name in names)]
    measured = (
        f"{source(path)}: `{c['command']}`, measured {c['date'][:16].replace('T', ' ')} UTC on "
        f"{results['model']}, {c['cpus']} CPUs (load average {c['load_average_1m']} at start)"
    )
    return f"{table(headers, rows)}\n\n{line(measured)}"


def fastpath(path: Path) -> str:
    """One `python -m benchmarks.fastpath` run: in-process speed, locust A-B-A, or accuracy over HTTP."""
    results = json.loads(path.read_text())
    c, model = results["conditions"], results["model"]
    if "examples_per_second" in results:
        sizes, rates = results["batch_sizes"], results["examples_per_second"]
        base = rates["savedmodel"]
        rows = [
            [label, *(f"{by[str(s)]:,.0f} ({by[str(s)] / base[str(s)]:.2f}×)" for s in sizes)]
            for label, by in rates.items()
        ]
        made = table(["runtime", *(f"batch {s}: examples/s" for s in sizes)], rows)
        resize = [
            [n, *(f"{r[key]:.2f}" for key in ("call_ms", "resize_allocate_ms", "resize_allocate_call_ms"))]
            for n, r in results["resize_ms"].items()
        ]
        made += "\n\n" + table(
            ["batch n", "call at n, ms", "resize + allocate, ms", "resize + allocate + call, ms"], resize
        )
    elif "runs" in results:
        rows = [
            [
                r["phase"],
                f"`{r['model_runtime']}` ({r['answering']})",
                f"{r['requests_per_s']:.0f}",
                f"{r['p50_ms']:.0f}",
                f"{r['p99_ms']:.0f}",
                str(r["failures"]),
                f"{r['server_cpu_s']:.0f}",
                f"{r['requests'] / r['server_cpu_s']:.0f}",
            ]
            for r in results["runs"]
        ]
        headers = ["phase", "MODEL_RUNTIME (answering)", "req/s", "p50 ms", "p99 ms", "failures"]
        made = table([*headers, "server CPU-s", "req per server CPU-s"], rows)
        made += f"\n\nB ÷ mean of the A phases: **{results['speedup']}×** in req/s, {results['users']} users."
    elif "v2_against_native_max_abs" not in results:  # `tta`
        rows = [
            [name, percent(s["accuracy"]), f"{s['ece']:.4f}", f"{s['nll']:.4f}"]
            for name, s in results["scores"].items()
        ]
        made = table(["runtime", "accuracy", "ECE", "NLL"], rows)
    else:
        rows = [
            [
                name,
                percent(s["accuracy"]),
                f"{s['ece']:.4f}",
                f"{s['nll']:.4f}",
                f"{results['v2_against_native_max_abs'][name]:.1e}",
            ]
            for name, s in results["scores"].items()
        ]
        made = table(["answering", "accuracy", "ECE", "NLL", "max \\|v2 − native\\|"], rows)
        made += (
            f"\n\n{results['examples']:,} held-out photos ({results['split']} split); top-1 agreement "
            f"**{percent(results['top1_agreement'])}**, largest probability difference "
            f"{results['max_abs_probability_difference']}."
        )
    measured = (
        f"{source(path)}: `{c['command']}`, measured {c['date'][:16].replace('T', ' ')} UTC on cifar10 "
        f"v{model['version']}, {c['cpus']} CPUs (load average {c['load_average_1m']} at start)"
    )
    return f"{made}\n\n{line(measured)}"


def recipe_ceiling(path: Path) -> str:
    """Validation accuracy of the recipe's variants, mean of the seeds, and their compute."""
    results = json.loads(path.read_text())
    runs = results["results"]
    baseline = sum(r["seconds"] for r in runs["epochs_18"]["runs"]) / len(runs["epochs_18"]["runs"])
    rows = []
    for name, result in runs.items():
        config, accuracy = result["config"], result["validation_accuracy_percent"]
        seconds = sum(r["seconds"] for r in result["runs"]) / len(result["runs"])
        rows.append(
            [
                f"`{name}`",
                f"{config['epochs']}",
                "/".join(map(str, config["widths"])) + (", residual" if config["residual"] else ""),
                f"{config['translate']} px" + (f", cutout {config['cutout']}" if config["cutout"] else ""),
                f"{seconds / baseline:.2f}",
                " / ".join(f"{accuracy[k]:.1f}%" for k in ("none", "flip", "flip_translate")),
            ]
        )
    headers = [
        "recipe",
        "epochs",
        "widths",
        "translations",
        "compute (× 18 epochs)",
        "validation accuracy: no TTA / flip / flip + translate",
    ]
    _, machine, day = path.stem.rsplit("_", 2)
    measured = (
        f"{source(path)}, measured {day[:4]}-{day[4:6]}-{day[6:]} on {machine.upper()} "
        f"(the file's name), mean of {results['seeds']} seeds"
    )
    return table(headers, rows) + "\n\n" + line(measured)


def hostile(path: Path) -> str:
    """Per phase of the hostile corpus: the server's memory and CPU, the victim's latency."""
    from benchmarks.hostile import phases_table  # the report's own table, not a copy of it

    report = json.loads(path.read_text())
    summary = (
        f"Idle RSS of the process tree {report['idle_rss_mib']:.0f} MiB; kept "
        f"{report['settle_seconds']:.0f} s after the last hostile request "
        f"{report['kept_over_idle_mib']:+.0f} MiB; "
        f"victim p99 when idle {report['victim_p99_idle_ms']:.0f} ms; victim errors: "
        f"{report['victim_errors'] or 'none'}."
    )
    return f"{summary}\n\n" + "\n".join(phases_table(report)) + "\n\n" + line(hostile_run(path, report))


def mutation(path: Path) -> str:
    """The mutation score per guard module, as `scripts/mutation` wrote it (its links to the
    per-module pages, which the site does not carry, as plain names)."""
    summary = path / "README.md"
    lines = summary.read_text().splitlines()
    kept = [re.sub(r"\[(`[^`]+`)\]\([^)]+\)", r"\1", row) for row in lines if row.startswith("|")]
    total = next(row for row in lines if row.startswith("**Total"))
    return "\n".join(kept) + f"\n\n{total}\n\n" + line(f"{source(summary)}, written by `scripts/mutation`")


def hostile_malloc(*paths: Path) -> str:
    """The same corpus with the workers' malloc set differently: memory at its peak and kept."""
    from service.process.serve import MALLOC  # what python -m service sets when the report says "default"

    rows, runs = [], []
    for path in paths:
        report = json.loads(path.read_text())
        images = report["phases"]["images"]
        settings = {k: MALLOC[k] if v == "service default" else v for k, v in report["malloc"].items()}
        defaults = settings == MALLOC
        rows.append(
            [
                " ".join(f"`{k}={v}`" for k, v in sorted(settings.items()))
                + (" (the service's defaults)" if defaults else ""),
                f"{images['peak_over_idle_mib']:+.0f} MiB",
                f"{report['kept_over_idle_mib']:+.0f} MiB after {report['settle_seconds']:.0f} s",
            ]
        )
        runs.append(hostile_run(path, report))
    headers = ["workers' malloc", "peak RSS over idle (images phase)", "RSS kept after the corpus"]
    return table(headers, rows) + "\n\n" + line("; ".join(runs))


def hostile_run(path: Path, report: dict) -> str:
    """The stamp's account of one run: its file, when, on what, and how hard."""
    return (
        f"{source(path)}, measured {report['date'][:16].replace('T', ' ')} UTC on {report['machine']}: "
        f"{report['clients']} hostile clients, {report['phase_seconds']:.0f} s a phase"
    )


SETTING = re.compile(r"^    (?P<name>[a-z_]+): .+$")


def settings() -> str:
    """Every setting: its variable, its default and the comment above it in service/settings.py."""
    from service.settings import Settings

    path = ROOT / "service" / "settings.py"
    rows, comment, group = [], [], []

    def close_group() -> None:
        if group:
            rows.append(
                [
                    ", ".join(f"`{n.upper()}`" for n in group),
                    " / ".join(map(default, group)),
                    " ".join(comment),
                ]
            )

    for text in path.read_text().splitlines():
        stripped = text.strip()
        if stripped.startswith("#") and text.startswith("    #"):
            if group:  # a new comment starts a new row
                close_group()
                group, comment = [], []
            comment.append(stripped.lstrip("# "))
        elif (match := SETTING.match(text)) and match["name"] in Settings.model_fields:
            group.append(match["name"])
        elif not stripped:
            close_group()
            group, comment = [], []
    close_group()
    return table(["variable", "default", "what"], rows) + "\n\n" + line(source(path))


def default(name: str) -> str:
    from service.settings import Settings

    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return "from the machine"
    value = field.default
    if value is None or value in ({}, []):
        return "unset"
    return f"`{value}`"
