"""Print the requirements that pyproject.toml declares, one per line, for `pip install -r`.

    python docker/requirements.py [--pyproject PATH] [EXTRA ...]

prints the build system's requirements, the project's dependencies and those of each named
extra. The Dockerfile installs them from pyproject.toml alone, in layers of their own before
the code is copied, so a code change does not reinstall TensorFlow.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """Build requirements, dependencies, then the extras' dependencies."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise ValueError(f"unknown extras: {', '.join(unknown)} (known: {', '.join(optional)})")
    return [
        *pyproject["build-system"]["requires"],
        *project["dependencies"],
        *(requirement for extra in extras for requirement in optional[extra]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("extras", nargs="*", help="optional-dependency groups to add")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args()
    with args.pyproject.open("rb") as file:
        pyproject = tomllib.load(file)
    try:
        print(*requirements(pyproject, args.extras), sep="\n")
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
