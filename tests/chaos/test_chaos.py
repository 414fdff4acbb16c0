"""`make chaos`: 1,000 runs across queues while the operator is SIGKILLed every 10 s, the
API server and etcd crash and restart, and run pods are deleted at random.

Writes its report into docs/benchmarks.md (between the chaos markers). Every count it
checks (runs lost, stuck, not Completed, completed twice, concurrency overshoot) must be 0.
"""

from __future__ import annotations

import shutil

import pytest

from tests.bench.kube import private_cluster
from tests.bench.report import DOC, replace_section
from tests.chaos.harness import ChaosConfig, markdown, run_chaos

COMMAND = "make chaos"  # = .venv/bin/pytest tests/chaos -q -m chaos


@pytest.mark.chaos
@pytest.mark.timeout(3600)
def test_chaos(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = ChaosConfig()
    state = tmp_path_factory.mktemp("chaos-cluster")
    work = tmp_path_factory.mktemp("chaos-work")
    with private_cluster(state, config.nodes):
        try:
            report = run_chaos(state, work, config)
        finally:
            shutil.copytree(state / "logs", work / "cluster-logs", dirs_exist_ok=True)
    replace_section(DOC, "chaos", markdown(report, COMMAND), "Benchmarks")
    print(f"chaos logs kept in {work}")
    assert report.submitted == config.runs
    assert report.samples > 0 and report.watch_evaluations > 0
    assert report.operator_kills >= 3 and report.apiserver_restarts and report.etcd_restarts
    assert not report.lost, report.lost
    assert not report.stuck, report.stuck_detail
    assert not report.unexpected, report.unexpected
    assert not report.completed_twice, report.completed_twice
    assert report.overshoot == 0, report.overshoot_detail
