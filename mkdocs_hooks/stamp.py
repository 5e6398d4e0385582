"""Where a generated figure comes from: the file, the commit that last changed it, the build."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def source(path: Path) -> str:
    """`path`, committed in <commit> on <date>, or uncommitted; relative to the repository."""
    relative = path.relative_to(ROOT).as_posix()
    committed = _git("log", "-1", "--format=%h %cs", "--", relative)
    if not committed or _git("status", "--porcelain", "--", relative):
        return f"`{relative}` (not committed)"
    commit, date = committed.split()
    return f"`{relative}` (commit {commit}, {date})"


def build() -> str:
    """This page's build: the checkout's commit and today's date."""
    head = _git("rev-parse", "--short", "HEAD") or "no git checkout"
    return f"page built from commit {head} on {dt.datetime.now(dt.UTC):%Y-%m-%d}"


def line(text: str) -> str:
    """The stamp under a generated figure."""
    return f"<small>Generated from {text}; {build()}.</small>"
