"""Benchmarks are not tests (no timing assertions here); this only keeps them from rotting.

Every benchmark must import and parse its options, and offer ``--quick``. Full runs:
see benchmarks/README.md.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BENCHMARKS = sorted(
    p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports_and_parses_its_options(name):
    if name == "profile_retrieval":
        pytest.skip("a profiling script, not a benchmark command")
    if name == "plain_pipecat_bot":
        pytest.skip("the baseline bot turn_taking and serve_load run, not a benchmark command")
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--quick" in result.stdout
