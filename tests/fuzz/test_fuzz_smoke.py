"""The CI smoke of `make fuzz`: the same harness (fresh database, live API, schemathesis with
every check, signed webhooks), a few examples per operation. 0 failures, 0 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SMOKE = ["--max-examples", "3", "--seed", "1", "--phases", "examples,coverage,fuzzing"]


def _run() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.fuzz", *SMOKE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )


def _tool_crash(run: subprocess.CompletedProcess[str]) -> bool:
    """schemathesis stopped on an internal error of its own (seen once: hypothesis failing to
    describe one of schemathesis's lambdas), with no check failed: no finding about the API."""
    return run.returncode != 0 and "Runtime Error" in run.stdout and " failed" not in run.stdout


@pytest.mark.timeout(480)
def test_schemathesis_finds_nothing() -> None:
    run = _run()
    if _tool_crash(run):  # once: a finding is never retried, only the tool's own crash
        run = _run()
    summary = run.stdout[-4000:]
    assert run.returncode == 0, f"{summary}\n{run.stderr[-2000:]}"
    assert " 0 failures" in summary or "passed" in summary, summary
