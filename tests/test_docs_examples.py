"""The shell examples of README.md and of every page of the docs run as written, against
`python -m service` on the shipped models.

Every fenced ```sh block runs with bash from the repository's root, `localhost:8000` pointing at
the test's server, unless the line right above its fence says why not:
`<!-- docs-test: skip (reason) -->`. A block is cut into steps at its `# →` lines; each step
must exit 0 (curl fails on an HTTP error unless the `# →` line names the status, as in
`# → 422 {...}`), and prints what its `# →` line shows: JSON with the same keys and the same
strings, booleans and integers, and numbers with a fraction within one unit of their last digit
shown (a page shows what its command prints, rounded: a new model version means new figures, as
it means a new version number), `...` standing for what is left out; other output must contain
the line's text, piece by piece between the `...`. The models' versions shown must be the newest
shipped. README's blocks run their `.venv/bin/python` as a reader's would after README's own
commands: able to import only what README's `pip install`s up to that block installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal

import pytest
from installs import confined_python, installed_by, pip_installs
from served import free_port
from shipped_service import ROOT, newest_versions, shipped_service

# README.md and every page of the site; the model cards' pages are made from the exports at build time.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SKIP = re.compile(r"<!-- docs-test: skip \((?P<reason>[^)]+)\) -->")
EXPECTED = "# →"
STATUS = re.compile(r"(?P<status>[1-5]\d\d)\s+(?P<body>.*)", re.S)


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    text: str
    skip: str | None  # the reason, when marked


@dataclass(frozen=True)
class Step:
    commands: str
    expected: str | None  # the text after "# →"


def sh_blocks(page: str, markdown: str) -> list[Block]:
    lines = markdown.splitlines()
    blocks, start = [], None
    for number, line in enumerate(lines):
        if start is None and line.strip() == "```sh":
            start = number
        elif start is not None and line.strip() == "```":
            marker = SKIP.fullmatch(lines[start - 1].strip()) if start else None
            text = "\n".join(lines[start + 1 : number])
            blocks.append(Block(page, start + 1, text, marker["reason"] if marker else None))
            start = None
    return blocks


def steps(block: Block) -> list[Step]:
    found, commands = [], []
    for line in block.text.splitlines():
        if line.strip().startswith(EXPECTED):
            found.append(Step("\n".join(commands), line.strip()[len(EXPECTED) :].strip()))
            commands = []
        else:
            commands.append(line)
    if any(line.strip() and not line.strip().startswith("#") for line in commands):
        found.append(Step("\n".join(commands), None))
    return found


BLOCKS = [block for path in PAGES for block in sh_blocks(str(path.relative_to(ROOT)), path.read_text())]
RUN = [block for block in BLOCKS if block.skip is None]


def without_ellipses(text: str) -> str:
    """The JSON left when the `...` outside its strings are taken out, with their commas."""
    parts = re.split(r'("(?:\\.|[^"\\])*")', text)  # odd parts are string literals
    return "".join(
        part if i % 2 else re.sub(r"\.\.\.\s*,\s*|,?\s*\.\.\.", "", part) for i, part in enumerate(parts)
    )


def mismatches(expected, actual, where: str = "") -> list[str]:
    """How `actual` differs from the page's `expected` (a subset, numbers with fractions as shown)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where or 'output'}: expected an object, got {actual!r}"]
        return [
            problem
            for key, value in expected.items()
            for problem in (
                mismatches(value, actual[key], f"{where}.{key}")
                if key in actual
                else [f"{where}.{key}: missing from {sorted(actual)}"]
            )
        ]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) < len(expected):
            return [f"{where}: expected a list of at least {len(expected)}, got {actual!r}"]
        return [
            p
            for i, (e, a) in enumerate(zip(expected, actual, strict=False))
            for p in mismatches(e, a, f"{where}[{i}]")
        ]
    if isinstance(expected, float):
        if not isinstance(actual, int | float) or isinstance(actual, bool):
            return [f"{where}: expected a number, got {actual!r}"]
        # The place of the last digit the page shows: 0.0092 → 0.0001, -12.1 → 0.1, 4.2e-06 → 1e-07.
        shown = float(10 ** Decimal(repr(expected)).as_tuple().exponent)
        close = abs(actual - expected) <= shown * (1 + 1e-9)
        return [] if close else [f"{where}: the page shows {expected!r}, got {actual!r}"]
    return (
        []
        if expected == actual and type(expected) is type(actual)
        else [f"{where}: the page says {expected!r}, got {actual!r}"]
    )


def shown_versions(value) -> list[tuple[str, str]]:
    """(model, version) pairs an output on a page shows."""
    if isinstance(value, list):
        return [pair for item in value for pair in shown_versions(item)]
    if not isinstance(value, dict):
        return []
    own = []
    if "model" in value and "version" in value:
        own.append((value["model"], value["version"]))
    if "name" in value and "live_version" in value:
        own.append((value["name"], value["live_version"]))
    return own + [pair for item in value.values() for pair in shown_versions(item)]


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    grpc = free_port()
    with shipped_service(tmp_path_factory.mktemp("docs") / "service.log", GRPC_PORT=str(grpc)) as (_, http):
        yield Ports(http, grpc)


def readers_python(block: Block) -> str:
    """The `python` of the reader's .venv when `block` runs, as a shell word. README's is built by
    README's own commands, so it imports only what README's `pip install`s up to this block
    installed; the docs' pages say in their text what to install, and run with the tests' own."""
    if block.page != "README.md":
        return shlex.quote(sys.executable)
    installed: set[str] = set()
    for earlier in BLOCKS:
        if earlier.page == block.page and earlier.line <= block.line:
            for arguments in pip_installs(earlier.text):
                installed |= installed_by(arguments)
    return shlex.join(confined_python(installed))


def run(step: Step, ports: Ports, python: str) -> tuple[int | None, str]:
    """Run a step as the page's reader would, `python` standing for the reader's .venv/bin/python;
    (HTTP status when the page names one, stdout)."""
    status = STATUS.fullmatch(step.expected or "")
    # Quiet curl, failing on HTTP errors; or, where the page shows an error, printing its status.
    options = '--write-out "\\n%{http_code}"' if status else "--fail-with-body"
    commands = (
        step.commands.replace("localhost:8000", f"localhost:{ports.http}")
        .replace("127.0.0.1:8000", f"127.0.0.1:{ports.http}")
        .replace("localhost:8081", f"localhost:{ports.grpc}")
    )
    # The reader's .venv, set up as the page says: this environment, with what `python` may import.
    pip = f"{shlex.quote(sys.executable)} -m pip"
    commands = re.sub(r"\.venv/bin/(python|pip)\b", lambda m: python if m[1] == "python" else pip, commands)
    script = f'set -euo pipefail\ncurl() {{ command curl --silent --show-error {options} "$@"; }}\n{commands}'
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{step.commands}\n{result.stdout}{result.stderr}"
    )
    if not status:
        return None, result.stdout
    body, _, code = result.stdout.rstrip("\n").rpartition("\n")
    return int(code), body


# The programs the pages' examples run, and how to get each. Where one is missing its examples
# skip, and fail in CI (`required_in_ci`), rather than each failing: `pytest -x` would stop at
# the first, and a missing tool is not a broken page.
TOOLS = {"curl": "apt-get install curl", "promtool": "scripts/install-prometheus"}


@pytest.mark.parametrize("path", PAGES, ids=[str(path.relative_to(ROOT)) for path in PAGES])
def test_skipped_blocks_say_why_and_markers_sit_on_a_fence(path):
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        where = f"{path.relative_to(ROOT)}:{number + 1}"
        # A block under the old marker (readme-test) would run instead of being skipped.
        assert "readme-test" not in line, f"{where}: the marker is <!-- docs-test: skip (reason) -->"
        if line.strip().startswith("<!--") and "docs-test" in line:  # a marker, not prose about one
            assert SKIP.fullmatch(line.strip()), f"{where}: malformed marker {line!r}"
            assert lines[number + 1].strip() == "```sh", f"{where}: no ```sh fence below"


def test_the_readme_and_the_docs_have_examples_that_talk_to_the_service():
    for page in ("README.md", "docs/api/native.md"):
        assert any("localhost:8000" in block.text for block in RUN if block.page == page), page
    assert any(step.expected for block in RUN for step in steps(block))


@pytest.mark.server
@pytest.mark.required_in_ci
@pytest.mark.parametrize("block", RUN, ids=[f"{block.page}:{block.line}" for block in RUN])
def test_docs_block_runs_as_written(block, ports):
    for tool, how in TOOLS.items():
        if re.search(rf"^\s*{tool} ", block.text, re.M) and not shutil.which(tool):
            pytest.skip(f"{block.page}'s example runs {tool}: {how}")
    newest = {name: str(version) for name, version in newest_versions().items()}
    python = readers_python(block)
    for step in steps(block):
        status, output = run(step, ports, python)
        if step.expected is None:
            continue
        expected_text = step.expected
        if status is not None:
            match = STATUS.fullmatch(expected_text)
            assert status == int(match["status"]), f"{step.commands}\n{status} {output}"
            expected_text = match["body"]
        try:
            expected = json.loads(without_ellipses(expected_text))
        except json.JSONDecodeError:  # text: its pieces, in order
            position = 0
            for piece in (p.strip() for p in expected_text.split("...")):
                found = output.find(piece, position)
                assert found >= 0, f"{step.commands}\nthe page shows {expected_text!r}; got:\n{output}"
                position = found + len(piece)
            continue
        for model, version in shown_versions(expected):
            assert version == newest.get(model), (
                f"the page shows {model} version {version}; the newest shipped is {newest.get(model)}"
            )
        problems = mismatches(expected, json.loads(output))
        assert not problems, f"{step.commands}\n" + "\n".join(problems) + f"\ngot: {output}"
