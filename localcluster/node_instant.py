"""``--instant-runner``: a podtask runner that exits at once, played by the node itself.

For benchmarks and chaos tests the runner's own start-up (a Python interpreter, imports)
would hide the operator's cost, and the plain ``--instant`` mode is not honest for
podtask: a pod that succeeds without ever calling the run API ends ``SystemFailure
NO_OUTCOME_REPORTED``. In this mode a pod whose container runs ``podtask-runner`` is
marked Running, then the node makes the calls the runner makes, with the pod's own
environment (``PODTASK_API_URL``, ``PODTASK_RUN_TOKEN``, ...): ``GET …/context``, then
``POST …/complete`` (or ``…/fail``), retrying transient errors for as long as the runner
does and heartbeating meanwhile, and the container ends with the runner's exit code and
the termination message the runner writes (its outcome, a ``TerminationReport``). Other
pods behave as in ``--instant``. The operator's path (admission, pod, run API, status
writes) is the same as with the real runner; only the process is missing.

Test-only knobs, read from a dict payload's ``instantRunner`` key::

    {"instantRunner": {"sleepSeconds": 1.5, "failAttempts": 1}}

``sleepSeconds`` holds the attempt (heartbeating) before it reports; ``failAttempts``
reports a failure for attempts up to that number. Each attempt is logged as one
``INSTANT-RUNNER {json}`` line, the ledger chaos tests count executions from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp

from podtask.protocol import Completion, Failure, TerminationReport

Obj = dict[str, Any]

RUNNER_COMMAND = "podtask-runner"
CONNECT_DEADLINE_SECONDS = 30.0  # podtask.runner's deadlines
REPORT_DEADLINE_SECONDS = 60.0
TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
LEDGER_PREFIX = "INSTANT-RUNNER "
EXIT_REPORTED, EXIT_NOT_REPORTED, EXIT_CANCELED = 0, 1, 143
ENV_NAMES = (
    "PODTASK_API_URL",
    "PODTASK_RUN_TOKEN",
    "PODTASK_RUN_NAMESPACE",
    "PODTASK_RUN_NAME",
    "PODTASK_ATTEMPT",
)


class _RefusedError(Exception):
    def __init__(self, status: int | None, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status is None or self.status in TRANSIENT


def is_runner_pod(pod: Obj) -> bool:
    containers = pod["spec"].get("containers") or []
    return len(containers) == 1 and (containers[0].get("command") or [])[:1] == [RUNNER_COMMAND]


def ledger(**fields: Any) -> None:
    print(
        LEDGER_PREFIX + json.dumps({**fields, "time": round(time.time(), 3)}, sort_keys=True),
        flush=True,
    )


class InstantRunner:
    """One HTTP client for every runner pod on the node."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REPORT_DEADLINE_SECONDS),
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(
        self, method: str, url: str, token: str, body: Obj | None, deadline: float
    ) -> Obj:
        give_up = time.monotonic() + deadline
        delay = 0.25
        while True:
            try:
                async with self.session().request(
                    method, url, json=body, headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    text = await response.text()
                    if response.status >= 300:
                        raise _RefusedError(response.status, text)
                    answer: Obj = json.loads(text) if text else {}
                    return answer
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                refused = _RefusedError(None, repr(error))
            except _RefusedError as error:
                refused = error
            left = give_up - time.monotonic()
            if not refused.transient or left <= 0:
                raise refused
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)

    async def run(self, pod: Obj, env: dict[str, str]) -> tuple[int, str | None]:
        """The runner's exit code and termination message; cancelled (SIGTERM) the caller
        reports 143."""
        meta = pod["metadata"]
        missing = [name for name in ENV_NAMES if not env.get(name)]
        if missing:
            print(f"pod {meta['namespace']}/{meta['name']}: runner env lacks {missing}", flush=True)
            return EXIT_NOT_REPORTED, None
        base = (
            f"{env['PODTASK_API_URL'].rstrip('/')}/v1/runs/"
            f"{env['PODTASK_RUN_NAMESPACE']}/{env['PODTASK_RUN_NAME']}"
        )
        token, attempt = env["PODTASK_RUN_TOKEN"], int(env["PODTASK_ATTEMPT"])
        record = {
            "namespace": meta["namespace"],
            "run": env["PODTASK_RUN_NAME"],
            "pod": meta["name"],
            "uid": meta["uid"],
            "attempt": attempt,
        }
        try:
            context = await self._call(
                "GET", f"{base}/context?attempt={attempt}", token, None, CONNECT_DEADLINE_SECONDS
            )
        except _RefusedError as error:
            ledger(**record, event="no-context", status=error.status)
            return EXIT_NOT_REPORTED, None
        ledger(**record, event="started")
        payload = context.get("payload")
        knobs = payload.get("instantRunner") if isinstance(payload, dict) else None
        knobs = knobs if isinstance(knobs, dict) else {}
        interval = float(context.get("heartbeatIntervalSeconds") or 30.0)
        await self._hold(base, token, attempt, float(knobs.get("sleepSeconds") or 0), interval)
        if attempt <= int(knobs.get("failAttempts") or 0):
            action = "fail"
            body: Obj = {
                "attempt": attempt,
                "error": {
                    "type": "InstantFailure",
                    "message": f"attempt {attempt} fails on purpose",
                },
            }
        else:
            action, body = "complete", {"attempt": attempt, "output": {"ok": True}}
        report = (
            TerminationReport.fitting(Completion.model_validate(body))
            if action == "complete"
            else TerminationReport.fitting(Failure.model_validate(body))
        )
        message = report.encode(token)
        beating = asyncio.ensure_future(self._hold(base, token, attempt, float("inf"), interval))
        try:
            await self._call("POST", f"{base}/{action}", token, body, REPORT_DEADLINE_SECONDS)
        except _RefusedError as error:
            if error.status == 409:  # stale, or already ended: the operator has its answer
                ledger(**record, event="stale", status=409)
                return EXIT_REPORTED, message
            ledger(**record, event="unreported", status=error.status)
            return EXIT_NOT_REPORTED, message
        finally:
            beating.cancel()
        ledger(**record, event="completed" if action == "complete" else "failed")
        return EXIT_REPORTED, message

    async def _hold(
        self, base: str, token: str, attempt: int, seconds: float, interval: float
    ) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, interval))
            if end - time.monotonic() > 0:
                # The runner only logs a failed heartbeat.
                with contextlib.suppress(_RefusedError):
                    await self._call(
                        "POST", f"{base}/heartbeat", token, {"attempt": attempt}, min(interval, 5.0)
                    )
