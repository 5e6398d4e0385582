"""What a pip command installs, read from the installed packages' own metadata, and a child
Python that can import nothing else: so a test can show that a command a page tells a new user
to run is enough for what the page then runs, without building a fresh environment (minutes,
and TensorFlow's download) for it.

    allowed = installed_by(['-e', '.[docs]'])      # distributions, with their dependencies
    run_confined(allowed, ['-m', 'mkdocs', 'build'])  # ModuleNotFoundError for anything else
    confined_python(allowed) + ['-']               # a `python` for a shell line, reading stdin

This project's own requirements are read from the checkout's pyproject.toml, not from its
installed metadata, which is as old as the last `pip install -e .`: a requirement just taken out
of an extra is missing at once.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "cifar-serving"
ROOT = Path(__file__).resolve().parents[1]

# The child's import hook: a top-level module that some installed distribution provides, and no
# allowed one does, is refused. Modules of no distribution (the standard library, the checkout's
# benchmarks/ and tests/) pass.
_CONFINE = """
import importlib.abc, importlib.metadata, json, sys
from packaging.utils import canonicalize_name
allowed = set(json.loads(sys.argv.pop(1)))
providers = importlib.metadata.packages_distributions()

class Confined(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        owners = {canonicalize_name(d) for d in providers.get(top, [])}
        if owners and not owners & allowed:
            why = f"No module named {top!r} ({sorted(owners)} is not installed by the command)"
            raise ModuleNotFoundError(why, name=top)
        return None

sys.meta_path.insert(0, Confined())
if sys.argv.pop(1) == "-":  # the program on stdin, as `python -` runs it
    sys.argv[0] = "-"
    exec(compile(sys.stdin.read(), "<stdin>", "exec"), {"__name__": "__main__"})
else:  # -m module
    import runpy
    target = sys.argv.pop(1)
    sys.argv[0] = target
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def installed_by(arguments: list[str]) -> set[str]:
    """The distributions `pip install <arguments>` puts in an environment, with everything they
    require (extras included), as canonical names. `.[extras]` means this project."""
    wanted = [
        Requirement(PROJECT + arg[1:] if arg.startswith(".") else arg)
        for arg in arguments
        if not arg.startswith("-")
    ]
    done: set[tuple[str, frozenset[str]]] = set()
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        extras = frozenset(canonicalize_name(extra) for extra in requirement.extras)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            requires = project_requirements() if name == PROJECT else metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # not installed here: nothing of it can be imported
            continue
        for text in requires:
            needed = Requirement(text)
            environments = [{**default_environment(), "extra": extra} for extra in {*extras, ""}]
            if needed.marker is None or any(needed.marker.evaluate(env) for env in environments):
                wanted.append(needed)
    return {name for name, _ in done}


def project_requirements() -> list[str]:
    """This checkout's requirements as its metadata would list them: pyproject.toml's
    dependencies, and each extra's with an `extra == ...` marker."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = list(project["dependencies"])
    for extra, texts in project["optional-dependencies"].items():
        for text in texts:
            requirement = Requirement(text)
            own = f"({requirement.marker}) and " if requirement.marker else ""
            requirement.marker = Marker(f'{own}extra == "{extra}"')
            requires.append(str(requirement))
    return requires


def confined_python(allowed: set[str]) -> list[str]:
    """A `python` command that imports only what the `allowed` distributions provide; it takes
    `-m <module> ...`, or `-` for a program on stdin."""
    return [sys.executable, "-c", _CONFINE, json.dumps(sorted(allowed))]


def run_confined(allowed: set[str], arguments: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """`python -m <module> ...` (arguments[0] is `-m`) in a child that imports only what the
    `allowed` distributions provide, started in `cwd`."""
    assert arguments[0] == "-m"
    return subprocess.run(
        [*confined_python(allowed), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        **kwargs,
    )


def pip_installs(text: str) -> list[list[str]]:
    """The arguments of every `pip install` a page's text runs, in order."""
    return [
        [arg.strip("'\"") for arg in match.split()]
        for match in re.findall(r"pip install ((?:[^\s&;|]+ ?)+)", text)
    ]
