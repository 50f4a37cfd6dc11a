"""bench/compression.py's budget command runs end to end and writes what docs/benchmarks.md quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "compression.py"


@pytest.mark.model
def test_the_budget_command_prints_its_table_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "budget.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "budget", "--mode", "exact", "--limit", "4", "--repeats", "1",
                          "--prompt-tokens", "1500", "--results", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "budget 0.33" in run.stdout and "of each of 4 passages: met" in run.stdout
    result = json.loads(out.read_text())
    assert set(result["ms_per_1k"]) == {"rate 0.5", "budget 0.5", "budget 0.33", "budget 0.2"}
    assert result["compressions"]["rate 0.5"] == 1 and 5 <= result["compressions"]["budget 0.5"] <= 8
    for share, fit in result["fit"].items():
        assert fit["passages"] == 4 and fit["met"] == 4 and 0.9 < fit["mean_fill"] <= 1.0, share
