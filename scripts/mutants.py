"""Mutation testing of the guard modules: each module's mutants run against that module's tests
only (scripts/mutation.toml), and reports/mutation/ gets a page per module and a summary.

    scripts/mutation                          # every module in scripts/mutation.toml
    scripts/mutation service/deps.py          # the modules named
    scripts/mutation --changed origin/main    # the modules changed since a git ref
    scripts/mutation --survivors service/deps.py   # only the last run's survivors, after new tests
    scripts/mutation --known                  # the hand-written mutants, each against its test

Each module is mutated in its own copy of the checkout (build/mutation/<module>/) by cosmic-ray,
one mutant at a time; its tests run with -x in forks of one warm pytest process
(scripts/warm_pytest.py). Exit status 1 when a survivor has no reason in scripts/mutation.toml.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "scripts" / "mutation.toml"
BUILD = ROOT / "build" / "mutation"
REPORTS = ROOT / "reports" / "mutation"


@dataclass
class Survivor:
    path: str
    line: int
    operator: str
    diff: str
    text: str
    reason: str | None = None
    column: int = 0
    equivalent: bool = True  # False: behaves differently, and a test would have to copy the code

    @property
    def mutated(self) -> str:
        """The mutated line, stripped, as the diff shows it."""
        added = [line[1:] for line in self.diff.splitlines() if line.startswith("+") and line[:3] != "+++"]
        return added[0].strip() if added else ""


@dataclass
class Outcome:
    path: str
    tests: list[str]
    mutants: int = 0
    killed: int = 0
    timeouts: int = 0
    seconds: float = 0.0
    commit: str = "unknown"
    survivors: list[Survivor] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.killed / self.mutants if self.mutants else 1.0


def slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path.removesuffix(".py")).strip("_")


def copy_checkout(target: Path) -> None:
    """Tracked and untracked-but-not-ignored files: what a clean clone plus the edits holds."""
    if target.exists():
        shutil.rmtree(target)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source, copy = ROOT / name.decode(), target / name.decode()
        if source.is_symlink():  # samples/, a link git keeps as a link
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.symlink_to(os.readlink(source))
        elif source.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)


def test_command(python: str, socket: str, timeout: float, pytest_args: list[str]) -> str:
    """The command that runs a mutant's tests, as one string: cosmic-ray splits it (shlex), so it
    is quoted, and an argument with spaces ("-m", "not server") stays one argument."""
    return shlex.join([python, "scripts/warm_pytest.py", "run", socket, str(timeout), *pytest_args])


def mutate_module(module: dict, excluded: list[str], python: str, survivors_only: bool = False) -> float:
    """Run every mutant of the module in a fresh copy (or, with `survivors_only`, the last run's
    survivors again, against the tests as they are now); the seconds it took."""
    path, tests = module["path"], module["tests"]
    work = BUILD / slug(path)
    session = work / "session.sqlite"
    earlier = None
    if survivors_only:
        # The killed mutants stay killed only if the module is the one they were made from.
        if not session.exists() or (work / path).read_bytes() != (ROOT / path).read_bytes():
            raise SystemExit(f"{path}: changed since its last run (or never run): run it whole")
        earlier = (session.read_bytes(), (work / "commit").read_text().strip())
    copy_checkout(work)
    head = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(head, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!reports"]
    dirty = subprocess.run(status, cwd=ROOT, capture_output=True).stdout.strip()
    commit += " with uncommitted changes" if dirty else ""
    if earlier is not None:
        session.write_bytes(earlier[0])
        commit = f"{earlier[1]}; its survivors run again on {commit}"
        with sqlite3.connect(session) as db:
            db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
    (work / "commit").write_text(commit + "\n")
    socket = str(work / "warm.sock")
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
    server = subprocess.Popen(
        [python, "scripts/warm_pytest.py", "serve", socket], cwd=work, env=env, stdout=subprocess.DEVNULL
    )
    try:
        while not Path(socket).exists():
            if server.poll() is not None:
                raise SystemExit(f"{path}: the warm pytest process exited with {server.returncode}")
            time.sleep(0.2)
        pytest_args = ["-x", "-q", "-p", "no:cacheprovider", *module.get("pytest-args", []), *tests]
        started = time.monotonic()
        # The clean run goes through the very command the mutants will: one that fails for any
        # other reason than a mutant (a mangled argument) stops here instead of killing them all.
        clean = test_command(python, socket, 1800, pytest_args)
        baseline = subprocess.run(shlex.split(clean), cwd=work, env=env)
        clean_seconds = time.monotonic() - started
        if baseline.returncode != 0:
            raise SystemExit(f"{path}: its tests fail before any mutation ({' '.join(tests)})")
        # A mutant that makes the tests hang is killed by the timeout, well past a clean run.
        timeout = round(max(30.0, 3 * clean_seconds + 10))
        run = test_command(python, socket, timeout, pytest_args)
        config = work / "cosmic-ray.toml"
        config.write_text(
            "[cosmic-ray]\n"
            f"module-path = {json.dumps(path)}\n"
            f"timeout = {timeout + 30}\n"
            "excluded-modules = []\n"
            f"test-command = {json.dumps(run)}\n"
            "[cosmic-ray.distributor]\nname = 'local'\n"
            "[cosmic-ray.filters.operators-filter]\n"
            f"exclude-operators = {json.dumps(excluded)}\n"
        )
        bin_dir = Path(python).parent
        commands = [
            ["cosmic-ray", "init", config.name, session.name],
            ["cr-filter-operators", session.name, config.name],
            ["cr-filter-pragma", session.name],
            ["cosmic-ray", "exec", config.name, session.name],  # runs the mutants with no result
        ]
        for command in commands[-1:] if survivors_only else commands:
            subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=work, env=env, check=True)
    finally:
        if server.poll() is None:
            subprocess.run([python, "scripts/warm_pytest.py", "stop", socket], cwd=work, env=env)
            server.wait(timeout=60)
    return time.monotonic() - started


def read_session(module: dict, python: str, seconds: float) -> Outcome:
    """The outcome of the module's last run, from its cosmic-ray session."""
    path, work = module["path"], BUILD / slug(module["path"])
    dump = subprocess.run(
        [str(Path(python).parent / "cosmic-ray"), "dump", "session.sqlite"],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    outcome = Outcome(path, module["tests"], seconds=seconds)
    if (work / "commit").exists():
        outcome.commit = (work / "commit").read_text().strip()
    lines = (work / path).read_text().splitlines()
    for entry in filter(None, dump.splitlines()):
        item, result = json.loads(entry)
        # Skipped by the operator filter, or incompetent: a mutant cosmic-ray could not run at all.
        if result is None or result["worker_outcome"] == "skipped" or result["test_outcome"] == "incompetent":
            continue
        outcome.mutants += 1
        mutation = item["mutations"][0]
        if result["test_outcome"] == "survived":
            line, column = mutation["start_pos"]
            operator, diff = mutation["operator_name"], result.get("diff") or ""
            text = lines[line - 1].strip()
            outcome.survivors.append(Survivor(path, line, operator, diff, text, column=column))
        else:
            outcome.killed += 1
            outcome.timeouts += "timed out" in (result.get("output") or "")  # scripts/warm_pytest.py
    return outcome


def in_annotations(source: str) -> set[tuple[int, int]]:
    """The (line, column) of every `|` inside an annotation of `source`."""
    spans = set()
    for node in ast.walk(ast.parse(source)):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a]
            annotations = [a.annotation for a in every if a.annotation] + [node.returns] * bool(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for annotation in annotations:
            for part in ast.walk(annotation):
                if isinstance(part, ast.BinOp) and isinstance(part.op, ast.BitOr):
                    spans.add((part.left.end_lineno, part.left.end_col_offset))
    return spans


def explain(outcome: Outcome, equivalents: list[dict], accepted: list[dict]) -> None:
    """Give each survivor its reason from scripts/mutation.toml: [[equivalent]] (left out of the
    score) or [[accepted]] (counted as survived). A `|` made `&` in an annotation needs no entry:
    with `from __future__ import annotations` (every module here) annotations are never evaluated."""
    copy = BUILD / slug(outcome.path) / outcome.path  # the source the mutants were made from
    source = (copy if copy.exists() else ROOT / outcome.path).read_text()
    annotated = in_annotations(source) if "from __future__ import annotations" in source else set()
    for survivor in outcome.survivors:
        if survivor.operator == "core/ReplaceBinaryOperator_BitOr_BitAnd" and any(
            line == survivor.line and column <= survivor.column <= column + 2 for line, column in annotated
        ):
            survivor.reason = "an annotation, never evaluated (`from __future__ import annotations`)"
            continue
        for entries, equivalent in ((equivalents, True), (accepted, False)):
            for known in entries:
                if (known["path"], known["line"], known["operator"]) == (
                    survivor.path,
                    survivor.text,
                    survivor.operator,
                ) and known.get("mutant", survivor.mutated) == survivor.mutated:
                    survivor.reason, survivor.equivalent = known["reason"], equivalent


def module_page(outcome: Outcome) -> str:
    same = sum(s.reason is not None and s.equivalent for s in outcome.survivors)
    kept = sum(s.reason is not None and not s.equivalent for s in outcome.survivors)
    page = [
        f"# Mutants of `{outcome.path}`",
        "",
        f"Tests: {', '.join(f'`{t}`' for t in outcome.tests)}",
        "",
        f"Code: commit {outcome.commit}.",
        "",
        f"**{outcome.killed} of {outcome.mutants} killed ({outcome.score:.1%} raw"
        f", {outcome.killed / max(outcome.mutants - same, 1):.1%} of the {outcome.mutants - same}"
        f" not equivalent)**, {outcome.timeouts} of them by the timeout; {len(outcome.survivors)}"
        f" survived, {same} of them equivalent and {kept} accepted; {outcome.seconds:.0f} s.",
        "",
    ]
    if outcome.survivors:
        page += ["## Survivors", ""]
    for survivor in outcome.survivors:
        kind = "equivalent" if survivor.equivalent else "accepted (counted as survived)"
        reason = f"{kind}: {survivor.reason}" if survivor.reason else "**unexplained**"
        page += [
            f"### {survivor.path}:{survivor.line} `{survivor.operator}`",
            "",
            reason,
            "",
            "```diff",
            survivor.diff.strip(),
            "```",
            "",
        ]
    return "\n".join(page)


def summary_page(outcomes: list[dict], not_run: list[str]) -> str:
    killed = sum(o["killed"] for o in outcomes)
    mutants = sum(o["mutants"] for o in outcomes)
    equivalent = sum(o["equivalent"] for o in outcomes)
    page = [
        "# Mutation score of the guard modules",
        "",
        "Written by `scripts/mutation` (docs/developing/mutation.md); one page per module beside this one,",
        "each naming the commit it ran on. Score: killed / (mutants - equivalent ones); raw:",
        "killed / mutants. An accepted survivor has its reason written down but counts as survived.",
        "",
        "| module | killed | mutants | equivalent | accepted | unexplained | score | raw | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        same = o["equivalent"]
        score = o["killed"] / max(o["mutants"] - same, 1)
        unexplained = f"**{o['unexplained']}**" if o["unexplained"] else "0"
        page.append(
            f"| [`{o['path']}`]({slug(o['path'])}.md) | {o['killed']} | {o['mutants']} | {same} "
            f"| {o['accepted']} | {unexplained} | {score:.1%} | {o['killed'] / max(o['mutants'], 1):.1%} "
            f"| {o['seconds']:.0f} |"
        )
    for path in not_run:
        page.append(f"| `{path}` | | | | | | not run yet | | |")
    page += [
        "",
        f"**Total: {killed} of {mutants} killed, {equivalent} equivalent: "
        f"{killed / max(mutants - equivalent, 1):.1%} ({killed / max(mutants, 1):.1%} raw).**",
        "",
    ]
    return "\n".join(page)


def check_known(known: list[dict], python: str) -> int:
    """Apply each hand-written mutant alone to a copy of the checkout and run its test, which
    must fail; reports/mutation/known.md says how each went. The number that passed."""
    work = BUILD / "known"
    rows = ["| mutant | edit | test | result |", "|---|---|---|---|"]
    missed = 0
    for mutant in known:
        copy_checkout(work)
        source = work / mutant["path"]
        text = source.read_text()
        edit = f"`{mutant['path']}`: `{mutant['line']}` → `{mutant['mutant']}`"
        if text.count(mutant["line"]) != 1:
            result = f"**not applied**: the line occurs {text.count(mutant['line'])} times"
            missed += 1
        else:
            source.write_text(text.replace(mutant["line"], mutant["mutant"]))
            env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
            command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", mutant["test"]]
            run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
            summary = (run.stdout.strip().splitlines() or ["no output"])[-1]
            killed = run.returncode == 1  # tests ran and failed; not a collection or usage error
            missed += not killed
            result = ("killed" if killed else "**survived**") + f": {summary}"
        rows.append(f"| {mutant['name']} | {edit} | `{mutant['test']}` | {result} |")
        print(rows[-1], flush=True)
    page = [
        "# Hand-written mutants",
        "",
        "Each edit once passed the test meant to catch it (issue 26). `scripts/mutation --known`",
        "applies each alone to a copy of the checkout and runs that test, which must fail.",
        "",
        *rows,
        "",
    ]
    (REPORTS / "known.md").write_text("\n".join(page))
    return missed


def changed_since(ref: str) -> set[str]:
    names = subprocess.run(
        ["git", "diff", "--name-only", ref, "--"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return set(names.split())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="source files from scripts/mutation.toml (default: all)")
    parser.add_argument("--changed", metavar="REF", help="only the modules changed since this git ref")
    parser.add_argument(
        "--known",
        action="store_true",
        help="only the hand-written mutants of scripts/mutation.toml, each against its test",
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="run only the last run's survivors again (after adding tests; the module itself unchanged)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the reports from the last run (after editing the equivalents), running nothing",
    )
    args = parser.parse_args()
    config = tomllib.loads(CONFIG.read_text())
    modules = config["module"]
    known = {m["path"] for m in modules}
    unknown = set(args.modules) - known
    if unknown:
        parser.error(f"not in scripts/mutation.toml: {', '.join(sorted(unknown))}")
    if args.modules:
        modules = [m for m in modules if m["path"] in args.modules]
    if args.changed:
        changed = changed_since(args.changed)
        modules = [m for m in modules if m["path"] in changed]
    python = sys.executable
    REPORTS.mkdir(parents=True, exist_ok=True)
    if args.known:
        return 1 if check_known(config.get("known", []), python) else 0
    unexplained = 0
    for module in modules:
        page = REPORTS / f"{slug(module['path'])}.json"
        if args.report_only:
            if not (BUILD / slug(module["path"]) / "session.sqlite").exists():
                continue
            seconds = json.loads(page.read_text())["seconds"] if page.exists() else 0.0
        else:
            print(f"== {module['path']} against {' '.join(module['tests'])}", flush=True)
            seconds = mutate_module(module, config["exclude-operators"], python, args.survivors)
            if args.survivors and page.exists():
                seconds += json.loads(page.read_text())["seconds"]
        outcome = read_session(module, python, seconds)
        explain(outcome, config.get("equivalent", []), config.get("accepted", []))
        (REPORTS / f"{slug(outcome.path)}.md").write_text(module_page(outcome))
        missing = sum(s.reason is None for s in outcome.survivors)
        unexplained += missing
        (REPORTS / f"{slug(outcome.path)}.json").write_text(
            json.dumps(
                {
                    "path": outcome.path,
                    "killed": outcome.killed,
                    "mutants": outcome.mutants,
                    "survivors": len(outcome.survivors),
                    "unexplained": missing,
                    "equivalent": sum(s.reason is not None and s.equivalent for s in outcome.survivors),
                    "accepted": sum(s.reason is not None and not s.equivalent for s in outcome.survivors),
                    "seconds": round(outcome.seconds),
                },
                indent=1,
            )
            + "\n"
        )
        print(
            f"   {outcome.killed}/{outcome.mutants} killed ({outcome.score:.1%}), "
            f"{missing} survivors unexplained, {outcome.seconds:.0f} s",
            flush=True,
        )
    outcomes = [
        o
        for o in (json.loads(page.read_text()) for page in sorted(REPORTS.glob("*.json")))
        if o["path"] in known
    ]
    not_run = sorted(known - {o["path"] for o in outcomes})
    (REPORTS / "README.md").write_text(summary_page(outcomes, not_run))
    print((REPORTS / "README.md").read_text())
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
