"""``podtask-runner``: the entrypoint of every run pod.

The runner reads its run from the environment, asks the run API for the
payload, imports the task, runs hooks and the function, and reports the outcome.
Exit codes (``podtask.protocol``):

* ``EXIT_REPORTED`` (0): the outcome, success or failure, was reported;
* ``EXIT_NOT_REPORTED`` (1): it could not be (API unreachable, bad environment):
  the operator treats the attempt as crashed, unless the outcome is in the pod's
  termination message (written before every report, so that an operator outage longer
  than the report deadline loses nothing);
* ``EXIT_CANCELED`` (143): SIGTERM (or SIGINT) while the run executed: the function
  was stopped, ``on_cancel`` hooks ran (for up to 30 s), nothing was reported.

Logs are JSON lines on stderr; the task's own output on stdout is untouched.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from podtask import _logging, _waits, metadata, protocol
from podtask._cancel import Canceller
from podtask._execution import AttemptExecutor, Failed, Outcome, Succeeded
from podtask._run_error import run_error
from podtask._waits import Suspend, Suspended, WaitSession
from podtask.context import TaskContext, TaskInfo
from podtask.errors import OutputTooLargeError, RunCanceled, TaskNotFoundError
from podtask.hooks import HookSet, global_hooks
from podtask.metadata import RunMetadata
from podtask.protocol import (
    Checkpoint,
    Completion,
    Failure,
    Heartbeat,
    MetadataUpdate,
    RetryDecision,
    TerminationReport,
)
from podtask.runapi import HttpRunApi, RunApi, RunApiError
from podtask.tasks import Task, find_by_function

logger = logging.getLogger("podtask.runner")

T = TypeVar("T")

CONNECT_DEADLINE_SECONDS = 30.0
REPORT_DEADLINE_SECONDS = 60.0
UNSAVED_REPORT_PATIENCE = 10
"""When the outcome did not fit the termination message, only the run API can carry it:
the pod keeps trying (and holding its slot) this many times longer rather than lose it."""
FINAL_FLUSH_DEADLINE_SECONDS = 5.0
CANCEL_HOOKS_TIMEOUT_SECONDS = 30.0
MIN_HEARTBEAT_INTERVAL_SECONDS = 0.05


class ConfigError(ValueError):
    """The pod's environment does not describe a run."""


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    api_url: str
    token: str
    namespace: str
    run_name: str
    attempt: int
    entrypoint: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RunnerConfig:
        names = (
            protocol.ENV_API_URL,
            protocol.ENV_TOKEN,
            protocol.ENV_NAMESPACE,
            protocol.ENV_RUN_NAME,
            protocol.ENV_ATTEMPT,
            protocol.ENV_ENTRYPOINT,
        )
        missing = [var for var in names if not env.get(var)]
        if missing:
            raise ConfigError(f"the run pod's environment lacks {', '.join(missing)}")
        attempt = env[protocol.ENV_ATTEMPT]
        if not attempt.isdigit() or int(attempt) < 1:
            raise ConfigError(f"{protocol.ENV_ATTEMPT}={attempt!r} is not a positive integer")
        entrypoint = env[protocol.ENV_ENTRYPOINT]
        if entrypoint.count(":") != 1:
            raise ConfigError(f"{protocol.ENV_ENTRYPOINT}={entrypoint!r} is not module:function")
        return cls(
            api_url=env[protocol.ENV_API_URL],
            token=env[protocol.ENV_TOKEN],
            namespace=env[protocol.ENV_NAMESPACE],
            run_name=env[protocol.ENV_RUN_NAME],
            attempt=int(attempt),
            entrypoint=entrypoint,
        )


class HeartbeatSender:
    """Tells the operator the attempt is alive, from a background thread."""

    def __init__(self, send: Callable[[], None], interval: float) -> None:
        self._send = send
        # A zero interval from a misconfigured operator must not become a busy loop.
        self._interval = max(interval, MIN_HEARTBEAT_INTERVAL_SECONDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="podtask-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._send()
            except RunApiError as error:
                logger.warning("heartbeat failed: %s", error)


class Runner:
    """Runs one attempt against a run API and returns the process exit code."""

    def __init__(
        self,
        api: RunApi,
        config: RunnerConfig,
        *,
        hooks: HookSet | None = None,
        handle_signals: bool = True,
        connect_deadline: float = CONNECT_DEADLINE_SECONDS,
        report_deadline: float = REPORT_DEADLINE_SECONDS,
        cancel_hooks_timeout: float = CANCEL_HOOKS_TIMEOUT_SECONDS,
        metadata_interval: float = metadata.FLUSH_INTERVAL_SECONDS,
        termination_message: Path | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.canceller = Canceller()
        self._hooks = hooks if hooks is not None else global_hooks()
        self._handle_signals = handle_signals
        self._connect_deadline = connect_deadline
        self._report_deadline = report_deadline
        self._cancel_hooks_timeout = cancel_hooks_timeout
        self._metadata_interval = metadata_interval
        self._termination_message = termination_message

    def run(self) -> int:
        with self._signal_handlers():
            self.canceller.raise_anywhere = True
            try:
                return self._run()
            except RunCanceled:
                logger.info("canceled before the task started")
                return protocol.EXIT_CANCELED
            except Exception:
                logger.exception("the runner failed before it could report")
                return protocol.EXIT_NOT_REPORTED
            finally:
                self.canceller.raise_anywhere = False

    def _run(self) -> int:
        try:
            context = self._retrying(
                lambda: self.api.context(self.config.attempt),
                self._connect_deadline,
                "fetch the run",
            )
        except RunApiError as error:
            logger.error("cannot fetch the run's context: %s", error)
            return protocol.EXIT_NOT_REPORTED
        attempt = self.config.attempt
        try:
            task = self._load_task(context.run.task)
        except Exception as error:
            logger.error("cannot load %s: %s", self.config.entrypoint, error)
            skip = isinstance(error, TaskNotFoundError)
            self.canceller.raise_anywhere = False
            return self._report(Failed(error, RetryDecision(skip=skip), final=True))

        store = RunMetadata(context.metadata, sink=self._metadata_sink(attempt))
        ctx = TaskContext(
            run=context.run,
            task=TaskInfo(
                id=task.id, entrypoint=context.task.entrypoint, version=context.task.version
            ),
            metadata=store,
            resumed=context.resumed,
        )
        session = WaitSession(
            self.api,
            namespace=context.run.namespace,
            run=context.run.name,
            attempt=attempt,
            journal=context.journal,
            threshold=context.wait_checkpoint_seconds,
        )
        executor = AttemptExecutor(task, self._hooks, ctx, context.payload, self.canceller)
        heartbeat = HeartbeatSender(
            lambda: self.api.heartbeat(Heartbeat(attempt=attempt)),
            context.heartbeat_interval_seconds,
        )
        heartbeat.start()
        store.start_auto_flush(self._metadata_interval)
        if context.resumed:
            logger.info("attempt resumed after a checkpoint", extra={"task": task.id})
        else:
            logger.info("attempt started", extra={"task": task.id})
        try:
            with metadata.using(store), _waits.installed(session):
                self.canceller.raise_anywhere = False
                try:
                    outcome = self._execute(executor, session)
                except RunCanceled:
                    return self._canceled(executor, store)
                # From here on a cancel is only recorded: the outcome is being reported.
                # Heartbeats go on until it is: an operator that cannot write the outcome
                # yet (API server down) must not take the silence for a dead pod.
                self._final_flush(store)
                return self._report(outcome)
        finally:
            store.close()
            heartbeat.stop()

    def _execute(
        self, executor: AttemptExecutor, session: WaitSession | None = None
    ) -> Outcome | Suspended:
        try:
            outcome = executor.run()
        except RunCanceled:
            raise
        except Suspend:
            pass  # a wait checkpoints: reported below
        except BaseException as error:
            # Not the task's error (those become outcomes): a fault in podtask itself.
            logger.exception("the attempt broke down outside the task's code")
            outcome = Failed(error, RetryDecision(), final=executor.ctx.is_last_attempt)
        self.canceller.raise_if_requested()
        if session is not None and session.broken is not None:
            # Two waits at once, or a diverged replay: whatever the function made of
            # the error, the journal cannot be trusted and the run fails at once.
            if not (isinstance(outcome, Failed) and outcome.error is session.broken):
                outcome = Failed(session.broken, RetryDecision(skip=True), final=True)
        elif session is not None and session.suspended is not None:
            # Whatever the function did after a checkpoint began (it may have caught
            # the Suspend), the attempt stops at that wait and resumes there.
            return Suspended(session.checkpoint())
        return outcome

    def _canceled(self, executor: AttemptExecutor, store: RunMetadata) -> int:
        logger.info("canceled; running on_cancel hooks")
        if executor.started:
            executor.run_cancel_hooks(self._cancel_hooks_timeout)
        self._final_flush(store)
        return protocol.EXIT_CANCELED

    # ------------------------------------------------------------------ loading

    def _load_task(self, task_id: str) -> Task[..., Any]:
        module_name, _, attribute = self.config.entrypoint.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise TaskNotFoundError(
                f"cannot import {module_name!r} for entrypoint {self.config.entrypoint}: {error}"
            ) from error
        target = getattr(module, attribute, None)
        if isinstance(target, Task):
            return target
        if callable(target):
            return find_by_function(target) or Task(target, id=task_id, register=False)
        raise TaskNotFoundError(
            f"module {module_name!r} has no task or function {attribute!r} "
            f"(entrypoint {self.config.entrypoint})"
        )

    # ------------------------------------------------------------------ reporting

    def _report(self, outcome: Outcome | Suspended) -> int:
        attempt = self.config.attempt
        send: Callable[[], None]
        deadline = self._report_deadline
        if isinstance(outcome, Suspended):
            checkpoint: Checkpoint = outcome.checkpoint
            logger.info("attempt checkpointed", extra={"waiting_for": checkpoint.waiting_for.kind})
            send = functools.partial(self.api.checkpoint, checkpoint)
        elif isinstance(outcome, Succeeded):
            logger.info("attempt succeeded")
            completion = Completion(attempt=attempt, output=outcome.output)
            if not self._save_outcome(completion):
                deadline *= UNSAVED_REPORT_PATIENCE
            send = functools.partial(self.api.complete, completion)
        else:
            reported = run_error(outcome.error)
            logger.info(
                "attempt failed",
                extra={
                    "error_type": reported.type,
                    "error": reported.message[:500],
                    "skip_retry": outcome.retry.skip,
                    "final": outcome.final,
                },
            )
            failure = Failure(attempt=attempt, error=reported, retry=outcome.retry)
            self._save_outcome(failure)
            send = functools.partial(self.api.fail, failure)
        try:
            self._retrying(send, deadline, "report the outcome")
        except RunApiError as error:
            if error.status == 409:
                # Stale attempt, or the run already ended (maybe our own earlier try
                # got through): the operator has its answer either way.
                logger.warning("the run API refused the outcome as stale: %s", error)
                return protocol.EXIT_REPORTED
            if error.status == 413 and isinstance(outcome, Succeeded):
                too_large = OutputTooLargeError(f"the run API refused the output: {error}")
                return self._report(Failed(too_large, RetryDecision(), final=True))
            logger.error("cannot report the outcome: %s", error)
            return protocol.EXIT_NOT_REPORTED
        return protocol.EXIT_REPORTED

    def _save_outcome(self, report: Completion | Failure) -> bool:
        """Keep the outcome in the termination message; whether it was kept whole."""
        if self._termination_message is None:
            return False
        saved = TerminationReport.fitting(report)
        try:
            self._termination_message.write_text(saved.encode(self.config.token))
        except OSError as error:
            logger.warning("cannot write the termination message: %s", error)
            return False
        return not saved.output_omitted

    def _metadata_sink(self, attempt: int) -> Callable[[dict[str, Any]], None]:
        def send(document: dict[str, Any]) -> None:
            self.api.metadata(MetadataUpdate(attempt=attempt, metadata=document))

        return send

    def _final_flush(self, store: RunMetadata) -> None:
        store.close()
        try:
            self._retrying(store.flush, FINAL_FLUSH_DEADLINE_SECONDS, "send metadata")
        except RunApiError as error:
            logger.warning("could not send the last metadata: %s", error)

    def _retrying(self, call: Callable[[], T], deadline: float, what: str) -> T:
        """``call()``, tried again on transient errors with backoff until ``deadline`` s."""
        give_up = time.monotonic() + deadline
        delay = 0.25
        while True:
            try:
                return call()
            except RunApiError as error:
                left = give_up - time.monotonic()
                if not error.transient or left <= 0:
                    raise
                logger.warning("could not %s, retrying: %s", what, error)
                time.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------ signals

    @contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if not self._handle_signals:
            yield
            return

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self.canceller.requested.is_set():
                return  # a second signal changes nothing: on_cancel is already running
            logger.info("received %s", signal.Signals(signum).name)
            self.canceller.request()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_from_env(
    env: Mapping[str, str], *, connect_deadline: float = CONNECT_DEADLINE_SECONDS
) -> int:
    """Run the attempt the environment describes; the exit code."""
    attempt = env.get(protocol.ENV_ATTEMPT, "")
    _logging.configure(
        {
            "run": env.get(protocol.ENV_RUN_NAME),
            "namespace": env.get(protocol.ENV_NAMESPACE),
            "attempt": int(attempt) if attempt.isdigit() else attempt or None,
        }
    )
    try:
        config = RunnerConfig.from_env(env)
    except ConfigError as error:
        logger.error("%s", error)
        return protocol.EXIT_NOT_REPORTED
    _import_from_working_directory()
    api = HttpRunApi(config.api_url, config.token, config.namespace, config.run_name)
    try:
        return Runner(
            api,
            config,
            connect_deadline=connect_deadline,
            termination_message=termination_message_path(env),
        ).run()
    finally:
        api.close()


def termination_message_path(env: Mapping[str, str]) -> Path | None:
    """The container's termination message file, if this process runs in a pod."""
    named = env.get(protocol.ENV_TERMINATION_MESSAGE_PATH)
    if named:
        return Path(named)
    # The kubelet creates the file; elsewhere (a developer's machine) /dev is not ours.
    default = Path(protocol.DEFAULT_TERMINATION_MESSAGE_PATH)
    return default if default.is_file() else None


def _import_from_working_directory() -> None:
    # As `python -m` does: the project's modules resolve from where the pod starts.
    # PYTHONPATH is honoured by the interpreter itself.
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def dev_relay(env: Mapping[str, str]) -> int:
    """Stand in for an attempt that ``podtask dev`` runs on the developer's machine.

    The pod keeps the attempt's place (its queue slot, its maxDuration deadline, the
    target of a cancel) while the dev session runs the runner locally with this pod's
    run token; the session deletes the pod when its local attempt ends, and a cancel
    or deadline that stops the pod stops the local attempt too.  Nothing here imports
    task code.
    """
    stop = {signal.SIGTERM, signal.SIGINT}
    # Blocked before saying anything, so a stop that follows the log line is never lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    _logging.configure(
        {"run": env.get(protocol.ENV_RUN_NAME), "attempt": env.get(protocol.ENV_ATTEMPT)}
    )
    logger.info(
        "attempt runs on a developer's machine in podtask dev session %s; waiting",
        env.get(protocol.ENV_DEV_SESSION),
    )
    received = signal.sigwait(stop)
    logger.info("relay stopped by %s", signal.Signals(received).name)
    return protocol.EXIT_CANCELED


def main() -> int:
    # Lines, not blocks: `kubectl logs -f` should show a print when it happens.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    if os.environ.get(protocol.ENV_DEV_SESSION):
        return dev_relay(os.environ)
    code = run_from_env(os.environ)
    if code == protocol.EXIT_CANCELED:
        sys.stdout.flush()
        sys.stderr.flush()
        # Interpreter shutdown would wait for threads the canceled code left behind.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
