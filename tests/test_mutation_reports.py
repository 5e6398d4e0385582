"""The mutation score we keep (docs/developing/mutation.md): every guard module mapped in
scripts/mutation.toml has a report, every survivor in it has a reason, and each module's score is
at least 90%. Running the mutants takes an hour (`scripts/mutation`); this reads what they left."""

from __future__ import annotations

import json
import tomllib

import pytest
from shipped_service import ROOT

REPORTS = ROOT / "reports" / "mutation"
MODULES = [m["path"] for m in tomllib.loads((ROOT / "scripts" / "mutation.toml").read_text())["module"]]


def report(path: str) -> dict:
    pages = [json.loads(page.read_text()) for page in REPORTS.glob("*.json")]
    found = [page for page in pages if page["path"] == path]
    assert found, f"{path} has no report: run scripts/mutation {path}"
    return found[0]


@pytest.mark.parametrize("path", MODULES)
def test_every_guard_module_has_a_score_of_at_least_90_percent_and_no_survivor_without_a_reason(path):
    module = report(path)
    assert module["unexplained"] == 0, f"{path}: survivors without a reason, see reports/mutation/"
    assert module["killed"] / (module["mutants"] - module["equivalent"]) >= 0.9
