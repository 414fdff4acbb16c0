"""`make bench`: podtask against the Job controller and a raw pod loop, on one API server.

Writes its results into docs/benchmarks.md (between the bench markers) and the plots
into docs/img/. Sizes can be overridden with PODTASK_BENCH_* variables (harness.py).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.bench.harness import Bench, BenchConfig
from tests.bench.kube import private_cluster
from tests.bench.report import write_bench

COMMAND = "make bench"  # = .venv/bin/pytest tests/bench -q -m bench
SUCCESS = {"raw": {"Succeeded"}, "jobs": {"Complete"}, "podtask": {"Completed"}}


@pytest.mark.bench
@pytest.mark.timeout(3 * 3600)
def test_bench(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = BenchConfig.from_env()
    state = tmp_path_factory.mktemp("bench-cluster")
    work = tmp_path_factory.mktemp("bench-work")
    with private_cluster(state, config.nodes):
        result = asyncio.run(Bench(state, work, config, COMMAND).run())
    write_bench(result)
    for phase in result.throughput:
        assert set(phase.outcomes) <= SUCCESS[phase.flavour], (phase.label, phase.outcomes)
        assert sum(phase.outcomes.values()) == phase.runs
    for latency in result.latency:
        assert len(latency.samples_ms) == latency.runs
    assert result.saturated is not None
    assert result.saturated.outcomes == {"Completed": result.saturated.runs}
