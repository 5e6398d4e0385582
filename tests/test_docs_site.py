"""The documentation site builds with `mkdocs build --strict`: no broken link or anchor, no page
left out of the navigation, every table of figures made from a file that is there, and the
model cards of the shipped models rendered as pages."""

from __future__ import annotations

import ast
import importlib.metadata
import io
import json
import os
import re
import tomllib

import pytest
from installs import installed_by, pip_installs, run_confined
from packaging.utils import canonicalize_name
from PIL import Image
from shipped_service import ROOT, newest_versions
from test_docs_examples import sh_blocks

from mkdocs_hooks import figures
from mkdocs_hooks import modules as structure
from service.settings import Settings


def readmes_docs_install() -> list[str]:
    """The arguments of the `pip install` in README's command that reads the docs with mkdocs."""
    command = re.search(r"`([^`]*pip install [^`]*mkdocs[^`]*)`", (ROOT / "README.md").read_text())
    assert command, "README no longer says how to read the docs with mkdocs"
    return pip_installs(command[1])[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site as a reader builds it after README's `pip install -e ".[docs]"`: with only what
    that installs importable, and from outside the checkout, which nothing puts on sys.path."""
    out = tmp_path_factory.mktemp("site")
    result = run_confined(
        installed_by(readmes_docs_install()),
        ["-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=tmp_path_factory.mktemp("elsewhere"),
        # Material's notice about its end of life, which says nothing about this site.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_the_site_builds_strictly_with_every_figures_request_answered(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        assert "<!-- figures:" not in page.read_text(), page


def test_the_shipped_models_cards_are_pages_with_their_figures(site):
    for name, version in newest_versions().items():
        page = (site / "models" / f"{name}.html").read_text()
        assert f"Model card: {name} v{version}" in page
        assert f'src="{name}/reliability_after.png"' in page
        assert (site / "models" / name / "reliability_after.png").is_file()


def test_the_models_table_shows_every_shipped_version_and_its_calibration(site):
    page = (site / "models" / "shipped.html").read_text()
    shipped = sorted(ROOT.glob("models/*/*/assets.extra/metadata.json"))
    assert shipped, "no shipped model found: the loop below would check nothing"
    for metadata in shipped:
        name, version = metadata.parts[-4], metadata.parts[-3]
        assert f"{name}/{version}" in page
        assert metadata.relative_to(ROOT).as_posix() in page  # in the stamp
        if calibration := json.loads(metadata.read_text()).get("calibration"):
            assert f"T = {calibration['temperature']:.3g}" in page


def test_a_figures_request_for_something_unknown_fails_the_build():
    with pytest.raises(ValueError, match="no such figures request"):
        figures.figures("benchmarks", None, "docs/x.md")
    with pytest.raises(FileNotFoundError):
        figures.figures("peers", "benchmarks/results/missing.json", "docs/x.md")


def test_the_security_page_shows_the_hostile_benchmarks_figures_from_its_results(site):
    page = (site / "operating" / "security.html").read_text()
    results = {
        name: json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())
        for name in ("hostile", "hostile_glibc_defaults")
    }
    hostile = results["hostile"]
    assert f"Idle RSS of the process tree {hostile['idle_rss_mib']:.0f} MiB" in page
    for phase in hostile["phases"].values():
        assert f"{phase['peak_over_idle_mib']:+.0f} MiB" in page
        assert f"{phase['victim_p50_ms']:.0f} / {phase['victim_p99_ms']:.0f} ms" in page
    for name, report in results.items():
        assert f"{report['kept_over_idle_mib']:+.0f} MiB after {report['settle_seconds']:.0f} s" in page
        assert f"benchmarks/results/{name}.json" in page  # in the stamp
    assert "MALLOC_MMAP_THRESHOLD_=33554432" in page
    assert "(the service&#39;s defaults)" in page or "(the service's defaults)" in page


def test_the_mutation_page_shows_each_modules_score_from_its_report(site):
    page = (site / "developing" / "mutation.html").read_text()
    for report in (ROOT / "reports" / "mutation").glob("*.json"):
        module = json.loads(report.read_text())
        assert f"<code>{module['path']}</code>" in page
        assert f">{module['killed']}</td>" in page and f">{module['mutants']}</td>" in page
    assert "reports/mutation/README.md" in page  # in the stamp


def test_the_readme_states_the_mutation_scores_and_module_count_of_the_last_report():
    report = (ROOT / "reports" / "mutation" / "README.md").read_text()
    total = re.search(r"^\*\*Total: .*: ([\d.]+%) \(([\d.]+%) raw\)", report, re.MULTILINE)
    stated = re.search(
        r"\*\*([\d.]+%) of the mutants killed\*\*\s+across the (\d+) guard modules\s+\(([\d.]+%) counting",
        (ROOT / "README.md").read_text(),
    )
    assert total and stated
    assert (stated[1], stated[3]) == (total[1], total[2])
    assert int(stated[2]) == len(list((ROOT / "reports" / "mutation").glob("*.json")))


def test_the_grpc_page_shows_its_benchmarks_from_their_results(site):
    page = (site / "api" / "grpc.html").read_text()
    results = ROOT / "benchmarks" / "results"
    rest_and_grpc = json.loads((results / "peers_grpc_rest_20261206.json").read_text())
    for cell in rest_and_grpc["cells"]:
        cpu = cell["server_cpu_s_per_1000"]
        assert f"{cell['requests_per_s']:.0f}, {cell['p50_ms']:.0f}, {cpu:.2f}" in page
    against_triton = json.loads((results / "peers_grpc_triton_20261206.json").read_text())
    service = [cell for cell in against_triton["cells"] if cell["server"].startswith("this service")]
    assert service and all(f"<td>{cell['clients']}</td>" in page for cell in service)
    assert "peers_grpc_triton_20261206.json" in page and "peers_grpc_rest_20261206.json" in page


def test_the_readmes_python_examples_import_only_what_its_own_commands_install():
    """A new user runs README's commands in order: each Python example may import what the
    `pip install`s before it (set-up included) installed, and nothing else."""
    providers = importlib.metadata.packages_distributions()
    installed: set[str] = set()
    checked = 0
    for block in sh_blocks("README.md", (ROOT / "README.md").read_text()):
        for arguments in pip_installs(block.text):
            installed |= installed_by(arguments)
        for program in re.findall(r"python - <<'PY'\n(.*?)\nPY\n", block.text, re.S):
            for node in ast.walk(ast.parse(program)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                for top in {name.partition(".")[0] for name in names}:
                    owners = {canonicalize_name(d) for d in providers.get(top, [])}
                    assert not owners or owners & installed, f"README imports {top} before installing it"
                    checked += 1
    assert checked >= 2


def test_the_structure_page_shows_the_modules_now_and_before_from_the_code(site):
    page = (site / "developing" / "structure.html").read_text()
    now, before = page.split('id="before-main-at-c723bef"')
    assert "<code>process.serve</code>" in now and "<code>middleware</code>" in now
    assert "<code>startup</code>" not in now
    assert "<code>startup</code>" in before and "<code>process.serve</code>" not in before


def test_the_module_map_reads_each_form_of_import_and_nothing_generated(tmp_path):
    package = tmp_path / "service"
    (package / "process").mkdir(parents=True)
    (package / "third_party").mkdir()
    (package / "__init__.py").write_text('"""The package."""\n')
    (package / "process" / "__init__.py").write_text("")
    (package / "process" / "ready.py").write_text(
        '"""Ready: the line. More."""\nimport service.settings\nfrom service.process import serve\n'
    )
    (package / "process" / "serve.py").write_text("from service import settings, heap\n")
    (package / "settings.py").write_text("import json\nfrom .process import ready\n")
    (package / "third_party" / "wire_pb2.py").write_text("import service.settings\n")
    by_name = {module.name: module for module in structure.read(tmp_path)}
    assert set(by_name) == {"__init__", "process", "process.ready", "process.serve", "settings"}
    assert by_name["process.ready"].imports == ["process.serve", "settings"]
    assert by_name["process.ready"].summary == "Ready: the line"
    assert by_name["process.serve"].imports == ["settings"]  # heap is no module of the package
    assert by_name["settings"].imports == []  # relative imports: the service writes none


def test_the_readmes_upload_limits_are_the_settings_defaults():
    stated = re.search(r"up to (\d+) MiB and (\d+) megapixels", (ROOT / "README.md").read_text())
    assert stated, "README no longer states the limits; drop this test or say them again"
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert int(stated[1]) * 2**20 == defaults["max_upload_bytes"]
    assert int(stated[2]) * 10**6 == defaults["max_image_pixels"]


def test_the_readmes_links_name_files_of_the_checkout():
    """README is read on GitHub and in the clone, outside the site that `--strict` checks."""
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) > 10
    assert not [link for link in local if not (ROOT / link).exists()]


def test_reading_the_docs_locally_leaves_the_services_port_free():
    """mkdocs serves on 127.0.0.1:8000 unless told otherwise, where the service the pages talk to
    listens: mkdocs.yml's dev_addr, and any --dev-addr a page gives, are another port."""
    service = Settings.model_fields["port"].default
    configured = re.search(r"^dev_addr: [\w.]+:(\d+)", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert configured and int(configured[1]) != service
    for page in (ROOT / "README.md", *(ROOT / "docs").rglob("*.md")):
        for port in re.findall(r"mkdocs serve --dev-addr [\w.]+:(\d+)", page.read_text()):
            assert int(port) != service, page


def test_the_readmes_python_and_samples_are_the_projects():
    readme = (ROOT / "README.md").read_text()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert re.search(r"Python (\d+\.\d+) or newer", readme)[1] == requires.removeprefix(">=")
    samples = sorted((ROOT / "samples").glob("*.jpg"))
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    assert f"{words[len(samples) - 1]} 32×32 photos" in readme
    assert {Image.open(io.BytesIO(sample.read_bytes())).size for sample in samples} == {(32, 32)}
