"""The short benchmark CI does: every phase of `make bench` (tests/bench) in miniature, on a
private control plane with an instant-runner node, writing its report and plots to a
temporary directory. It checks that the benchmark works and that every run completed, not
the numbers (a shared CI machine cannot promise those)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.bench.harness import Bench, BenchConfig
from tests.bench.kube import private_cluster
from tests.bench.report import write_bench

SMOKE = BenchConfig(
    runs=40,
    rounds=1,
    rate=10.0,
    rate_seconds=3.0,
    saturated_runs=40,
    saturated_limit=5,
    deep_runs=300,
    nodes=1,
    profile=False,
    apiserver_profile_seconds=1.0,
    background_seconds=2.0,
    phase_timeout=240.0,
)


@pytest.mark.timeout(600)
def test_bench_smoke(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    state = tmp_path_factory.mktemp("bench-smoke-cluster")
    with private_cluster(state, SMOKE.nodes):
        result = asyncio.run(Bench(state, tmp_path / "work", SMOKE, "smoke").run())
    doc, img = tmp_path / "benchmarks.md", tmp_path / "img"
    write_bench(result, doc, img)
    success = {
        "raw": {"Succeeded": SMOKE.runs},
        "jobs": {"Complete": SMOKE.runs},
        "podtask": {"Completed": SMOKE.runs},
    }
    assert [t.flavour for t in result.throughput] == ["raw", "jobs", "podtask", "podtask"]
    for phase in result.throughput:
        assert phase.outcomes == success[phase.flavour], phase.label
        assert phase.runs_per_second > 0
        # Every run makes at least its create, the pod's create and binding.
        assert phase.writes_per_run >= 3, phase.writes
    podtask, eventful = result.throughput[2:]
    assert podtask.writes.get("events POST", 0) < eventful.writes.get("events POST", 0)
    assert sorted((lat.flavour, lat.rate, len(lat.samples_ms)) for lat in result.latency) == [
        ("jobs", 5.0, 15),
        ("jobs", 10.0, 30),
        ("podtask", 5.0, 15),
        ("podtask", 10.0, 30),
    ]
    assert result.saturated is not None
    assert result.saturated.outcomes == {"Completed": SMOKE.saturated_runs}
    assert len(result.saturated.samples_ms) == SMOKE.saturated_runs - SMOKE.saturated_limit
    assert result.deep is not None and result.deep.restart_to_first_pod_seconds > 0
    text = doc.read_text()
    assert "<!-- bench:begin -->" in text and "| target | measured |" in text
    assert {p.name for p in img.glob("*.png")} == {
        "bench-throughput.png",
        "bench-completions.png",
        "bench-latency.png",
        "bench-slot.png",
    }
