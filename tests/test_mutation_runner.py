"""scripts/mutants.py's own duties that a wrong step would turn into false kills: the command each
mutant's tests run with reaches pytest with its arguments as written."""

from __future__ import annotations

import importlib.util
import shlex
import sys

from shipped_service import ROOT

spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
mutants = sys.modules["mutants"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutants)


def test_a_pytest_argument_with_spaces_reaches_the_tests_as_one_argument():
    """Split on its spaces, `-m "not server"` would select the marker `not` and ask for a test file
    named `server`: every mutant's tests would fail, and every mutant count as killed."""
    args = ["-x", "-m", "not server", "-k", "not a and not b", "tests/test_service_errors.py"]
    command = mutants.test_command("/venv/bin/python", "/tmp/warm sock", 42, args)
    runner = ["/venv/bin/python", "scripts/warm_pytest.py", "run", "/tmp/warm sock", "42"]
    assert shlex.split(command) == [*runner, *args]
