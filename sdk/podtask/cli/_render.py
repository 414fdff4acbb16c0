"""How the CLI shows things: rich tables and panels for people, JSON/YAML for scripts."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from podtask._runview import attempt_pod, error_text
from podtask.api.v1alpha1 import Phase, Resource, Schedule, TaskRun

PHASE_STYLES = {
    Phase.DELAYED: "magenta",
    Phase.QUEUED: "cyan",
    Phase.DEQUEUED: "cyan",
    Phase.EXECUTING: "blue",
    Phase.WAITING: "yellow",
    Phase.COMPLETED: "green",
    Phase.FAILED: "red",
    Phase.CANCELED: "dim",
    Phase.CRASHED: "red",
    Phase.SYSTEM_FAILURE: "red",
    Phase.EXPIRED: "dim",
    Phase.TIMED_OUT: "red",
}


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def console() -> Console:
    # Built per command: the CLI's stdout may be swapped (tests, redirection), and a
    # pipe should get plain, wide lines rather than 80 wrapped columns.
    out = sys.stdout
    terminal = out.isatty()
    return Console(
        file=out,
        width=None if terminal else 200,
        no_color=not terminal,
        highlight=False,
        soft_wrap=not terminal,
    )


def err_console() -> Console:
    return Console(
        file=sys.stderr,
        width=None if sys.stderr.isatty() else 200,
        highlight=False,
        no_color=not sys.stderr.isatty(),
    )


def dump(data: Any, output: Output) -> None:
    """JSON or YAML of ``data`` on stdout (plain, so it pipes into jq or kubectl)."""
    if output == Output.YAML:
        if isinstance(data, list):
            sys.stdout.write(yaml.safe_dump_all(data, sort_keys=False))
        else:
            sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def run_json(run: TaskRun) -> dict[str, Any]:
    return run.to_wire()


def phase_text(phase: Phase | None) -> Text:
    if phase is None:
        return Text("Pending", style="dim")
    return Text(phase.value, style=PHASE_STYLES.get(phase, ""))


def age(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return ""
    seconds = max(0, int(((now or datetime.now(UTC)) - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def created(resource: Resource) -> datetime | None:
    extra = resource.metadata.model_extra or {}
    value = extra.get("creationTimestamp")
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def runs_table(runs: list[TaskRun], *, namespaces: bool = False) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    if namespaces:
        table.add_column("NAMESPACE")
    for column in ("NAME", "TASK", "STATUS", "ATTEMPT", "TAGS", "AGE", "DURATION"):
        table.add_column(column, no_wrap=column in ("NAME", "TASK"))
    for run in runs:
        status = run.status
        cells: list[Any] = [run.metadata.namespace or ""] if namespaces else []
        cells += [
            run.metadata.name or "",
            run.spec.task,
            phase_text(status.phase if status else None),
            str(status.attempt or "") if status else "",
            ",".join(run.spec.tags),
            age(created(run)),
            (status.duration or "") if status else "",
        ]
        table.add_row(*cells)
    return table


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def progress_of(metadata: dict[str, Any] | None) -> float | None:
    value = (metadata or {}).get("progress")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return None


def run_panel(run: TaskRun, output: Any = None, *, show_output: bool = True) -> Panel:
    status = run.status
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Run", f"{run.metadata.namespace}/{run.metadata.name}")
    grid.add_row("Task", run.spec.task)
    grid.add_row("Status", phase_text(status.phase if status else None))
    if status and status.attempt:
        grid.add_row("Attempt", str(status.attempt))
    if run.spec.tags:
        grid.add_row("Tags", ", ".join(run.spec.tags))
    if run.spec.idempotency_key:
        grid.add_row("Idempotency key", escape(run.spec.idempotency_key))
    if run.spec.parent_run:
        grid.add_row("Parent run", run.spec.parent_run)
    if run.spec.replay_of:
        grid.add_row("Replay of", run.spec.replay_of)
    if status and status.queue:
        grid.add_row("Queue", status.queue)
    if status and status.duration:
        grid.add_row("Duration", status.duration)
    progress = progress_of(status.metadata if status else None)
    parts: list[Any] = [grid]
    if progress is not None:
        bar = Table.grid(padding=(0, 2))
        bar.add_column(style="bold")
        bar.add_column()
        bar.add_column()
        bar.add_row(
            "Progress", ProgressBar(total=1.0, completed=progress, width=40), f"{progress:.0%}"
        )
        parts.append(bar)
    if status and status.metadata:
        parts.append(Text("Metadata", style="bold"))
        parts.append(Text(_json_text(status.metadata)))
    if status and status.attempts:
        attempts = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("#", "POD", "MACHINE", "REASON", "EXIT", "STARTED", "FINISHED"):
            attempts.add_column(column)
        for attempt in status.attempts:
            attempts.add_row(
                str(attempt.number),
                attempt.pod,
                attempt.machine or "",
                attempt.reason or "",
                "" if attempt.exit_code is None else str(attempt.exit_code),
                attempt.started_at.isoformat(timespec="seconds") if attempt.started_at else "",
                attempt.finished_at.isoformat(timespec="seconds") if attempt.finished_at else "",
            )
        parts.append(attempts)
    if show_output and status and status.phase == Phase.COMPLETED:
        parts.append(Text("Output", style="bold"))
        parts.append(Text(_json_text(output)))
    if status and status.error:
        parts.append(Text("Error", style="bold red"))
        parts.append(Text(error_text(status.error)))
        if status.error.stack:
            parts.append(Text(status.error.stack[-2000:], style="dim"))
    title = f"{run.metadata.name}"
    return Panel(Group(*parts), title=title, title_align="left", expand=False)


def change_line(run: TaskRun) -> str:
    """One line per change, for `runs watch` when stdout is not a terminal."""
    status = run.status
    phase = status.phase.value if status and status.phase else "Pending"
    parts = [f"{run.metadata.name}", phase]
    if status and status.attempt:
        parts.append(f"attempt={status.attempt}")
    if status and status.metadata:
        parts.append(f"metadata={json.dumps(status.metadata, sort_keys=True)}")
    if status and status.error:
        parts.append(f"error={error_text(status.error)}")
    return " ".join(parts)


# --------------------------------------------------------------------------- schedules


def moment(value: datetime | None, now: datetime | None = None) -> str:
    """A time as UTC RFC 3339 and how far off it is: ``2026-11-24T07:00:00Z (in 3h)``."""
    if value is None:
        return ""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    stamp = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if value >= current:
        return f"{stamp} (in {age(current, value)})"
    return f"{stamp} ({age(value, current)} ago)"


def schedule_state(schedule: Schedule) -> Text:
    """Suspended; the reason of a Ready=False condition (InvalidCron, TaskNotFound...);
    else Active."""
    if schedule.spec.suspend:
        return Text("Suspended", style="dim")
    conditions = schedule.status.conditions if schedule.status else []
    ready = next((c for c in conditions if c.type == "Ready"), None)
    if ready is not None and ready.status == "False" and ready.reason:
        return Text(ready.reason, style="red")
    return Text("Active", style="green")


def schedules_table(schedules: list[Schedule], *, namespaces: bool = False) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    if namespaces:
        table.add_column("NAMESPACE")
    for column in ("NAME", "TASK", "CRON", "TIMEZONE", "STATUS", "NEXT RUN", "LAST RUN", "AGE"):
        table.add_column(column, no_wrap=column in ("NAME", "TASK", "CRON"))
    now = datetime.now(UTC)
    for schedule in schedules:
        status = schedule.status
        cells: list[Any] = [schedule.metadata.namespace or ""] if namespaces else []
        cells += [
            schedule.metadata.name or "",
            schedule.spec.task,
            schedule.spec.cron,
            schedule.spec.timezone,
            schedule_state(schedule),
            moment(status.next_schedule_time, now) if status else "",
            moment(status.last_schedule_time, now) if status else "",
            age(created(schedule), now),
        ]
        table.add_row(*cells)
    return table


def schedule_panel(schedule: Schedule) -> Panel:
    spec, status = schedule.spec, schedule.status
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Schedule", f"{schedule.metadata.namespace}/{schedule.metadata.name}")
    grid.add_row("Task", spec.task)
    grid.add_row("Cron", escape(spec.cron))
    grid.add_row("Timezone", spec.timezone)
    grid.add_row("Status", schedule_state(schedule))
    conditions = status.conditions if status else []
    ready = next((c for c in conditions if c.type == "Ready"), None)
    if ready is not None and ready.status == "False" and ready.message:
        grid.add_row("", escape(ready.message))
    if status and status.next_schedule_time:
        grid.add_row("Next run", _in_zone(status.next_schedule_time, spec.timezone))
    if status and status.last_schedule_time:
        grid.add_row("Last run", _in_zone(status.last_schedule_time, spec.timezone))
    if status and status.missed_runs:
        missed = str(status.missed_runs)
        if status.last_missed_time:
            missed += f", the latest {moment(status.last_missed_time)}"
        grid.add_row("Missed runs", missed)
    optional = (
        ("External id", spec.external_id),
        ("Deduplication key", spec.deduplication_key),
        ("Queue", spec.queue),
        ("Machine", spec.machine),
        ("TTL", spec.ttl),
        ("Tags", ", ".join(spec.tags)),
    )
    for label, value in optional:
        if value:
            grid.add_row(label, escape(str(value)))
    grid.add_row("Concurrency policy", spec.concurrency_policy.value)
    deadline = spec.starting_deadline_seconds
    grid.add_row(
        "Missed run policy",
        spec.missed_run_policy.value + ("" if deadline is None else f" (deadline {deadline}s)"),
    )
    grid.add_row(
        "History kept",
        f"{spec.successful_runs_history_limit} completed, {spec.failed_runs_history_limit} failed",
    )
    parts: list[Any] = [grid]
    if spec.payload is not None:
        parts.append(Text("Payload (payload.data of each run)", style="bold"))
        parts.append(Text(_json_text(spec.payload)))
    if status and status.last_runs:
        runs = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("RUN", "TICK", "STATUS"):
            runs.add_column(column)
        for run in status.last_runs:
            runs.add_row(
                run.name,
                run.scheduled_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                phase_text(_phase(run.phase)),
            )
        parts.append(Text("Recent runs", style="bold"))
        parts.append(runs)
    return Panel(
        Group(*parts), title=schedule.metadata.name or "", title_align="left", expand=False
    )


def _in_zone(value: datetime, timezone: str) -> str:
    """:func:`moment`, and the wall-clock time in the schedule's zone when not UTC."""
    text = moment(value)
    if timezone == "UTC":
        return text
    try:
        local = value.astimezone(ZoneInfo(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return text
    return f"{text}, {local:%Y-%m-%d %H:%M:%S %Z} in {timezone}"


def _phase(value: str | None) -> Phase | None:
    try:
        return Phase(value) if value else None
    except ValueError:
        return None


__all__ = [
    "Output",
    "age",
    "attempt_pod",
    "change_line",
    "console",
    "dump",
    "err_console",
    "moment",
    "phase_text",
    "progress_of",
    "run_json",
    "run_panel",
    "runs_table",
    "schedule_panel",
    "schedule_state",
    "schedules_table",
]
