"""The set-up commands the pages give are enough for what they then run: `python -m service`,
able to import only what README's set-up command installed (tests/installs.py), gets ready on
the shipped models and answers README's calls; the training command, only what getting-started's
training set-up installed, starts."""

from __future__ import annotations

import os
import re
import subprocess

import httpx
import pytest
from installs import confined_python, installed_by, pip_installs, run_confined
from served import free_port, stop, wait_ready
from shipped_service import ROOT, UNSET
from test_docs_examples import sh_blocks


def installs_before(page: str, command: str) -> set[str]:
    """What the `pip install`s of `page`'s block that runs `command` install."""
    blocks = sh_blocks(page, (ROOT / page).read_text())
    setup = next(block for block in blocks if command in block.text)
    return set().union(*(installed_by(arguments) for arguments in pip_installs(setup.text)))


@pytest.mark.server
def test_the_service_gets_ready_and_answers_with_only_what_readmes_set_up_installs(tmp_path):
    allowed = installs_before("README.md", "-m service")
    assert "tensorflow-cpu" in allowed
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in UNSET}
    # One worker, in the confined process itself: further workers start afresh, unconfined.
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "GRPC_PORT": str(free_port()), "WORKERS": "1"})
    log = tmp_path / "service.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*confined_python(allowed), "-m", "service"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, 180, log)
        image = httpx.post(
            f"{url}/predict/image", files={"file": (ROOT / "samples" / "cat.jpg").read_bytes()}
        )
        flower = httpx.post(f"{url}/predict/iris", json={"features": [5.1, 3.5, 1.4, 0.2]})
        assert (image.status_code, image.json()["label"]) == (200, "cat"), image.text
        assert (flower.status_code, flower.json()["label"]) == (200, "setosa"), flower.text
    finally:
        stop(process)
    output = log.read_text()
    assert "No module named" not in output
    # The ready line getting-started shows has the parts this one has (the numbers are the machine's).
    shown = re.search(r"`ready: ([^`]+)`", (ROOT / "docs" / "getting-started.md").read_text())
    logged = re.search(r": ready: (.+)", output)  # the message, after its logger's name
    assert shown and logged
    assert parts(shown[1]) == parts(logged[1]), (shown[1], logged[1])


def parts(ready_line: str) -> list[str]:
    """The first word of each part of a `ready:` line, numbers as N."""
    return [re.sub(r"\d+", "N", part.split()[0]) for part in ready_line.split("; ")]


def test_the_training_command_starts_with_only_what_getting_starteds_training_set_up_installs(tmp_path):
    allowed = installs_before("docs/getting-started.md", "-m training")
    # --help imports every training module (training/cli.py imports them all) and trains nothing.
    result = run_confined(allowed, ["-m", "training", "--help"], cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "iris" in result.stdout
