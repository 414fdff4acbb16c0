"""An operator outage longer than the runner's report deadline, while a run finishes.

The runner reports its outcome with retries for 60 s (``podtask.runner``
REPORT_DEADLINE_SECONDS; the instant runner does the same), then exits 1 without having
reported. Before that it wrote the outcome to its termination message, which the kubelet
(here the node agent) copies into the pod's status: the restarted operator must find it
there and complete the run, not end it ``Crashed`` (TASK_PROCESS_EXITED) as it did before
the termination message carried outcomes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.bench.harness import Bench, BenchConfig, paths, queue_body, run_body, task_body
from tests.bench.kube import Obj, install_crds, make_namespace, private_cluster

OUTAGE_SECONDS = 75.0  # over the runner's 60 s report deadline


async def _run(state: Path, work: Path) -> Obj:
    bench = Bench(state, work, BenchConfig(), "outage")
    try:
        await install_crds(bench.kube)
        ns = await make_namespace(bench.kube, "outage")
        p = paths(ns)
        await bench.kube.create(p["queues"], queue_body("q", 5))
        await bench.kube.create(p["tasks"], task_body("noop", "q"))
        operator = bench.operator(ns)
        await asyncio.to_thread(operator.start)
        try:
            payload = {"instantRunner": {"sleepSeconds": 5}}
            await bench.kube.create(p["taskruns"], run_body("slow", "noop", payload))
            run = await _until(bench, f"{p['taskruns']}/slow", {"Executing"}, 60)
            await asyncio.to_thread(operator.kill)
            # The task finishes ~5 s later and tries to report to nobody.
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(operator.start)
            final = {"Completed", "Failed", "Crashed", "SystemFailure", "Canceled"}
            run = await _until(bench, f"{p['taskruns']}/slow", final, 60)
        finally:
            await asyncio.to_thread(operator.stop)
        return run
    finally:
        await bench.kube.close()


async def _until(bench: Bench, path: str, phases: set[str], seconds: float) -> Obj:
    deadline = time.monotonic() + seconds
    while True:
        run = await bench.kube.get(path)
        if (run.get("status") or {}).get("phase") in phases or time.monotonic() > deadline:
            return run
        await asyncio.sleep(0.2)


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_a_run_that_finishes_during_a_long_operator_outage_completes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    state = tmp_path_factory.mktemp("outage-cluster")
    work = tmp_path_factory.mktemp("outage")
    with private_cluster(state, 1):
        run = asyncio.run(_run(state, work))
    status = run.get("status") or {}
    # Completed (the outcome was kept or recovered), or retried as an infrastructure failure
    # and then Completed: either way not a crash of a task that did not crash.
    assert status.get("phase") == "Completed", status
    assert status.get("output") == {"ok": True}, status
