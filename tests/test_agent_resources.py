"""What opening the agent's process-wide resources does to the process."""

import json
import os
import subprocess
import sys

import pytest

# Run in a fresh interpreter: the BLAS thread count is process-wide, and another test
# may already have opened the resources in this one.
_OPEN_AND_REPORT = """
import json
from threadpoolctl import threadpool_info
from backtalk.agent.bot import AgentResources
from backtalk.config import Settings

def blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

before = blas_threads()
resources = AgentResources.open(Settings())
after = blas_threads()
resources.store.engine.dispose()
print(json.dumps({"before": before, "after": after}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="BLAS is single-threaded on one core")
def test_the_agent_runs_blas_on_one_thread(db_env):
    # Smart-turn's feature extraction is one BLAS matrix product per analysis; with more
    # threads, OpenBLAS keeps the other cores busy-waiting for ~0.1 s after each one
    # (3x the CPU of the analysis, benchmarks/VOICE.md section 4).
    run = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_REPORT],
        capture_output=True,
        text=True,
        timeout=120,
        # numpy's own default (one thread per core), whatever this shell asks for
        env={
            **{k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")},
            "DATABASE_URL": db_env,
        },
    )
    assert run.returncode == 0, run.stderr[-2000:]
    threads = json.loads(run.stdout.strip().splitlines()[-1])
    assert threads["before"] and max(threads["before"]) > 1, threads  # numpy's default
    assert threads["after"] == [1] * len(threads["after"]), threads
