"""Run pytest in forks of one warm process, so that each mutant pays for its tests and not for
importing TensorFlow (about 10 s a process on this machine, more than most test files take).

    python scripts/warm_pytest.py serve SOCKET            # imports third-party packages, then waits
    python scripts/warm_pytest.py run SOCKET TIMEOUT ARGS  # pytest ARGS in a fork; its exit status
    python scripts/warm_pytest.py stop SOCKET

The server imports only third-party packages, never the project's: each fork imports the
project from disk, as the mutation tool has just rewritten it. Servers a test starts in a
subprocess import it from disk too, so they run the mutant as well.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from importlib.metadata import entry_points
from multiprocessing.connection import Client, Listener

# What the tests import that is slow to import; anything the project owns stays out.
PRELOAD = [
    "numpy",
    "tensorflow",
    "keras",
    "PIL.Image",
    "fastapi",
    "fastapi.testclient",
    "starlette",
    "pydantic",
    "pydantic_settings",
    "prometheus_client",
    "multipart",
    "httpx",
    "uvicorn",
    "hypothesis",
    "pytest",
]
# pytest warns (an error under this project's settings) that it cannot rewrite the asserts of the
# plugins imported before it started; their asserts are not the tests'.
QUIET = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]


def serve(address: str) -> None:
    sys.dont_write_bytecode = True  # a mutant written within the same second must not hit a stale .pyc
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    for name in PRELOAD:
        importlib.import_module(name)
    for plugin in entry_points(group="pytest11"):  # locust's and schemathesis' take seconds
        plugin.load()
    import pytest

    with Listener(address, family="AF_UNIX") as listener:
        while True:
            with listener.accept() as connection:
                request = connection.recv()
                if request is None:
                    return
                timeout, args = request
                connection.send(_run_in_fork(pytest, args, timeout))


def _run_in_fork(pytest, args: list[str], timeout: float) -> int:
    pid = os.fork()
    if pid == 0:
        os.setpgrp()  # a timeout ends the servers a test started as well
        log = os.open("pytest.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # the last run's output
        os.dup2(log, 1)
        os.dup2(log, 2)
        os._exit(int(pytest.main([*QUIET, *args])))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return 124


def run(address: str, timeout: float, args: list[str]) -> int:
    with Client(address, family="AF_UNIX") as connection:
        connection.send((timeout, args))
        status = connection.recv()
    if status == 124:
        print(f"timed out after {timeout:.0f} s")  # the report counts these apart
    return status


def stop(address: str) -> None:
    with Client(address, family="AF_UNIX") as connection:
        connection.send(None)


if __name__ == "__main__":
    command, address, *rest = sys.argv[1:]
    if command == "serve":
        serve(address)
    elif command == "run":
        sys.exit(run(address, float(rest[0]), rest[1:]))
    elif command == "stop":
        stop(address)
    else:
        sys.exit(f"unknown command {command!r}: serve, run or stop")
