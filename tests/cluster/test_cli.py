"""The ``podtask`` command as a user runs it (the installed entry point, a kubeconfig),
against the real API server with the operator running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.cluster.harness import (
    OperatorProcess,
    apply_task,
    free_port,
    get_run,
    pods_of,
    wait_for,
    wait_for_phase,
)

PODTASK = Path(sys.executable).with_name("podtask")
GROUP, VERSION = "podtask.dev", "v1alpha1"


class Cli:
    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home)}
        self.env.pop("PODTASK_NAMESPACE", None)

    def __call__(
        self,
        *args: str,
        cwd: Path | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PODTASK), *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env or self.env,
            timeout=timeout,
        )


@pytest.fixture
def cli(kubeconfig: Path, tmp_path: Path) -> Cli:
    return Cli(kubeconfig, tmp_path)


def test_init_deploy_apply_and_trigger_run_the_example_to_completed(
    operator: OperatorProcess, cli: Cli, namespace: str, tmp_path: Path, kube_api: ApiClient
) -> None:
    project = tmp_path / "shop"
    created = cli("init", str(project))
    assert created.returncode == 0, created.stderr
    # The local node stands in for the image: PYTHONPATH is what /app is in the image.
    deployed = cli(
        "deploy",
        "--image",
        "shop:1",
        "--version",
        "1",
        "--apply",
        "-n",
        namespace,
        "--env",
        f"PYTHONPATH={project}",
        cwd=project,
    )
    assert deployed.returncode == 0, deployed.stderr
    assert "task/example.hello created" in deployed.stdout
    task = k8s.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "tasks", "example.hello"
    )
    assert task["spec"]["entrypoint"] == "tasks.example:hello"
    assert task["metadata"]["labels"]["podtask.dev/project"] == "shop"

    triggered = cli(
        "trigger",
        "example.hello",
        '{"name": "Ada"}',
        "--wait",
        "--timeout",
        "90",
        "-n",
        namespace,
        "-o",
        "json",
    )
    assert triggered.returncode == 0, triggered.stderr
    result = json.loads(triggered.stdout)
    assert result["phase"] == "Completed" and result["output"] == {"greeting": "Hello, Ada!"}
    assert get_run(kube_api, namespace, result["id"])["status"]["metadata"]["progress"] == 1

    listed = cli("runs", "list", "-n", namespace)
    assert listed.returncode == 0
    assert result["id"] in listed.stdout and "Completed" in listed.stdout
    shown = cli("runs", "get", result["id"], "-n", namespace)
    assert shown.returncode == 0 and '"greeting": "Hello, Ada!"' in shown.stdout

    # GitOps: the same manifests on stdout, which kubectl accepts as they are.
    emitted = cli("deploy", "--image", "shop:1", "--version", "1", cwd=project)
    (document,) = yaml.safe_load_all(emitted.stdout)
    assert document["kind"] == "Task" and document["spec"]["image"] == "shop:1"


@pytest.fixture
def dev_project(cli: Cli, tmp_path: Path) -> Path:
    project = tmp_path / "devproj"
    assert cli("init", str(project)).returncode == 0
    example = project / "tasks" / "example.py"
    # Prove where the attempt ran: the task writes a file into its working directory.
    example.write_text(
        example.read_text().replace(
            '    return {"greeting": f"Hello, {name}!"}',
            "    import os, pathlib\n"
            '    pathlib.Path("ran-here.txt").write_text(str(os.getpid()))\n'
            '    return {"greeting": f"Hello, {name}!"}',
        )
    )
    return project


@pytest.fixture
def dev_session(
    cli: Cli, dev_project: Path, namespace: str, tmp_path: Path, operator: OperatorProcess
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(PODTASK), "dev", "-n", namespace, "--poll-interval", "0.3"],
            cwd=dev_project,
            env=cli.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        _wait_log(log, "watching for runs", process)
        yield process, log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_log(log: Path, text: str, process: subprocess.Popen[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text()
        if text in content:
            return content
        assert process.poll() is None, f"podtask dev exited {process.returncode}:\n{content}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the dev log:\n{log.read_text()}")


def test_dev_runs_the_example_as_a_local_process_and_reloads(
    cli: Cli,
    dev_project: Path,
    dev_session: tuple[subprocess.Popen[str], Path],
    namespace: str,
    kube_api: ApiClient,
) -> None:
    process, log = dev_session
    first = cli(
        "trigger",
        "example.hello",
        '{"name": "Dev"}',
        "--wait",
        "--timeout",
        "90",
        "-n",
        namespace,
        "-o",
        "json",
    )
    assert first.returncode == 0, first.stderr + log.read_text()
    assert json.loads(first.stdout)["output"] == {"greeting": "Hello, Dev!"}
    content = _wait_log(log, "local attempt exited with 0", process)
    assert "running tasks.example:hello locally" in content
    assert "| greeting Dev (attempt 1)" in content  # the task's own print, relayed here
    # It ran in the project directory on this machine, not in the pod's sandbox.
    ran = dev_project / "ran-here.txt"
    assert ran.is_file()
    assert int(ran.read_text()) != process.pid

    example = dev_project / "tasks" / "example.py"
    example.write_text(example.read_text().replace("Hello, {name}!", "Howdy, {name}!"))
    _wait_log(log, "reloaded", process)
    second = cli(
        "trigger",
        "example.hello",
        '{"name": "Dev"}',
        "--wait",
        "--timeout",
        "90",
        "-n",
        namespace,
        "-o",
        "json",
    )
    assert json.loads(second.stdout)["output"] == {"greeting": "Howdy, Dev!"}
    wait_for(
        kube_api,
        namespace,
        json.loads(second.stdout)["id"],
        lambda _: not pods_of(kube_api, namespace),
        30,
        "relay pods removed",
    )

    process.send_signal(signal.SIGTERM)
    assert process.wait(40) == 0
    assert "received SIGTERM; stopping" in log.read_text()


def test_dev_cancel_stops_the_local_attempt(
    cli: Cli,
    dev_project: Path,
    dev_session: tuple[subprocess.Popen[str], Path],
    namespace: str,
    kube_api: ApiClient,
) -> None:
    process, log = dev_session
    started = cli(
        "trigger",
        "example.hello",
        '{"steps": 200, "step_seconds": 0.2}',
        "-n",
        namespace,
        "-o",
        "json",
    )
    name = json.loads(started.stdout)["id"]
    wait_for_phase(kube_api, namespace, name, {"Executing"})
    assert cli("runs", "cancel", name, "-n", namespace).returncode == 0
    content = _wait_log(log, "local attempt exited with 143", process)
    assert "stopping the local attempt" in content
    assert get_run(kube_api, namespace, name)["status"]["phase"] == "Canceled"


def test_runs_commands_follow_a_live_run(
    operator: OperatorProcess, cli: Cli, namespace: str, kube_api: ApiClient
) -> None:
    apply_task(
        kube_api,
        namespace,
        "metadata.report.progress",
        "examples.tasks.metadata_progress:metadata_progress",
    )
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper")
    started = cli(
        "trigger",
        "metadata.report.progress",
        '{"steps": 6, "step_seconds": 1.0}',
        "--delay",  # the watch (a new process) starts before the run does
        "5s",
        "-n",
        namespace,
        "-o",
        "json",
        "--tag",
        "cli",
    )
    name = json.loads(started.stdout)["id"]
    watched = cli("runs", "watch", name, "-n", namespace, "--timeout", "90")
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.strip().splitlines()
    assert any(" Executing " in line and '"progress": 0.' in line for line in lines), lines
    assert lines[-2].startswith(f"{name} Completed") and lines[-1] == '{"steps": 6}'

    # Delayed, so `logs -f` is waiting for the pod before it starts (a completed pod goes).
    sleeping = json.loads(
        cli(
            "trigger", "sleeper", '{"seconds": 6}', "--delay", "5s", "-n", namespace, "-o", "json"
        ).stdout
    )["id"]
    logs = cli("runs", "logs", sleeping, "-f", "-n", namespace)
    assert logs.returncode == 0, logs.stderr
    assert "sleeping 6s" in logs.stdout

    long = json.loads(
        cli("trigger", "sleeper", '{"seconds": 120}', "-n", namespace, "-o", "json").stdout
    )["id"]
    wait_for_phase(kube_api, namespace, long, {"Executing"})
    canceled = cli("runs", "cancel", long, "-n", namespace)
    assert canceled.returncode == 0 and "cancel requested" in canceled.stdout
    failed = cli("runs", "watch", long, "-n", namespace, "-o", "json", "--timeout", "60")
    assert failed.returncode == 5
    assert json.loads(failed.stdout.splitlines()[-1])["status"]["phase"] == "Canceled"

    replayed = cli("runs", "replay", name, "-n", namespace, "-o", "json")
    assert replayed.returncode == 0
    new = json.loads(replayed.stdout)["metadata"]["name"]
    assert wait_for_phase(kube_api, namespace, new, {"Completed"})["spec"]["replayOf"] == name
    tagged = cli("runs", "list", "-n", namespace, "--tag", "cli", "-o", "json")
    assert sorted(r["metadata"]["name"] for r in json.loads(tagged.stdout)) == sorted([name, new])


def test_cli_errors_against_a_real_cluster(
    cli: Cli, namespace: str, kube_api: ApiClient, kubeconfig: Path, tmp_path: Path
) -> None:
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")
    unknown = cli("trigger", "no.such.task", "{}", "-n", namespace)
    assert unknown.returncode == 3
    assert "no task 'no.such.task' is deployed" in unknown.stderr
    assert "hello.world" in unknown.stderr
    bad_json = cli("trigger", "hello.world", "{'single': 'quotes'}", "-n", namespace)
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    bad_option = cli("trigger", "hello.world", "{}", "--delay", "tomorrow", "-n", namespace)
    assert bad_option.returncode == 2 and "is not a duration" in bad_option.stderr
    rejected = cli("trigger", "hello.world", "{}", "--machine", "xxl", "-n", namespace)
    assert rejected.returncode == 2
    missing = cli("runs", "get", "no-such-run", "-n", namespace, "-o", "json")
    assert missing.returncode == 3
    assert json.loads(missing.stderr)["error"]["type"] == "RunNotFound"
    assert (
        k8s.CustomObjectsApi(kube_api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, "taskruns"
        )["items"]
        == []
    )

    # Unreachable: the same credentials, a port nothing listens on.
    config: dict[str, Any] = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(yaml.safe_dump(config))
    env = {**cli.env, "KUBECONFIG": str(dead)}
    for args in (["trigger", "hello.world", "{}"], ["runs", "list"]):
        started = time.monotonic()
        result = cli(*args, "-n", namespace, env=env)
        assert result.returncode == 4, result.stderr
        assert "did not answer" in result.stderr
        assert time.monotonic() - started < 30


def test_tokens_complete(cli: Cli, namespace: str, kube_api: ApiClient) -> None:
    custom = k8s.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "waittokens",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WaitToken",
            "metadata": {"name": "approval"},
            "spec": {"timeout": "1h"},
        },
    )
    done = cli(
        "tokens", "complete", "approval", "--output-json", '{"approved": true}', "-n", namespace
    )
    assert done.returncode == 0, done.stderr
    status = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "waittokens", "approval"
    )["status"]
    assert status["completed"] is True and status["output"] == {"approved": True}
    assert status["completedAt"].endswith("Z")
    again = cli("tokens", "complete", "approval", "-n", namespace)
    assert again.returncode == 1 and "already" in again.stderr
    assert cli("tokens", "complete", "nope", "-n", namespace).returncode == 3


def _schedule_status(kube_api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body = k8s.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "schedules", name
    )
    status: dict[str, Any] = body.get("status") or {}
    return status


def _schedule_names(kube_api: ApiClient, namespace: str) -> list[str]:
    listed = k8s.CustomObjectsApi(kube_api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "schedules"
    )
    return sorted(item["metadata"]["name"] for item in listed["items"])


def test_schedules_create_list_get_delete(
    operator: OperatorProcess, cli: Cli, namespace: str, kube_api: ApiClient
) -> None:
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")
    created = cli(
        "schedules",
        "create",
        "weekday-digest",
        "--task",
        "hello.world",
        "--cron",
        "0 8 * * 1-5",
        "--timezone",
        "Europe/Berlin",
        "--payload",
        '{"format": "html"}',
        "--external-id",
        "customer-42",
        "-n",
        namespace,
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == f"created schedule weekday-digest in namespace {namespace}"
    assert created.stderr == ""
    paused = cli(
        "schedules",
        "create",
        "paused",
        "--task",
        "hello.world",
        "--cron",
        "*/5 * * * *",
        "--suspend",
        "--dedup",
        "paused-1",
        "-n",
        namespace,
        "-o",
        "json",
    )
    assert paused.returncode == 0, paused.stderr
    body = json.loads(paused.stdout)
    assert body["metadata"]["name"] == "paused" and body["metadata"]["namespace"] == namespace
    assert body["spec"]["suspend"] is True and body["spec"]["deduplicationKey"] == "paused-1"
    assert body["metadata"]["labels"]["podtask.dev/schedule-type"] == "imperative"
    stored = k8s.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "schedules", "weekday-digest"
    )
    assert stored["spec"]["payload"] == {"format": "html"}
    assert stored["spec"]["externalId"] == "customer-42"

    # The operator computes the next tick: 08:00 Berlin time on the next weekday.
    deadline = time.monotonic() + 60
    while not _schedule_status(kube_api, namespace, "weekday-digest").get("nextScheduleTime"):
        assert time.monotonic() < deadline, "no nextScheduleTime"
        time.sleep(0.5)
    next_tick = _schedule_status(kube_api, namespace, "weekday-digest")["nextScheduleTime"]
    berlin = datetime.fromisoformat(next_tick.replace("Z", "+00:00")).astimezone(
        ZoneInfo("Europe/Berlin")
    )
    assert (berlin.hour, berlin.minute, berlin.second) == (8, 0, 0) and berlin.weekday() < 5

    listed = cli("schedules", "list", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["NAME", "TASK", "CRON", "TIMEZONE", "STATUS"]
    paused_line, digest_line = lines[1:]
    assert paused_line.startswith("paused ") and "Suspended" in paused_line
    assert digest_line.startswith("weekday-digest ")
    for text in ("hello.world", "0 8 * * 1-5", "Europe/Berlin", "Active", f"{next_tick} (in "):
        assert text in digest_line, text
    as_json = json.loads(cli("schedules", "list", "-n", namespace, "-o", "json").stdout)
    assert [s["metadata"]["name"] for s in as_json] == ["paused", "weekday-digest"]
    assert as_json[1]["status"]["nextScheduleTime"] == next_tick
    assert cli("schedules", "list", "--task", "other", "-n", namespace).stdout.strip() == (
        "no schedules found"
    )
    shown = cli("schedules", "get", "weekday-digest", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert f"{namespace}/weekday-digest" in shown.stdout and "customer-42" in shown.stdout
    assert f"{next_tick} (in " in shown.stdout and '"format": "html"' in shown.stdout

    # Bad input: exit code 2, nothing sent.
    base = ["schedules", "create", "bad", "--task", "hello.world", "-n", namespace]
    for extra, message in (
        (["--cron", "61 * * * *"], "'61 * * * *' is not a valid cron expression"),
        (["--cron", "@daily", "--timezone", "Mars/Olympus"], "is not an IANA time zone"),
        (["--cron", "@daily", "--payload", "{'single': 'quotes'}"], "not valid JSON"),
    ):
        bad = cli(*base, *extra)
        assert bad.returncode == 2, (extra, bad.stderr)
        assert message in bad.stderr
    bad_json = cli(*base, "--cron", "* *", "-o", "json")
    assert bad_json.returncode == 2 and bad_json.stdout == ""
    assert json.loads(bad_json.stderr)["error"]["type"] == "UsageError"
    clash = cli("schedules", "create", "paused", "--task", "x", "--cron", "@daily", "-n", namespace)
    assert clash.returncode == 1 and "already exists" in clash.stderr
    assert _schedule_names(kube_api, namespace) == ["paused", "weekday-digest"]
    assert _schedule_status(kube_api, namespace, "paused").get("nextScheduleTime") is None

    deleted = cli("schedules", "delete", "weekday-digest", "-n", namespace)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"deleted schedule weekday-digest in namespace {namespace}"
    assert _schedule_names(kube_api, namespace) == ["paused"]
    again = cli("schedules", "delete", "weekday-digest", "-n", namespace)
    assert again.returncode == 3
    assert f"no schedule 'weekday-digest' in namespace '{namespace}'" in again.stderr
    missing = cli("schedules", "get", "nope", "-n", namespace, "-o", "json")
    assert missing.returncode == 3
    assert json.loads(missing.stderr)["error"]["type"] == "ScheduleNotFound"


def test_schedules_commands_with_an_unreachable_cluster(
    cli: Cli, namespace: str, kubeconfig: Path, tmp_path: Path
) -> None:
    config: dict[str, Any] = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(yaml.safe_dump(config))
    env = {**cli.env, "KUBECONFIG": str(dead)}
    for args in (
        ["schedules", "list"],
        ["schedules", "get", "x"],
        ["schedules", "create", "x", "--task", "t", "--cron", "@daily"],
        ["schedules", "delete", "x"],
    ):
        started = time.monotonic()
        result = cli(*args, "-n", namespace, env=env)
        assert result.returncode == 4, (args, result.stderr)
        assert "did not answer" in result.stderr
        assert time.monotonic() - started < 30
    # Bad input is found before the cluster is asked.
    bad = cli("schedules", "create", "x", "--task", "t", "--cron", "61 * * * *", env=env)
    assert bad.returncode == 2 and "not a valid cron expression" in bad.stderr
