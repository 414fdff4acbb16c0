"""The short chaos run CI does: `make chaos` (tests/chaos) in miniature.

A private control plane (the chaos crashes its API server and etcd, so never the shared
one), 120 runs across four queues, the operator SIGKILLed every 8 s, kube-apiserver and
etcd crashed and restarted once, run pods deleted at random. Nothing may be lost, stuck,
left not Completed or completed twice, and no queue or key may run over its limit.
"""

from __future__ import annotations

import pytest

from tests.bench.kube import private_cluster
from tests.chaos.harness import ChaosConfig, markdown, run_chaos

SMOKE = ChaosConfig(
    runs=120,
    submit_rate=10.0,
    kill_every=8.0,
    apiserver_restart_at=4.0,
    etcd_restart_at=10.0,
    pod_delete_every=1.0,
    settle=180.0,
    nodes=1,
)


@pytest.mark.timeout(600)
def test_chaos_smoke(tmp_path_factory: pytest.TempPathFactory) -> None:
    state = tmp_path_factory.mktemp("chaos-smoke-cluster")
    work = tmp_path_factory.mktemp("chaos-smoke")
    with private_cluster(state, SMOKE.nodes):
        report = run_chaos(state, work, SMOKE)
    text = markdown(report, "pytest tests/cluster/test_chaos_smoke.py")
    (work / "report.md").write_text(text)
    print(text)
    assert report.submitted == SMOKE.runs
    assert report.operator_kills >= 1 and report.apiserver_restarts and report.etcd_restarts
    assert report.samples > 0 and report.watch_evaluations > 0
    assert not report.lost, report.lost
    assert not report.stuck, report.stuck_detail
    assert not report.unexpected, report.unexpected
    assert not report.completed_twice, report.completed_twice
    assert report.overshoot == 0, report.overshoot_detail
