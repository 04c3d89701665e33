"""The reduced stress run (benchmarks/stress.py) in CI: 12 clients upload a 2 MB photo at once
to a real server with room for 6 (2 workers + 4 queued). The script checks its own rules
(every answer 2xx, 429 or 503 in time; every 2xx read back whole; peak RSS bounded; /healthz
always answering) and exits non-zero when one is broken."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.server


def test_reduced_stress_run_keeps_every_rule() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.stress", "--clients", "12", "--size-mb", "2"]
        + ["--workers", "2", "--queue-size", "4", "--timeout", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert report.count("[PASS]") == 4 and "[FAIL]" not in report, report
    # Both paths were taken: some uploads stored, the rest refused before being read.
    answers = dict(re.findall(r"(\d{3}): (\d+)", report.split("answers:", 1)[1].splitlines()[0]))
    assert int(answers.get("201", 0)) >= 1 and int(answers.get("503", 0)) >= 1, report
