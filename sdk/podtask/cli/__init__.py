"""The ``podtask`` command: scaffold, deploy, develop, trigger and follow runs, and
manage schedules.

Exit codes (every command): 0 success; 1 an error from the cluster or the
command; 2 bad input (usage, JSON, options, project); 3 not found (task, run,
token, schedule); 4 cluster unreachable or no credentials; 5 the run ended without
completing (``trigger --wait``, ``runs watch``); 6 timed out waiting; 130
interrupted.  ``--output json`` prints machine-readable results on stdout and
errors as ``{"error": {"type", "message"}}`` on stderr.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.markup import escape

from podtask import __version__
from podtask.api.v1alpha1 import ConcurrencyPolicy, MissedRunPolicy
from podtask.cli._render import (
    Output,
    change_line,
    console,
    dump,
    err_console,
    run_json,
    run_panel,
    runs_table,
    schedule_panel,
    schedules_table,
)
from podtask.errors import (
    ClusterUnreachableError,
    InvalidTaskDefinitionError,
    InvalidTriggerOptionsError,
    KubernetesApiError,
    PayloadValidationError,
    PodtaskError,
    RunFailedError,
    RunTimeoutError,
    TaskNotFoundError,
    TokenAlreadyCompletedError,
    error_type_of,
)

P = ParamSpec("P")
T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNREACHABLE = 4
EXIT_RUN_FAILED = 5
EXIT_TIMEOUT = 6
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="podtask",
    help="podtask: background tasks for Python on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
runs_app = typer.Typer(help="List, inspect, follow, cancel and replay runs.", no_args_is_help=True)
tokens_app = typer.Typer(help="Complete wait tokens.", no_args_is_help=True)
schedules_app = typer.Typer(
    help="List, show, create and delete schedules (tasks run on a cron).", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")
app.add_typer(tokens_app, name="tokens")
app.add_typer(schedules_app, name="schedules")


class CliUsageError(PodtaskError, ValueError):
    """Bad input on the command line (exit code 2)."""

    error_type = "UsageError"


# --------------------------------------------------------------------------- plumbing


def _default_client_factory(
    *, kubeconfig: Path | None, context: str | None, namespace: str | None
) -> Any:
    from podtask.client import Client

    return Client(kubeconfig=kubeconfig, context=context, namespace=namespace)


client_factory: Callable[..., Any] = _default_client_factory
"""Makes the :class:`~podtask.Client` of a command; tests substitute a fake API."""


def make_client(kubeconfig: Path | None, context: str | None, namespace: str | None) -> Any:
    return client_factory(kubeconfig=kubeconfig, context=context, namespace=namespace)


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, ClusterUnreachableError):
        return EXIT_UNREACHABLE
    if isinstance(error, TaskNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, KubernetesApiError):
        return EXIT_NOT_FOUND if error.status == 404 else EXIT_ERROR
    if isinstance(error, RunTimeoutError):
        return EXIT_TIMEOUT
    if isinstance(error, RunFailedError):
        return EXIT_RUN_FAILED
    if isinstance(error, TokenAlreadyCompletedError):
        return EXIT_ERROR
    if isinstance(
        error,
        CliUsageError
        | PayloadValidationError
        | InvalidTriggerOptionsError
        | InvalidTaskDefinitionError
        | ValueError,
    ):
        return EXIT_USAGE
    return EXIT_ERROR


def report(error: BaseException, output: Output | None) -> None:
    if output in (Output.JSON, Output.YAML):
        sys.stderr.write(
            json.dumps({"error": {"type": error_type_of(error), "message": str(error)}}) + "\n"
        )
        return
    err_console().print(f"[bold red]error:[/] {escape(str(error))}", markup=True, highlight=False)


def handles_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Typed errors become a message on stderr and the exit code they stand for."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        output = kwargs.get("output")
        try:
            return fn(*args, **kwargs)
        except PodtaskError as error:
            report(error, output if isinstance(output, Output) else None)
            raise typer.Exit(exit_code_for(error)) from None
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise CliUsageError(f"{what} is not valid JSON: {error}") from None


def parse_time(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliUsageError(f"{what} {text!r} is not an ISO 8601 time") from None


Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        envvar="PODTASK_NAMESPACE",
        help="Namespace (default: the kubeconfig context's, else default).",
    ),
]
Kubeconfig = Annotated[
    Path | None,
    typer.Option("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)."),
]
KubeContext = Annotated[str | None, typer.Option("--context", help="kubeconfig context.")]
OutputOption = Annotated[
    Output, typer.Option("--output", "-o", help="table (for people), json or yaml.")
]


@app.callback()
def root() -> None:
    """podtask: background tasks for Python on Kubernetes."""


@app.command()
def version() -> None:
    """Print the podtask version."""
    typer.echo(__version__)


# --------------------------------------------------------------------------- init


@app.command()
@handles_errors
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path(),
    name: Annotated[
        str | None, typer.Option(help="Project name (default: the directory's).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Create a project: podtask.toml, an example task, a Dockerfile."""
    from podtask.project import scaffold

    written = scaffold(directory, name, force=force)
    out = console()
    root_dir = directory.resolve()
    for path in written:
        out.print(f"created {path.relative_to(root_dir)}")
    out.print(
        "\nNext:\n"
        f"  cd {directory}\n"
        "  podtask dev                  # run the tasks locally against your cluster\n"
        '  podtask trigger example.hello \'{"name": "Ada"}\' --wait'
    )


# --------------------------------------------------------------------------- deploy


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliUsageError(f"--env wants NAME=VALUE, not {pair!r}")
        env[key] = value
    return env


@app.command()
@handles_errors
def deploy(
    image: Annotated[
        str | None, typer.Option(help="Image holding the project (default: podtask.toml's).")
    ] = None,
    version_: Annotated[
        str | None, typer.Option("--version", help="Version (default: YYYYMMDD.HHMMSS).")
    ] = None,
    project_dir: Annotated[
        Path | None, typer.Option("--project", help="Project directory (default: found from .).")
    ] = None,
    env: Annotated[
        list[str], typer.Option("--env", "-e", help="NAME=VALUE for every task's container.")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    apply: Annotated[bool, typer.Option(help="Apply to the cluster instead of printing.")] = False,
    prune: Annotated[
        bool, typer.Option(help="With --apply: delete the project's Tasks no longer defined.")
    ] = False,
    dev_session: Annotated[str | None, typer.Option(hidden=True)] = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: Annotated[
        Output | None,
        typer.Option("--output", "-o", help="yaml (default without --apply), json, or table."),
    ] = None,
) -> None:
    """Find the project's tasks and schedules; emit Task and Schedule manifests.

    Without --apply the manifests go to stdout (YAML) for GitOps; with --apply they
    are created or updated in the namespace.
    """
    from podtask.project import collect, default_version, find_project

    project = find_project(project_dir)
    chosen_image = image or project.image
    if not chosen_image:
        raise CliUsageError("no image: pass --image (or set project.image in podtask.toml)")
    ns = namespace or project.namespace
    manifests = collect(
        project,
        image=chosen_image,
        version=version_ or default_version(),
        namespace=ns,
        env=_env_pairs(env),
    )
    documents = manifests.all()
    if dev_session is not None:
        from podtask.dev import task_manifest_for_dev

        documents = [
            task_manifest_for_dev(d, dev_session) if d["kind"] == "Task" else d for d in documents
        ]
    if not apply:
        if output == Output.TABLE:
            out = console()
            for document in documents:
                out.print(f"{document['kind']}/{document['metadata']['name']}")
            return
        dump(documents, output or Output.YAML)
        return
    from podtask.project import apply_manifests
    from podtask.project import prune as prune_objects

    client = make_client(kubeconfig, context, ns)
    target = client.namespace
    applied = apply_manifests(client.backend, target, documents)
    if prune:
        applied += prune_objects(client.backend, target, project.name, documents)
    if output in (Output.JSON, Output.YAML):
        dump([{"kind": a.kind, "name": a.name, "action": a.action} for a in applied], output)
        return
    out = console()
    for item in applied:
        out.print(f"{item.kind.lower()}/{item.name} {item.action}")
    out.print(
        f"{len(manifests.tasks)} task(s), {len(manifests.schedules)} schedule(s) "
        f"in namespace {target}"
    )


# --------------------------------------------------------------------------- dev


@app.command()
@handles_errors
def dev(
    project_dir: Annotated[
        Path | None, typer.Option("--project", help="Project directory (default: found from .).")
    ] = None,
    image: Annotated[
        str, typer.Option(help="Image of the pods that stand in for local attempts.")
    ] = "podtask/runner:dev",
    api_url: Annotated[
        str | None,
        typer.Option(help="The run API as reachable from here (default: the URL pods get)."),
    ] = None,
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between checks for changed files.")
    ] = 1.0,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
) -> None:
    """Run the project's tasks as local processes against a cluster, reloading on change.

    The tasks are applied as Tasks of this dev session; the operator queues and
    dispatches their runs as usual, and each attempt runs here, from the working
    copy, instead of in its pod.  See docs/cli.md.
    """
    from podtask.dev import DevSession
    from podtask.project import find_project

    project = find_project(project_dir)
    client = make_client(kubeconfig, context, namespace or project.namespace)
    out = console()

    def emit(line: str) -> None:
        out.print(line, markup=False, highlight=False)

    session = DevSession(
        project,
        client.backend,
        client.namespace,
        emit=emit,
        image=image,
        api_url=api_url,
        poll_interval=poll_interval,
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        emit(f"received {signal.Signals(signum).name}; stopping")
        session.stop()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        session.run()
    except KeyboardInterrupt:
        session.shutdown()
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- trigger


class Scope(StrEnum):
    GLOBAL = "global"
    RUN = "run"
    ATTEMPT = "attempt"


@app.command()
@handles_errors
def trigger(
    task: Annotated[str, typer.Argument(help="Task id, e.g. email.send.welcome.")],
    payload: Annotated[str | None, typer.Argument(help="JSON payload.")] = None,
    payload_file: Annotated[
        Path | None,
        typer.Option(
            "--payload-file", "-f", help="Read the JSON payload from a file ('-' for stdin)."
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Make at most one run per key.")
    ] = None,
    idempotency_key_ttl: Annotated[
        str | None, typer.Option("--idempotency-key-ttl", help="How long the key holds (30d).")
    ] = None,
    concurrency_key: Annotated[str | None, typer.Option(help="Per-key copy of the queue.")] = None,
    queue: Annotated[str | None, typer.Option(help="Queue, overriding the task's.")] = None,
    delay: Annotated[str | None, typer.Option(help="Start after this long (90s, 1h).")] = None,
    ttl: Annotated[str | None, typer.Option(help="Expire if not started within this.")] = None,
    tag: Annotated[list[str], typer.Option("--tag", "-t", help="Tag (repeatable).")] = [],  # noqa: B006
    metadata: Annotated[str | None, typer.Option(help="Initial metadata (JSON object).")] = None,
    machine: Annotated[str | None, typer.Option(help="Machine preset, e.g. small-2x.")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts in total.")] = None,
    max_duration: Annotated[str | None, typer.Option(help="Longest an attempt may run.")] = None,
    priority: Annotated[int | None, typer.Option(help="Seconds of head start.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to end; print its output.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after seconds.")
    ] = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Trigger a run of a deployed task."""
    from podtask._trigger import TriggerOptions

    if payload is not None and payload_file is not None:
        raise CliUsageError("give the payload as an argument or with --payload-file, not both")
    data: Any = None
    if payload_file is not None:
        try:
            text = sys.stdin.read() if str(payload_file) == "-" else payload_file.read_text()
        except OSError as error:
            raise CliUsageError(f"cannot read {payload_file}: {error}") from None
        data = parse_json(text, f"the payload in {payload_file}")
    elif payload is not None:
        data = parse_json(payload, "the payload")
    options: TriggerOptions = {}
    if idempotency_key is not None:
        options["idempotency_key"] = idempotency_key
    if idempotency_key_ttl is not None:
        options["idempotency_key_ttl"] = idempotency_key_ttl
    if concurrency_key is not None:
        options["concurrency_key"] = concurrency_key
    if queue is not None:
        options["queue"] = queue
    if delay is not None:
        options["delay"] = delay
    if ttl is not None:
        options["ttl"] = ttl
    if tag:
        options["tags"] = tag
    if metadata is not None:
        value = parse_json(metadata, "--metadata")
        if not isinstance(value, dict):
            raise CliUsageError("--metadata must be a JSON object")
        options["metadata"] = value
    if machine is not None:
        options["machine"] = machine  # type: ignore[typeddict-item] # checked by the model
    if max_attempts is not None:
        options["max_attempts"] = max_attempts
    if max_duration is not None:
        options["max_duration"] = max_duration
    if priority is not None:
        options["priority"] = priority
    client = make_client(kubeconfig, context, namespace)
    handle = client.trigger(task, data, **options)
    summary = {
        "id": handle.id,
        "namespace": handle.namespace,
        "task": handle.task_identifier,
        "isCached": handle.is_cached,
    }
    if not wait:
        if output == Output.TABLE:
            verb = "Found existing run (idempotency key)" if handle.is_cached else "Triggered run"
            console().print(f"{verb} {handle.id} of task {task} in namespace {handle.namespace}")
        else:
            dump(summary, output)
        return
    result = _wait_for(client, handle.id, handle.namespace, timeout, output)
    if output == Output.TABLE:
        console().print(run_panel(result.run, result.output))
    else:
        dump(
            {
                **summary,
                "phase": result.phase.value,
                "output": result.output,
                "error": result.error.to_wire() if result.error else None,
            },
            output,
        )
    if not result.ok:
        raise typer.Exit(EXIT_RUN_FAILED)


def _wait_for(client: Any, name: str, namespace: str, timeout: float | None, output: Output) -> Any:
    if output == Output.TABLE and sys.stdout.isatty():
        with console().status(f"waiting for {name}…"):
            return client.result(name, namespace, timeout=timeout)
    return client.result(name, namespace, timeout=timeout)


# --------------------------------------------------------------------------- runs


@runs_app.command("list")
@handles_errors
def runs_list(
    task: Annotated[list[str], typer.Option("--task", help="Task id (repeatable).")] = [],  # noqa: B006
    status: Annotated[
        list[str], typer.Option("--status", "-s", help="Phase, e.g. Failed or FAILED (repeatable).")
    ] = [],  # noqa: B006
    tag: Annotated[list[str], typer.Option("--tag", "-t", help="Has this tag (any of).")] = [],  # noqa: B006
    since: Annotated[
        str | None, typer.Option(help="Created within this long, e.g. 1h, 7d.")
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Created at or after (ISO).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Created before (ISO).")] = None,
    batch_id: Annotated[str | None, typer.Option(help="Runs of one batch.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")
    ] = False,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """List runs, newest first."""
    client = make_client(kubeconfig, context, namespace)
    found = client.list(
        task=task or None,
        status=status or None,
        tag=tag or None,
        period=since,
        created_after=parse_time(from_, "--from"),
        created_before=parse_time(to, "--to"),
        batch_id=batch_id,
        limit=limit,
        all_namespaces=all_namespaces,
    )
    if output != Output.TABLE:
        dump([run_json(r) for r in found], output)
        return
    out = console()
    if not found:
        out.print("no runs found")
        return
    out.print(runs_table(found, namespaces=all_namespaces))


@runs_app.command("get")
@handles_errors
def runs_get(
    name: Annotated[str, typer.Argument(help="Run name.")],
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Show a run: status, attempts, metadata, output or error."""
    client = make_client(kubeconfig, context, namespace)
    run = client.retrieve(name)
    value = (
        client.output(run)
        if run.status and run.status.output_ref
        else (run.status.output if run.status else None)
    )
    if output != Output.TABLE:
        body = run_json(run)
        if run.status and run.status.output_ref:
            body["status"]["output"] = value  # read back from its Secrets
        dump(body, output)
        return
    console().print(run_panel(run, value))


@runs_app.command("logs")
@handles_errors
def runs_logs(
    name: Annotated[str, typer.Argument(help="Run name.")],
    attempt: Annotated[int | None, typer.Option(help="Attempt number (default: latest).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until it ends.")] = False,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
) -> None:
    """Print the log of a run's attempt (its pod)."""
    client = make_client(kubeconfig, context, namespace)
    for line in client.logs(name, attempt=attempt, follow=follow):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


@runs_app.command("watch")
@handles_errors
def runs_watch(
    name: Annotated[str, typer.Argument(help="Run name.")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Follow a run live (status, attempts, metadata and progress) until it ends.

    Exits 0 when it completed, 5 when it ended otherwise, 6 on --timeout.
    """
    client = make_client(kubeconfig, context, namespace)
    out = console()
    last = None
    if output == Output.TABLE and out.is_terminal:
        from rich.live import Live

        with Live(console=out, refresh_per_second=8) as live:
            for run in client.subscribe(name, timeout=timeout):
                last = run
                live.update(run_panel(run, client.output(run) if _completed(run) else None))
    else:
        for run in client.subscribe(name, timeout=timeout):
            last = run
            if output == Output.TABLE:
                out.print(change_line(run), markup=False)
            else:
                sys.stdout.write(json.dumps(run_json(run)) + "\n")
                sys.stdout.flush()
    if (
        last is None
        or last.status is None
        or not (last.status.phase and last.status.phase.is_final)
    ):
        raise RunTimeoutError(f"run {name} did not end within {timeout}s")
    if output == Output.TABLE and not out.is_terminal and _completed(last):
        out.print(json.dumps(client.output(last)), markup=False)
    if not _completed(last):
        raise typer.Exit(EXIT_RUN_FAILED)


def _completed(run: Any) -> bool:
    from podtask.api.v1alpha1 import Phase

    return bool(run.status and run.status.phase == Phase.COMPLETED)


@runs_app.command("cancel")
@handles_errors
def runs_cancel(
    name: Annotated[str, typer.Argument(help="Run name.")],
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Cancel a run: its pod gets SIGTERM and on_cancel hooks run."""
    client = make_client(kubeconfig, context, namespace)
    run = client.retrieve(name)
    phase = run.status.phase if run.status else None
    if phase is not None and phase.is_final:
        message = f"run {name} already ended {phase.value}; nothing to cancel"
    else:
        run = client.cancel(name)
        message = f"cancel requested for run {name}"
    if output != Output.TABLE:
        dump(run_json(run), output)
        return
    console().print(message)


@runs_app.command("replay")
@handles_errors
def runs_replay(
    name: Annotated[str, typer.Argument(help="Run name.")],
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Run the same task again with the same payload and options."""
    client = make_client(kubeconfig, context, namespace)
    replayed = client.replay(name)
    if output != Output.TABLE:
        dump(run_json(replayed), output)
        return
    console().print(f"replayed {name} as {replayed.metadata.name}")


# --------------------------------------------------------------------------- tokens


@tokens_app.command("complete")
@handles_errors
def tokens_complete(
    name: Annotated[str, typer.Argument(help="WaitToken name.")],
    output_json: Annotated[
        str, typer.Option("--output-json", help="The token's output (JSON).")
    ] = "null",
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Complete a wait token: runs waiting on it resume with the output."""
    value = parse_json(output_json, "--output-json")
    client = make_client(kubeconfig, context, namespace)
    token = client.complete_token(name, value)
    if output != Output.TABLE:
        dump(token.to_wire(), output)
        return
    console().print(f"completed wait token {name}")


# --------------------------------------------------------------------------- schedules


@schedules_app.command("list")
@handles_errors
def schedules_list(
    task: Annotated[str | None, typer.Option("--task", help="Only this task's schedules.")] = None,
    external_id: Annotated[
        str | None, typer.Option("--external-id", help="Only schedules with this externalId.")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")
    ] = False,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """List schedules: task, cron, time zone, status, next and last run."""
    from podtask import schedules

    client = make_client(kubeconfig, context, namespace)
    found = schedules.list(
        task=task, external_id=external_id, all_namespaces=all_namespaces, client=client
    )
    if output != Output.TABLE:
        dump([s.to_wire() for s in found], output)
        return
    out = console()
    if not found:
        out.print("no schedules found")
        return
    out.print(schedules_table(found, namespaces=all_namespaces))


@schedules_app.command("get")
@handles_errors
def schedules_get(
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Show a schedule: its spec, next and last run, missed runs and recent runs."""
    from podtask import schedules

    client = make_client(kubeconfig, context, namespace)
    schedule = schedules.retrieve(name, client=client)
    if output != Output.TABLE:
        dump(schedule.to_wire(), output)
        return
    console().print(schedule_panel(schedule))


@schedules_app.command("create")
@handles_errors
def schedules_create(
    name: Annotated[str, typer.Argument(help="Schedule name (a DNS subdomain).")],
    task: Annotated[str, typer.Option("--task", help="Id of the task to run.")],
    cron: Annotated[
        str,
        typer.Option(
            "--cron", help="5 fields, 6 with seconds first, or @hourly/@daily/@weekly/..."
        ),
    ],
    timezone: Annotated[
        str, typer.Option("--timezone", "--tz", help="IANA time zone the cron is read in.")
    ] = "UTC",
    payload: Annotated[
        str | None, typer.Option("--payload", help="JSON object passed as payload.data.")
    ] = None,
    external_id: Annotated[
        str | None, typer.Option("--external-id", help="Your id (e.g. a user's), on every run.")
    ] = None,
    deduplication_key: Annotated[
        str | None,
        typer.Option(
            "--deduplication-key",
            "--dedup",
            help="Identity: creating again with the same key updates the schedule.",
        ),
    ] = None,
    suspend: Annotated[bool, typer.Option("--suspend", help="Create it suspended.")] = False,
    concurrency_policy: Annotated[
        ConcurrencyPolicy | None,
        typer.Option(case_sensitive=False, help="Allow (default), Forbid or Replace."),
    ] = None,
    missed_run_policy: Annotated[
        MissedRunPolicy | None,
        typer.Option(case_sensitive=False, help="Skip (default) or RunOnce."),
    ] = None,
    starting_deadline_seconds: Annotated[
        int | None, typer.Option(help="A tick later than this is missed.")
    ] = None,
    successful_runs_history_limit: Annotated[
        int | None, typer.Option(help="Completed runs kept (3).")
    ] = None,
    failed_runs_history_limit: Annotated[
        int | None, typer.Option(help="Failed runs kept (1).")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Queue for the runs.")] = None,
    machine: Annotated[str | None, typer.Option(help="Machine preset for the runs.")] = None,
    tag: Annotated[list[str], typer.Option("--tag", "-t", help="Tag every run (repeatable).")] = [],  # noqa: B006
    ttl: Annotated[
        str | None, typer.Option(help="Expire a run not started this long after its tick.")
    ] = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Create a schedule that runs a task on a cron in a time zone.

    Everything is checked before anything is sent.

    A schedule of that name must not exist, unless it has the same
    --deduplication-key: then it is updated.
    """
    from podtask import schedules
    from podtask.errors import TaskNotDeployedError

    data: dict[str, Any] | None = None
    if payload is not None:
        value = parse_json(payload, "--payload")
        if not isinstance(value, dict):
            raise CliUsageError("--payload must be a JSON object")
        data = value
    client = make_client(kubeconfig, context, namespace)
    try:
        schedule, created = schedules._create(
            task,
            cron,
            deduplication_key,
            timezone,
            external_id,
            data,
            None,
            name=name,
            api=None,
            client=client,
            tags=tag or None,
            suspend=suspend,
            concurrency_policy=concurrency_policy,
            missed_run_policy=missed_run_policy,
            starting_deadline_seconds=starting_deadline_seconds,
            successful_runs_history_limit=successful_runs_history_limit,
            failed_runs_history_limit=failed_runs_history_limit,
            queue=queue,
            machine=machine,
            ttl=ttl,
        )
    except ValueError as error:  # the model's verdict on the options, before any call
        if isinstance(error, PodtaskError):
            raise
        raise CliUsageError(str(error)) from None
    if output != Output.TABLE:
        dump(schedule.to_wire(), output)
        return
    ns = schedule.metadata.namespace or client.namespace
    out = console()
    out.print(f"{'created' if created else 'updated'} schedule {name} in namespace {ns}")
    try:
        client.check_task(task, ns)
    except TaskNotDeployedError:
        err_console().print(
            f"warning: no task {task!r} is deployed in namespace {ns!r} yet; "
            "its ticks are skipped until it is",
            markup=False,
        )
    except PodtaskError:
        pass  # only a hint: the schedule is made


@schedules_app.command("delete")
@handles_errors
def schedules_delete(
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: KubeContext = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Delete a schedule; its runs are deleted with it."""
    from podtask import schedules

    client = make_client(kubeconfig, context, namespace)
    ns = client.namespace
    schedules.delete(name, ns, missing_ok=False, client=client)
    if output != Output.TABLE:
        dump({"kind": "Schedule", "namespace": ns, "name": name, "action": "deleted"}, output)
        return
    console().print(f"deleted schedule {name} in namespace {ns}")


def main() -> None:
    app(prog_name="podtask")


__all__ = ["EXIT_NOT_FOUND", "app", "client_factory", "main"]
