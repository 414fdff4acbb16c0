"""Benchmark and chaos results as Markdown (between markers in docs/benchmarks.md) and PNGs.

Only the generated sections between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` are
rewritten, so the hand-written analysis around them survives a new run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tests.bench.harness import PHASES, BenchResult, Throughput

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
IMG = REPO / "docs" / "img"

TARGET_VS_JOBS = 2.0
TARGET_VS_RAW = 0.5
TARGET_P50_MS = 100.0
TARGET_P99_MS = 1000.0
TARGET_SLOT_MS = 200.0
TARGET_DEEP_MIB = 300.0
TARGET_RESUME_S = 10.0
TARGET_WRITES = 5.0


def replace_section(doc: Path, name: str, body: str, title: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = doc.read_text() if doc.exists() else f"# {title}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def _verdict(ok: bool, detail: str) -> str:
    return f"**met** ({detail})" if ok else f"**missed** ({detail})"


def targets(result: BenchResult) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    rows: list[tuple[str, str, str]] = []
    first: dict[str, Throughput] = {}
    for t in medians(result):
        first.setdefault(t.flavour, t)
    raw, jobs, pod = first.get("raw"), first.get("jobs"), first.get("podtask")
    if pod and jobs:
        ratio = pod.runs_per_second / jobs.runs_per_second
        rows.append(
            (
                "runs/s ≥ 2x the Job controller's",
                f"{ratio:.2f}x",
                _verdict(ratio >= TARGET_VS_JOBS, f"{ratio / TARGET_VS_JOBS:.0%} of the target"),
            )
        )
    if pod and raw:
        ratio = pod.runs_per_second / raw.runs_per_second
        rows.append(
            (
                "runs/s ≥ ½ the raw pod-create loop's",
                f"{ratio:.2f}x",
                _verdict(ratio >= TARGET_VS_RAW, f"{ratio / TARGET_VS_RAW:.0%} of the target"),
            )
        )
    rate = result.config["rate"]
    lat = next((x for x in result.latency if x.flavour == "podtask" and x.rate == rate), None)
    if lat:
        rows.append(
            (
                f"trigger→pod p50 ≤ 100 ms at {lat.rate:g} runs/s",
                f"{lat.p50_ms:.0f} ms",
                _verdict(
                    lat.p50_ms <= TARGET_P50_MS, f"{lat.p50_ms / TARGET_P50_MS:.1f}x the limit"
                ),
            )
        )
        rows.append(
            (
                f"trigger→pod p99 ≤ 1 s at {lat.rate:g} runs/s",
                f"{lat.p99_ms:.0f} ms",
                _verdict(
                    lat.p99_ms <= TARGET_P99_MS, f"{lat.p99_ms / TARGET_P99_MS:.1f}x the limit"
                ),
            )
        )
    sat = result.saturated
    if sat:
        rows.append(
            (
                "slot-freed→next-pod p50 ≤ 200 ms",
                f"{sat.p50_ms:.0f} ms",
                _verdict(
                    sat.p50_ms <= TARGET_SLOT_MS, f"{sat.p50_ms / TARGET_SLOT_MS:.1f}x the limit"
                ),
            )
        )
    deep = result.deep
    if deep:
        rows.append(
            (
                f"{deep.runs:,} queued runs in ≤ 300 MB (operator RSS)",
                f"{deep.operator_peak_rss_mib:.0f} MiB peak",
                _verdict(
                    deep.operator_peak_rss_mib * 1.048576 <= TARGET_DEEP_MIB,
                    f"{deep.operator_peak_rss_mib * 1.048576 / TARGET_DEEP_MIB:.0%} of the budget",
                ),
            )
        )
        rows.append(
            (
                "dispatch resumes ≤ 10 s after a restart",
                f"{deep.restart_to_first_pod_seconds:.1f} s",
                _verdict(
                    deep.restart_to_first_pod_seconds <= TARGET_RESUME_S,
                    f"{deep.restart_to_first_pod_seconds / TARGET_RESUME_S:.1f}x the limit",
                ),
            )
        )
    # The target is the default configuration's; other podtask phases show their cost.
    defaults = {label for flavour, label, extra in PHASES if flavour == "podtask" and not extra}
    for t in medians(result):
        if t.flavour == "podtask" and t.label in defaults:
            rows.append(
                (
                    f"≤ 5 API writes per run by the operator ({t.label})",
                    f"{t.controller_writes_per_run:.1f} (all actors: {t.writes_per_run:.1f})",
                    _verdict(
                        t.controller_writes_per_run <= TARGET_WRITES,
                        f"{t.controller_writes_per_run - TARGET_WRITES:+.1f}",
                    ),
                )
            )
    return rows


def bench_markdown(result: BenchResult, img_prefix: str = "img/") -> str:
    out: list[str] = []
    add = out.append
    add(
        f"_Generated by `{result.command}` on {result.started}; the whole run took "
        f"{result.seconds / 60:.1f} min._\n"
    )
    add("**Machine and versions**\n")
    add("| | |\n|---|---|")
    for key, value in result.machine.items():
        add(f"| {key.replace('_', ' ')} | {value} |")
    cfg = result.config
    add("")
    add(
        f"Settings: {cfg['runs']} objects per throughput phase, created by "
        f"{cfg['client_connections']} concurrent client connections; latency at "
        f"{cfg['rate']:g}/s for {cfg['rate_seconds']:g} s; saturated queue of "
        f"{cfg['saturated_limit']} slots with {cfg['saturated_runs']} runs; "
        f"{cfg['nodes']} instant-runner nodes; idle background "
        f"{result.background_writes_per_second:.1f} writes/s subtracted.\n"
    )

    add("**Throughput (pods that exit at once)**\n")
    add(
        "| | runs | runs/s | vs Jobs | vs raw | create burst | writes/run (all) | "
        "writes/run (controller) | controller CPU s | apiserver CPU s | etcd CPU s | "
        "operator peak RSS | load avg | outcomes |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    reps = medians(result)
    raw = next((t for t in reps if t.flavour == "raw"), None)
    jobs = next((t for t in reps if t.flavour == "jobs"), None)
    for t in reps:
        cpu = t.resources.cpu_seconds
        controller = {
            "podtask": cpu.get("podtask-operator"),
            "jobs": cpu.get("kube-controller-manager"),
        }.get(t.flavour)
        add(
            f"| {t.label} | {t.runs} | {t.runs_per_second:.1f} ({_spread(result, t)}) | "
            f"{_ratio(t, jobs)} | {_ratio(t, raw)} | {t.create_seconds:.1f} s | "
            f"{t.writes_per_run:.1f} | {t.controller_writes_per_run:.1f} | "
            f"{_num(controller)} | {_num(cpu.get('kube-apiserver'))} | "
            f"{_num(cpu.get('etcd'))} | "
            f"{_num(t.resources.operator_peak_rss_mib, ' MiB', 0)} | "
            f"{t.load_average[0]:.1f}→{t.load_average[1]:.1f} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(t.outcomes.items()))} |"
        )
    add("")
    rounds = max(t.round for t in result.throughput)
    add(
        f"Each phase ran {rounds} times, round-robin; the row is its median round (runs/s: "
        "median, with the lowest and highest round in brackets), and every other column "
        "comes from that same round. Every round:\n"
    )
    add("| | " + " | ".join(f"round {i}" for i in range(1, rounds + 1)) + " |")
    add("|---|" + "---|" * rounds)
    for t in reps:
        cells = [
            f"{x.runs_per_second:.1f}/s (load {x.load_average[0]:.1f}→{x.load_average[1]:.1f})"
            for x in result.throughput
            if x.label == t.label
        ]
        add(f"| {t.label} | " + " | ".join(cells) + " |")
    add("")
    add(
        "Controller CPU: the operator process for podtask, the whole "
        "kube-controller-manager for Jobs. All CPU seconds per phase (median round):\n"
    )
    names = sorted({n for t in reps for n in t.resources.cpu_seconds})
    add("| | " + " | ".join(names) + " |")
    add("|---|" + "---|" * len(names))
    for t in reps:
        add(
            f"| {t.label} | "
            + " | ".join(_num(t.resources.cpu_seconds.get(n)) for n in names)
            + " |"
        )
    add("")
    add(
        "API server write requests per completed run, by resource and verb "
        "(`apiserver_request_total`, net of the idle background):\n"
    )
    keys = sorted(
        {k for t in reps for k in t.writes},
        key=lambda k: -max(t.writes.get(k, 0) for t in reps),
    )
    add("| resource verb | " + " | ".join(t.label for t in reps) + " |")
    add("|---|" + "---|" * len(reps))
    for key in keys:
        add(
            f"| `{key}` | "
            + " | ".join(f"{t.writes[key] / t.runs:.2f}" if key in t.writes else "" for t in reps)
            + " |"
        )
    add("")
    add(
        f"![throughput]({img_prefix}bench-throughput.png) "
        f"![completions]({img_prefix}bench-completions.png)\n"
    )

    if result.latency:
        add("**Trigger → pod created, at a fixed arrival rate**\n")
        add("| | rate | runs | rate sent | p50 | p90 | p99 | max |")
        add("|---|---|---|---|---|---|---|---|")
        for lat in result.latency:
            add(
                f"| {lat.flavour} | {lat.rate:g}/s | {lat.runs} | {lat.achieved_rate:.1f}/s | "
                f"{lat.p50_ms:.0f} ms | {lat.p90_ms:.0f} ms | {lat.p99_ms:.0f} ms | "
                f"{lat.max_ms:.0f} ms |"
            )
        add("")
        add("Measured by the client: from sending the create to the pod's ADDED watch event.\n")
        add(f"![latency]({img_prefix}bench-latency.png)\n")
    sat = result.saturated
    if sat:
        add("**Saturated queue: slot freed → next pod**\n")
        add(
            f"{sat.runs} runs through {sat.limit} slots in {sat.seconds:.1f} s "
            f"({sat.runs_per_second:.1f} runs/s); slot freed (run final and its pod "
            f"stopped) → next pod: p50 {sat.p50_ms:.0f} ms, p90 {sat.p90_ms:.0f} ms, "
            f"p99 {sat.p99_ms:.0f} ms over {len(sat.samples_ms)} hand-overs; outcomes "
            f"{sat.outcomes}.\n"
        )
        add(f"![slot]({img_prefix}bench-slot.png)\n")
    deep = result.deep
    if deep:
        add(f"**{deep.runs:,} queued runs**\n")
        add("| | |\n|---|---|")
        add(f"| create {deep.runs:,} TaskRuns (client) | {deep.create_seconds:.0f} s |")
        add(f"| until all are `Queued` | {deep.queued_seconds:.0f} s |")
        add(f"| operator RSS, empty | {deep.operator_rss_empty_mib:.0f} MiB |")
        add(
            f"| operator RSS, {deep.runs:,} queued | {deep.operator_rss_mib:.0f} MiB "
            f"(peak {deep.operator_peak_rss_mib:.0f} MiB) |"
        )
        add(
            f"| SIGKILL, queue unpaused, restart → healthy | "
            f"{deep.restart_to_healthy_seconds:.1f} s |"
        )
        add(f"| restart → first new pod | {deep.restart_to_first_pod_seconds:.1f} s |")
        add(f"| restarted operator peak RSS (10 s in) | {deep.restart_peak_rss_mib:.0f} MiB |")
        add("")
    rows = targets(result)
    if rows:
        add("**Targets**\n")
        add("| target | measured | |")
        add("|---|---|---|")
        for target, measured, verdict in rows:
            add(f"| {target} | {measured} | {verdict} |")
        add("")
    profiles = [t for t in result.throughput if t.apiserver_profile]
    if profiles:
        add(
            "**kube-apiserver CPU profile** (pprof, first seconds of each phase; its own "
            "handler, admission, validation and storage frames by cumulative time)\n"
        )
        for t in profiles:
            add(f"{t.label}:\n")
            add("```")
            add(t.apiserver_profile or "")
            add("```")
    if result.profile:
        add("**Operator profile** (cProfile, sorted by own time)\n")
        add("```")
        add(result.profile)
        add("```")
    return "\n".join(out)


def medians(result: BenchResult) -> list[Throughput]:
    """Each phase's median round (the lower middle of an even count), in phase order."""
    chosen: list[Throughput] = []
    for label in dict.fromkeys(t.label for t in result.throughput):
        rounds = sorted(
            (t for t in result.throughput if t.label == label), key=lambda t: t.runs_per_second
        )
        chosen.append(rounds[(len(rounds) - 1) // 2])
    return chosen


def _spread(result: BenchResult, t: Throughput) -> str:
    values = [x.runs_per_second for x in result.throughput if x.label == t.label]
    return f"{min(values):.1f}-{max(values):.1f}" if len(values) > 1 else "1 round"


def _ratio(t: Throughput, base: Throughput | None) -> str:
    return f"{t.runs_per_second / base.runs_per_second:.2f}x" if base else ""


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}{unit}"


def plot(result: BenchResult, img_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 3.6))
    reps = medians(result)
    labels = [t.label for t in reps]
    values = [t.runs_per_second for t in reps]
    spans = [[x.runs_per_second for x in result.throughput if x.label == t.label] for t in reps]
    errors = [
        [v - min(r) for v, r in zip(values, spans, strict=True)],
        [max(r) - v for v, r in zip(values, spans, strict=True)],
    ]
    colors = [
        "#888888" if t.flavour == "raw" else "#4c72b0" if t.flavour == "jobs" else "#dd8452"
        for t in reps
    ]
    bars = ax.barh(labels, values, color=colors, xerr=errors, capsize=3)
    ax.bar_label(bars, fmt="%.1f", padding=3)
    jobs = next((t for t in reps if t.flavour == "jobs"), None)
    raw = next((t for t in reps if t.flavour == "raw"), None)
    if jobs:
        ax.axvline(
            TARGET_VS_JOBS * jobs.runs_per_second,
            color="#4c72b0",
            ls="--",
            lw=1,
            label="target: 2x Jobs",
        )
    if raw:
        ax.axvline(
            TARGET_VS_RAW * raw.runs_per_second,
            color="#888888",
            ls=":",
            lw=1,
            label="target: ½ raw",
        )
    ax.invert_yaxis()
    ax.set_xlabel("completed runs/s")
    ax.set_title(f"Throughput, {result.config['runs']} pods that exit at once")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, img_dir / "bench-throughput.png"))

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for t in reps:
        ax.plot(t.completions, range(1, len(t.completions) + 1), label=t.label)
    ax.set_xlabel("seconds since the first create")
    ax.set_ylabel("completed")
    ax.set_title("Completions over time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, img_dir / "bench-completions.png"))

    if result.latency:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for lat in result.latency:
            samples = sorted(max(s, 0.1) for s in lat.samples_ms)
            ax.plot(
                samples,
                [(i + 1) / len(samples) for i in range(len(samples))],
                label=f"{lat.flavour} at {lat.rate:g}/s (p50 {lat.p50_ms:.0f} ms, "
                f"p99 {lat.p99_ms:.0f} ms)",
                ls="-" if lat.rate == result.config["rate"] else "--",
            )
        ax.axvline(TARGET_P50_MS, color="grey", ls="--", lw=1, label="p50 target 100 ms")
        ax.axvline(TARGET_P99_MS, color="grey", ls=":", lw=1, label="p99 target 1 s")
        ax.set_xscale("log")
        ax.set_xlabel("trigger → pod created (ms)")
        ax.set_ylabel("fraction of runs")
        ax.set_title("Trigger to pod created, at fixed arrival rates")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, img_dir / "bench-latency.png"))

    if result.saturated and result.saturated.samples_ms:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.hist(result.saturated.samples_ms, bins=40, color="#dd8452")
        ax.axvline(TARGET_SLOT_MS, color="grey", ls="--", lw=1, label="p50 target 200 ms")
        ax.axvline(
            result.saturated.p50_ms,
            color="black",
            lw=1,
            label=f"p50 {result.saturated.p50_ms:.0f} ms",
        )
        ax.set_xlabel("slot freed → next pod (ms)")
        ax.set_ylabel("hand-overs")
        ax.set_title(f"Saturated queue, {result.saturated.limit} slots")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, img_dir / "bench-slot.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_bench(result: BenchResult, doc: Path = DOC, img_dir: Path = IMG) -> None:
    plot(result, img_dir)
    prefix = (
        f"{img_dir.relative_to(doc.parent).as_posix()}/"
        if img_dir.is_relative_to(doc.parent)
        else f"{img_dir.as_posix()}/"
    )
    replace_section(doc, "bench", bench_markdown(result, prefix), "Benchmarks")
    data = doc.with_suffix(".json")
    current = json.loads(data.read_text()) if data.exists() else {}
    current["bench"] = _rounded(result.to_json())
    data.write_text(json.dumps(current, indent=1, default=str) + "\n")


def _rounded(value: Any) -> Any:
    """Summary numbers only: the per-run samples behind the plots stay out of the file."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items() if k not in ("samples_ms", "completions")}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value
