"""The service's modules and what each imports from the others, read from the code (its syntax
tree, nothing imported), for the structure page of the docs (docs/developing/structure.md):

    <!-- figures: modules -->        this checkout's service/, at build time
    <!-- figures: modules PATH -->   a snapshot written by this module, from another commit:

    git archive COMMIT service | tar -x -C /tmp/before
    python -m mkdocs_hooks.modules /tmp/before > docs/developing/modules-COMMIT.json
"""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGE = "service"
GENERATED = "third_party"
SUMMARY_CHARS = 100  # protobuf's generated modules: not the service's structure


@dataclass(frozen=True)
class Module:
    name: str  # dotted, without the package's own name: "process.serve", "app"
    lines: int
    summary: str  # its docstring's first sentence
    imports: list[str]  # the package's modules it imports, by the same names


def read(root: Path) -> list[Module]:
    """Every module of `root`/service, by name."""
    package = root / PACKAGE
    files = sorted(p for p in package.rglob("*.py") if GENERATED not in p.relative_to(package).parts)
    names = {_name(path.relative_to(package)) for path in files}
    return [_module(path, _name(path.relative_to(package)), names) for path in files]


def _name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] or ["__init__"]
    return ".".join(parts)


def _module(path: Path, name: str, names: set[str]) -> Module:
    text = path.read_text()
    tree = ast.parse(text)
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from service.protocols import v2_routes` imports the module v2_routes.
            candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            if candidate.startswith(f"{PACKAGE}."):
                local = candidate.removeprefix(f"{PACKAGE}.")
                if local in names and local != name:
                    imported.add(local)
    # `from service.protocols import x` names the package too; only its module x counts.
    imported -= {parent for parent in imported if any(m.startswith(f"{parent}.") for m in imported)}
    docstring = ast.get_docstring(tree) or ""
    summary = " ".join(docstring.split("\n\n")[0].split()).split(". ")[0].rstrip(".:")
    if len(summary) > SUMMARY_CHARS:
        summary = summary[:SUMMARY_CHARS].rsplit(" ", 1)[0] + " …"
    return Module(name, len(text.splitlines()), summary, sorted(imported))


def table(modules: list[Module]) -> str:
    """A Markdown table: module, lines, what it holds, what it imports of the service."""
    rows = ["| module | lines | what it holds | imports |", "|---|---|---|---|"]
    for module in modules:
        summary = module.summary.replace("|", "\\|")
        rows.append(f"| `{module.name}` | {module.lines} | {summary} | {', '.join(module.imports)} |")
    return "\n".join(rows)


def load(path: Path) -> list[Module]:
    return [Module(**module) for module in json.loads(path.read_text())["modules"]]


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    print(json.dumps({"modules": [asdict(m) for m in read(root)]}, indent=1))


if __name__ == "__main__":
    main()
