"""The ``podtask`` command with an in-memory API: outputs, JSON, exit codes, bad input.
Also the pieces of ``podtask dev`` that need no cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import podtask.cli as cli
from podtask import Client, protocol, schedules
from podtask.cli._render import moment
from podtask.dev import DevSession, session_id, task_manifest_for_dev
from podtask.errors import ClusterUnreachableError
from podtask.project import Applied, apply_manifests, find_project, load_project, prune

# Relative: the same module object pytest collected, whatever name it gave it.
from .test_trigger import FakeKube

NS = "default"


@pytest.fixture(autouse=True)
def _outside_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        protocol.ENV_RUN_NAME,
        protocol.ENV_NAMESPACE,
        protocol.ENV_ATTEMPT,
        "PODTASK_NAMESPACE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    fake = FakeKube()
    fake.add_task("hello.world", NS)
    made: list[dict[str, Any]] = []

    def factory(*, kubeconfig: Path | None, context: str | None, namespace: str | None) -> Client:
        made.append({"kubeconfig": kubeconfig, "context": context, "namespace": namespace})
        return Client(backend=fake, namespace=namespace or NS)

    monkeypatch.setattr(cli, "client_factory", factory)
    fake.factory_calls = made  # type: ignore[attr-defined]
    return fake


runner = CliRunner()


def run(*args: str, input: str | None = None) -> Any:
    return runner.invoke(cli.app, list(args), input=input)


# --------------------------------------------------------------------------- basics


def test_version_and_help() -> None:
    assert run("version").stdout.strip() == podtask_version()
    result = run("--help")
    assert result.exit_code == 0
    for command in ("init", "deploy", "dev", "trigger", "runs", "tokens", "schedules"):
        assert command in result.stdout
    assert run("runs").exit_code == 2  # a group without a command shows help
    assert run("schedules").exit_code == 2
    assert run("no-such-command").exit_code == 2


def podtask_version() -> str:
    import podtask

    return podtask.__version__


# --------------------------------------------------------------------------- trigger


def test_trigger_prints_the_run_and_sends_every_option(kube: FakeKube) -> None:
    result = run(
        "trigger",
        "hello.world",
        '{"name": "Ada"}',
        "--idempotency-key",
        "k1",
        "--idempotency-key-ttl",
        "1h",
        "--concurrency-key",
        "c",
        "--queue",
        "q",
        "--delay",
        "5m",
        "--ttl",
        "10m",
        "--tag",
        "a",
        "-t",
        "b",
        "--metadata",
        '{"m": 1}',
        "--machine",
        "micro",
        "--max-attempts",
        "4",
        "--max-duration",
        "1m",
        "--priority",
        "9",
    )
    assert result.exit_code == 0, result.output
    (made,) = kube.runs(NS)
    name = made["metadata"]["name"]
    assert result.stdout.strip() == f"Triggered run {name} of task hello.world in namespace {NS}"
    assert made["spec"] == {
        "task": "hello.world",
        "payload": {"name": "Ada"},
        "idempotencyKey": "k1",
        "idempotencyKeyScope": "global",
        "idempotencyKeyTTL": "1h",
        "concurrencyKey": "c",
        "queue": "q",
        "delay": "5m",
        "ttl": "10m",
        "tags": ["a", "b"],
        "metadata": {"m": 1},
        "machine": "micro",
        "maxAttempts": 4,
        "maxDuration": "1m",
        "priority": 9,
    }
    again = run("trigger", "hello.world", "{}", "--idempotency-key", "k1", "-o", "json")
    assert again.exit_code == 0
    assert json.loads(again.stdout) == {
        "id": name,
        "namespace": NS,
        "task": "hello.world",
        "isCached": True,
    }


def test_trigger_payload_from_file_and_stdin(kube: FakeKube, tmp_path: Path) -> None:
    path = tmp_path / "payload.json"
    path.write_text('{"from": "file"}')
    assert run("trigger", "hello.world", "--payload-file", str(path)).exit_code == 0
    assert run("trigger", "hello.world", "-f", "-", input='{"from": "stdin"}').exit_code == 0
    assert sorted(r["spec"]["payload"]["from"] for r in kube.runs(NS)) == ["file", "stdin"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["trigger", "hello.world", "{bad"], 2, "the payload is not valid JSON"),
        (["trigger", "hello.world", "{}", "--metadata", "[1]"], 2, "must be a JSON object"),
        (["trigger", "hello.world", "{}", "--delay", "soon"], 2, "is not a duration"),
        (["trigger", "hello.world", "{}", "--machine", "huge"], 2, "machine"),
        (["trigger", "hello.world", "{}", "-f", "x.json"], 2, "not both"),
        (["trigger", "hello.world", "-f", "/no/such/file.json"], 2, "cannot read"),
        (["trigger", "no.such.task", "{}"], 3, "no task 'no.such.task' is deployed"),
        (["trigger", "hello.world", "{}", "--max-attempts", "lots"], 2, "Invalid value"),
    ],
)
def test_trigger_bad_input(kube: FakeKube, args: list[str], code: int, message: str) -> None:
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert kube.runs(NS) == []


def test_errors_are_json_with_json_output(kube: FakeKube) -> None:
    result = run("trigger", "no.such.task", "{}", "-o", "json")
    assert result.exit_code == 3
    assert json.loads(result.stderr)["error"]["type"] == "TaskNotDeployed"
    assert result.stdout == ""


def test_unreachable_cluster_exits_4(kube: FakeKube) -> None:
    kube.unreachable = True
    for args in (
        ["trigger", "hello.world", "{}"],
        ["runs", "list"],
        ["runs", "get", "x"],
        ["schedules", "list"],
        ["schedules", "get", "x"],
        ["schedules", "create", "x", "--task", "t", "--cron", "@daily"],
        ["schedules", "delete", "x"],
    ):
        result = run(*args)
        assert result.exit_code == 4, args
        assert "did not answer" in result.stderr


def test_missing_credentials_exit_4(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The real factory, with a kubeconfig that does not exist.
    monkeypatch.setattr(cli, "client_factory", cli._default_client_factory)
    result = run("runs", "list", "--kubeconfig", str(tmp_path / "missing"))
    assert result.exit_code == 4
    assert "no Kubernetes credentials" in result.stderr


def test_trigger_wait_prints_the_outcome_and_exit_code(kube: FakeKube) -> None:
    def complete_first(fake: FakeKube) -> None:
        for (plural, namespace, name), obj in list(fake.objects.items()):
            if plural == "taskruns" and not obj.get("status"):
                payload = obj["spec"].get("payload") or {}
                if payload.get("fail"):
                    fake.set_status(
                        namespace,
                        name,
                        phase="Failed",
                        error={"type": "ValueError", "message": "nope"},
                    )
                else:
                    fake.set_status(namespace, name, phase="Completed", output={"greeting": "hi"})

    kube.on_watch = complete_first
    ok = run("trigger", "hello.world", "{}", "--wait", "-o", "json")
    assert ok.exit_code == 0, ok.output
    body = json.loads(ok.stdout)
    assert body["phase"] == "Completed" and body["output"] == {"greeting": "hi"}
    failed = run("trigger", "hello.world", '{"fail": true}', "--wait")
    assert failed.exit_code == 5
    assert "Failed" in failed.stdout and "ValueError: nope" in failed.stdout
    kube.on_watch = None
    slow = run("trigger", "hello.world", "{}", "--wait", "--timeout", "0.2")
    assert slow.exit_code == 6 and "did not end within" in slow.stderr


def test_namespace_and_kubeconfig_reach_the_client(kube: FakeKube, tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    kube.add_task("hello.world", "other")
    result = run(
        "trigger",
        "hello.world",
        "{}",
        "-n",
        "other",
        "--kubeconfig",
        str(config),
        "--context",
        "ctx",
    )
    assert result.exit_code == 0, result.output
    assert kube.factory_calls[-1] == {  # type: ignore[attr-defined]
        "kubeconfig": config,
        "context": "ctx",
        "namespace": "other",
    }
    assert len(kube.runs("other")) == 1


# --------------------------------------------------------------------------- runs


def _seed(kube: FakeKube) -> list[str]:
    names = []
    for i, (phase, tags) in enumerate(
        [("Completed", ["eu"]), ("Failed", ["us"]), ("Executing", ["eu"])]
    ):
        kube.now = kube.now.replace(minute=i)
        obj = kube.create(
            "taskruns",
            NS,
            {"metadata": {"name": f"run-{i}"}, "spec": {"task": "hello.world", "tags": tags}},
        )
        kube.set_status(NS, obj["metadata"]["name"], phase=phase, attempt=1, duration="3s")
        names.append(obj["metadata"]["name"])
    return names


def test_runs_list_table_json_and_filters(kube: FakeKube) -> None:
    _seed(kube)
    table = run("runs", "list")
    assert table.exit_code == 0
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["NAME", "TASK", "STATUS", "ATTEMPT"]
    assert [line.split()[0] for line in lines[1:]] == ["run-2", "run-1", "run-0"]
    assert "Executing" in lines[1] and "eu" in lines[1]
    failed = run("runs", "list", "--status", "FAILED", "-o", "json")
    assert [r["metadata"]["name"] for r in json.loads(failed.stdout)] == ["run-1"]
    tagged = run("runs", "list", "--tag", "eu", "--limit", "1", "-o", "yaml")
    assert [r["metadata"]["name"] for r in yaml.safe_load_all(tagged.stdout)] == ["run-2"]
    assert run("runs", "list", "--task", "other").stdout.strip() == "no runs found"
    assert run("runs", "list", "--status", "done").exit_code == 2
    assert run("runs", "list", "--from", "yesterday").exit_code == 2
    assert run("runs", "list", "--since", "1d").exit_code == 0


def test_runs_get_shows_status_metadata_and_output(kube: FakeKube) -> None:
    _seed(kube)
    kube.set_status(NS, "run-0", output={"greeting": "Hello"}, metadata={"progress": 1})
    shown = run("runs", "get", "run-0")
    assert shown.exit_code == 0
    for text in ("run-0", "hello.world", "Completed", "Progress", "100%", '"greeting": "Hello"'):
        assert text in shown.stdout
    as_json = json.loads(run("runs", "get", "run-0", "-o", "json").stdout)
    assert as_json["status"]["output"] == {"greeting": "Hello"}
    missing = run("runs", "get", "nope")
    assert missing.exit_code == 3 and "no run 'nope'" in missing.stderr


def test_runs_logs(kube: FakeKube) -> None:
    _seed(kube)
    kube.set_status(NS, "run-2", attempts=[{"number": 1, "pod": "run-2-1"}])
    kube.pods[(NS, "run-2-1")] = {"status": {"phase": "Running"}}
    kube.logs["run-2-1"] = ["line one", "line two"]
    result = run("runs", "logs", "run-2")
    assert result.exit_code == 0 and result.stdout == "line one\nline two\n"
    gone = run("runs", "logs", "run-0")
    assert gone.exit_code == 3 and "no pod" in gone.stderr


def test_runs_watch_lines_json_and_exit_codes(kube: FakeKube) -> None:
    _seed(kube)

    def progress(fake: FakeKube) -> None:
        fake.on_watch = None
        fake.set_status(NS, "run-2", metadata={"progress": 0.5})
        fake.set_status(NS, "run-2", metadata={"progress": 1.0})
        fake.set_status(NS, "run-2", phase="Completed", output=["done"])

    kube.on_watch = progress
    watched = run("runs", "watch", "run-2")
    assert watched.exit_code == 0, watched.output
    lines = watched.stdout.strip().splitlines()
    assert lines[0].startswith("run-2 Executing attempt=1")
    assert '"progress": 0.5' in lines[1] and '"progress": 1.0' in lines[2]
    assert lines[3].startswith("run-2 Completed") and lines[4] == '["done"]'
    failed = run("runs", "watch", "run-1", "-o", "json")
    assert failed.exit_code == 5
    assert json.loads(failed.stdout.splitlines()[0])["status"]["phase"] == "Failed"
    kube.create("taskruns", NS, {"metadata": {"name": "stuck"}, "spec": {"task": "hello.world"}})
    assert run("runs", "watch", "stuck", "--timeout", "0.2").exit_code == 6


def test_runs_cancel_and_replay(kube: FakeKube) -> None:
    _seed(kube)
    canceled = run("runs", "cancel", "run-2")
    assert canceled.exit_code == 0 and canceled.stdout.strip() == "cancel requested for run run-2"
    assert kube.get("taskruns", NS, "run-2")["spec"]["cancel"] is True
    ended = run("runs", "cancel", "run-0")
    assert ended.exit_code == 0 and "already ended Completed" in ended.stdout
    assert "cancel" not in kube.get("taskruns", NS, "run-0")["spec"]
    assert run("runs", "cancel", "ghost").exit_code == 3
    replayed = run("runs", "replay", "run-1", "-o", "json")
    assert replayed.exit_code == 0
    body = json.loads(replayed.stdout)
    assert body["spec"]["replayOf"] == "run-1" and body["metadata"]["name"].startswith(
        "run-1-replay-"
    )
    assert run("runs", "replay", "ghost").exit_code == 3


def test_tokens_complete(kube: FakeKube) -> None:
    kube.create("waittokens", NS, {"metadata": {"name": "approval"}, "spec": {}})
    done = run("tokens", "complete", "approval", "--output-json", '{"ok": true}')
    assert done.exit_code == 0 and "completed wait token approval" in done.stdout
    assert kube.get("waittokens", NS, "approval")["status"]["output"] == {"ok": True}
    again = run("tokens", "complete", "approval", "--output-json", "{}")
    assert again.exit_code == 1 and "already" in again.stderr
    assert run("tokens", "complete", "nope").exit_code == 3
    assert run("tokens", "complete", "approval", "--output-json", "{").exit_code == 2


# --------------------------------------------------------------------------- schedules


def _schedule(kube: FakeKube, name: str, namespace: str = NS) -> dict[str, Any]:
    return kube.get("schedules", namespace, name)


def _schedules(kube: FakeKube) -> list[str]:
    return sorted(n for (p, _, n) in kube.objects if p == "schedules")


def test_schedules_create_sends_every_option_validated(kube: FakeKube) -> None:
    result = run(
        "schedules",
        "create",
        "nightly",
        "--task",
        "hello.world",
        "--cron",
        "0 2 * * 1-5",
        "--timezone",
        "Europe/Berlin",
        "--payload",
        '{"format": "html"}',
        "--external-id",
        "customer-42",
        "--dedup",
        "nightly-42",
        "--suspend",
        "--concurrency-policy",
        "forbid",
        "--missed-run-policy",
        "RunOnce",
        "--starting-deadline-seconds",
        "600",
        "--successful-runs-history-limit",
        "5",
        "--failed-runs-history-limit",
        "2",
        "--queue",
        "reports",
        "--machine",
        "small-2x",
        "-t",
        "a",
        "--tag",
        "b",
        "--ttl",
        "1h",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"created schedule nightly in namespace {NS}"
    assert result.stderr == ""  # hello.world is deployed: no warning
    body = _schedule(kube, "nightly")
    assert body["apiVersion"] == "podtask.dev/v1alpha1" and body["kind"] == "Schedule"
    assert body["metadata"]["labels"] == {
        "podtask.dev/schedule-type": "imperative",
        "podtask.dev/deduplication-key": "nightly-42",
        "podtask.dev/external-id": "customer-42",
    }
    assert body["spec"] == {
        "task": "hello.world",
        "cron": "0 2 * * 1-5",
        "timezone": "Europe/Berlin",
        "externalId": "customer-42",
        "deduplicationKey": "nightly-42",
        "payload": {"format": "html"},
        "suspend": True,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 600,
        "missedRunPolicy": "RunOnce",
        "successfulRunsHistoryLimit": 5,
        "failedRunsHistoryLimit": 2,
        "queue": "reports",
        "machine": "small-2x",
        "tags": ["a", "b"],
        "ttl": "1h",
    }


def test_schedules_create_defaults_json_and_a_missing_task(kube: FakeKube) -> None:
    result = run(
        "schedules",
        "create",
        "digest",
        "--task",
        "reports.digest",
        "--cron",
        "@daily",
        "-o",
        "json",
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["metadata"]["name"] == "digest" and body["metadata"]["namespace"] == NS
    assert body["spec"]["timezone"] == "UTC" and body["spec"]["suspend"] is False
    assert body["spec"]["concurrencyPolicy"] == "Allow"
    assert body == _schedule(kube, "digest")
    # In a table the user hears that the task is not deployed (ticks wait for it).
    other = run("schedules", "create", "digest-2", "--task", "reports.digest", "--cron", "@daily")
    assert other.exit_code == 0
    assert "no task 'reports.digest' is deployed" in other.stderr
    assert _schedules(kube) == ["digest", "digest-2"]


def test_schedules_create_again_conflicts_unless_the_key_matches(kube: FakeKube) -> None:
    base = ["schedules", "create", "remind", "--task", "hello.world"]
    assert run(*base, "--cron", "0 9 * * *", "--dedup", "user-1").exit_code == 0
    updated = run(*base, "--cron", "30 9 * * *", "--dedup", "user-1")
    assert updated.exit_code == 0, updated.output
    assert updated.stdout.strip() == f"updated schedule remind in namespace {NS}"
    assert _schedule(kube, "remind")["spec"]["cron"] == "30 9 * * *"
    for extra in (["--dedup", "user-2"], []):
        clash = run(*base, "--cron", "0 0 * * *", *extra)
        assert clash.exit_code == 1, extra
        assert "schedule 'remind' already exists in namespace 'default'" in clash.stderr
    as_json = run(*base, "--cron", "0 0 * * *", "-o", "json")
    assert json.loads(as_json.stderr)["error"]["type"] == "KubernetesApiError"
    assert _schedule(kube, "remind")["spec"]["cron"] == "30 9 * * *"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "61 * * * *"], "'61 * * * *' is not a valid cron expression"),
        (["--cron", "* * *"], "has 3 fields"),
        (["--cron", "@reboot"], "'@reboot' is not a valid cron expression"),
        (["--cron", "0 0 32 * *"], "'0 0 32 * *' is not a valid cron expression"),
        (["--cron", "@daily", "--timezone", "Europe/Berln"], "'Europe/Berln' is not an IANA"),
        (["--cron", "@daily", "--payload", "{bad"], "--payload is not valid JSON"),
        (["--cron", "@daily", "--payload", "[1, 2]"], "--payload must be a JSON object"),
        (["--cron", "@daily", "--machine", "huge"], "machine"),
        (["--cron", "@daily", "--ttl", "soon"], "is not a duration"),
        (["--cron", "@daily", "--failed-runs-history-limit", "-1"], "greater than or equal to 0"),
        (["--cron", "@daily", "--queue", "Bad_Queue"], "queue: String should match pattern"),
        (["--cron", "@daily", "--concurrency-policy", "Sometimes"], "Invalid value"),
        (["--cron", "@daily", "--name-is-missing"], "No such option"),
    ],
)
def test_schedules_create_bad_input_exits_2_and_creates_nothing(
    kube: FakeKube, args: list[str], message: str
) -> None:
    result = run("schedules", "create", "nightly", "--task", "hello.world", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert _schedules(kube) == []


def test_schedules_create_checks_before_calling_the_cluster(kube: FakeKube) -> None:
    kube.unreachable = True  # any call would be exit code 4
    bad_name = run("schedules", "create", "Nightly_Run", "--task", "t", "--cron", "@daily")
    assert bad_name.exit_code == 2 and "invalid schedule name 'Nightly_Run'" in bad_name.stderr
    bad_cron = run("schedules", "create", "n", "--task", "t", "--cron", "61 * * * *", "-o", "json")
    assert bad_cron.exit_code == 2 and bad_cron.stdout == ""
    assert json.loads(bad_cron.stderr)["error"]["type"] == "UsageError"
    good = run("schedules", "create", "n", "--task", "t", "--cron", "@daily")
    assert good.exit_code == 4 and "did not answer" in good.stderr


def _seed_schedules(kube: FakeKube) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    for name, task, cron, zone in (
        ("b-daily", "hello.world", "0 8 * * *", "Europe/Berlin"),
        ("a-hourly", "other.task", "0 * * * *", "UTC"),
        ("c-broken", "hello.world", "*/5 * * * *", "UTC"),
    ):
        made = run("schedules", "create", name, "--task", task, "--cron", cron, "--tz", zone)
        assert made.exit_code == 0, made.output
    schedule = kube.objects[("schedules", NS, "b-daily")]
    schedule["status"] = {
        "nextScheduleTime": (now + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastScheduleTime": (now - timedelta(minutes=21)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastRuns": [
            {
                "name": "b-daily-1700000000",
                "scheduledTime": "2023-11-14T22:13:20Z",
                "phase": "Completed",
            }
        ],
        "missedRuns": 2,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Scheduled"}],
    }
    kube.objects[("schedules", NS, "a-hourly")]["spec"]["suspend"] = True
    kube.objects[("schedules", NS, "c-broken")]["status"] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "TaskNotFound",
                "message": "no Task 'hello.world'",
            }
        ]
    }


def test_schedules_list_table_json_and_filters(kube: FakeKube) -> None:
    _seed_schedules(kube)
    table = run("schedules", "list")
    assert table.exit_code == 0, table.output
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == [
        "NAME", "TASK", "CRON", "TIMEZONE", "STATUS", "NEXT", "RUN", "LAST", "RUN", "AGE"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["a-hourly", "b-daily", "c-broken"]
    hourly, daily, broken = lines[1:]
    assert "other.task" in hourly and "0 * * * *" in hourly and "Suspended" in hourly
    assert "Europe/Berlin" in daily and "Active" in daily
    assert "(in 2h)" in daily or "(in 3h)" in daily
    assert "(21m ago)" in daily
    assert "TaskNotFound" in broken
    as_json = json.loads(run("schedules", "list", "--task", "hello.world", "-o", "json").stdout)
    assert [s["metadata"]["name"] for s in as_json] == ["b-daily", "c-broken"]
    assert as_json[0]["status"]["missedRuns"] == 2
    assert run("schedules", "list", "--task", "nope").stdout.strip() == "no schedules found"
    assert run("schedules", "list", "-n", "elsewhere").stdout.strip() == "no schedules found"
    everywhere = run("schedules", "list", "-A")
    assert everywhere.stdout.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert run("schedules", "list", "-o", "yaml").stdout.count("kind: Schedule") == 3


def test_schedules_get_shows_the_spec_status_and_recent_runs(kube: FakeKube) -> None:
    _seed_schedules(kube)
    shown = run("schedules", "get", "b-daily")
    assert shown.exit_code == 0, shown.output
    for text in (
        f"{NS}/b-daily",
        "hello.world",
        "0 8 * * *",
        "Europe/Berlin",
        "Active",
        "Next run",
        "b-daily-1700000000",
        "2023-11-14T22:13:20Z",
        "Completed",
    ):
        assert text in shown.stdout, text
    assert re.search(r"Missed runs +2 ", shown.stdout)
    assert re.search(r"Last run +\S+Z \(21m ago\), \S+ \S+ CES?T in Europe/Berlin", shown.stdout)
    broken = run("schedules", "get", "c-broken")
    assert "TaskNotFound" in broken.stdout and "no Task 'hello.world'" in broken.stdout
    assert (
        json.loads(run("schedules", "get", "a-hourly", "-o", "json").stdout)["spec"]
        == (_schedule(kube, "a-hourly")["spec"])
    )
    missing = run("schedules", "get", "nope")
    assert missing.exit_code == 3 and "no schedule 'nope' in namespace 'default'" in missing.stderr
    as_json = run("schedules", "get", "nope", "-o", "json")
    assert json.loads(as_json.stderr)["error"]["type"] == "ScheduleNotFound"


def test_schedules_delete(kube: FakeKube) -> None:
    _seed_schedules(kube)
    deleted = run("schedules", "delete", "a-hourly")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout.strip() == f"deleted schedule a-hourly in namespace {NS}"
    assert _schedules(kube) == ["b-daily", "c-broken"]
    as_json = run("schedules", "delete", "b-daily", "-o", "json")
    assert json.loads(as_json.stdout) == {
        "kind": "Schedule",
        "namespace": NS,
        "name": "b-daily",
        "action": "deleted",
    }
    again = run("schedules", "delete", "a-hourly")
    assert again.exit_code == 3
    assert "error: no schedule 'a-hourly' in namespace 'default'" in again.stderr
    elsewhere = run("schedules", "delete", "c-broken", "-n", "other", "-o", "json")
    assert elsewhere.exit_code == 3
    assert json.loads(elsewhere.stderr)["error"]["type"] == "ScheduleNotFound"
    assert _schedules(kube) == ["c-broken"]


def test_schedules_sdk_with_a_client(kube: FakeKube) -> None:
    client = Client(backend=kube, namespace=NS)
    made = schedules.create(
        "hello.world", "0 9 * * 1-5", "reminder-user-7", external_id="user-7", client=client
    )
    assert made.metadata.name == schedules.schedule_name("reminder-user-7")
    name = made.metadata.name or ""
    again = schedules.create("hello.world", "0 10 * * *", "reminder-user-7", client=client)
    assert again.metadata.name == name and again.spec.cron == "0 10 * * *"
    assert "podtask.dev/external-id" not in (again.metadata.labels or {})
    assert [s.metadata.name for s in schedules.list(task="hello.world", client=client)] == [name]
    assert schedules.deactivate(name, client=client).spec.suspend is True
    assert schedules.activate(name, client=client).spec.suspend is False
    assert schedules.update(name, timezone="Asia/Tokyo", client=client).spec.timezone == (
        "Asia/Tokyo"
    )
    with pytest.raises(ValueError, match="needs a deduplication_key or a name"):
        schedules.create("hello.world", "@daily", client=client)
    schedules.delete(name, client=client)
    schedules.delete(name, client=client)  # missing_ok by default
    for call in (
        lambda: schedules.retrieve(name, client=client),
        lambda: schedules.delete(name, missing_ok=False, client=client),
        lambda: schedules.update(name, cron="@daily", client=client),
        lambda: schedules.activate(name, client=client),
    ):
        with pytest.raises(schedules.ScheduleNotFoundError, match=f"no schedule '{name}'"):
            call()


def test_moment_says_how_far_off_a_time_is() -> None:
    now = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
    assert moment(now + timedelta(hours=3, minutes=5), now) == "2026-11-24T10:05:00Z (in 3h)"
    assert moment(now - timedelta(seconds=42), now) == "2026-11-24T06:59:18Z (42s ago)"
    assert moment(None, now) == ""


# --------------------------------------------------------------------------- init / deploy


def test_init_scaffolds_a_project_once(tmp_path: Path) -> None:
    target = tmp_path / "My Tasks"
    result = run("init", str(target))
    assert result.exit_code == 0, result.output
    for name in ("podtask.toml", "tasks/example.py", "tasks/__init__.py", "Dockerfile"):
        assert (target / name).is_file()
        assert f"created {name}" in result.stdout
    project = load_project(target)
    assert project.name == "my-tasks" and project.dirs == ("tasks",)
    again = run("init", str(target))
    assert again.exit_code == 2 and "already exist" in again.stderr
    assert run("init", str(target), "--force").exit_code == 0
    assert run("init", str(tmp_path / "x"), "--name", "Bad_Name").exit_code == 2


def test_deploy_emits_task_manifests_for_gitops(tmp_path: Path) -> None:
    run("init", str(tmp_path))
    (tmp_path / "tasks" / "nightly.py").write_text(
        "from podtask import schedules\n\n"
        "@schedules.task(id='example.nightly', cron='0 2 * * *', timezone='Europe/Berlin')\n"
        "def nightly(payload: schedules.ScheduledPayload) -> None:\n"
        "    pass\n"
    )
    result = run(
        "deploy",
        "--project",
        str(tmp_path),
        "--image",
        "reg/app:1.2",
        "--version",
        "1.2",
        "--env",
        "LOG_LEVEL=debug",
    )
    assert result.exit_code == 0, result.output
    documents = list(yaml.safe_load_all(result.stdout))
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in documents)
    assert kinds == [
        ("Schedule", "example.nightly"),
        ("Task", "example.hello"),
        ("Task", "example.nightly"),
    ]
    hello = next(d for d in documents if d["metadata"]["name"] == "example.hello")
    assert hello["spec"]["image"] == "reg/app:1.2" and hello["spec"]["version"] == "1.2"
    assert hello["spec"]["entrypoint"] == "tasks.example:hello"
    assert hello["spec"]["machine"] == "micro"
    assert hello["spec"]["env"] == [{"name": "LOG_LEVEL", "value": "debug"}]
    assert hello["metadata"]["labels"]["podtask.dev/project"] == tmp_path.name.lower().replace(
        "_", "-"
    )
    schedule = next(d for d in documents if d["kind"] == "Schedule")
    assert schedule["spec"]["cron"] == "0 2 * * *"
    as_json = json.loads(
        run("deploy", "--project", str(tmp_path), "--image", "i", "-o", "json").stdout
    )
    assert {d["metadata"]["name"] for d in as_json} == {"example.hello", "example.nightly"}


def test_deploy_apply_creates_then_updates_and_prunes(kube: FakeKube, tmp_path: Path) -> None:
    run("init", str(tmp_path), "--name", "demo")
    args = ["deploy", "--project", str(tmp_path), "--image", "demo:1", "--version", "1", "--apply"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "task/example.hello created" in first.stdout
    assert "1 task(s), 0 schedule(s) in namespace default" in first.stdout
    assert run(*args).stdout.startswith("task/example.hello unchanged")
    changed = run(*args[:-2], "2", "--apply", "-o", "json")
    assert json.loads(changed.stdout) == [
        {"kind": "Task", "name": "example.hello", "action": "configured"}
    ]
    assert kube.get("tasks", NS, "example.hello")["spec"]["version"] == "2"
    # A task removed from the code goes with --prune; other projects' Tasks stay.
    kube.create(
        "tasks",
        NS,
        {"metadata": {"name": "old.task", "labels": {"podtask.dev/project": "demo"}}, "spec": {}},
    )
    pruned = run(*args, "--prune")
    assert "task/old.task deleted" in pruned.stdout
    assert ("tasks", NS, "hello.world") in kube.objects


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", ["--image", "i"], "no podtask.toml"),
        ("init", [], "no image"),
        ("empty", ["--image", "i"], "no tasks found"),
        ("broken", ["--image", "i"], "importing module tasks.broken failed: ZeroDivisionError"),
        ("badconfig", ["--image", "i"], "cannot read"),
        ("init", ["--image", "i", "--env", "NOEQUALS"], "NAME=VALUE"),
    ],
)
def test_deploy_bad_projects_exit_2(
    tmp_path: Path, setup: str, args: list[str], message: str
) -> None:
    if setup != "none":
        run("init", str(tmp_path))
    if setup == "empty":
        (tmp_path / "tasks" / "example.py").unlink()
    if setup == "broken":
        (tmp_path / "tasks" / "broken.py").write_text("1 / 0\n")
    if setup == "badconfig":
        (tmp_path / "podtask.toml").write_text("[project\n")
    result = run("deploy", "--project", str(tmp_path), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_find_project_walks_up(tmp_path: Path) -> None:
    run("init", str(tmp_path))
    assert find_project(tmp_path / "tasks").root == tmp_path.resolve()


def test_apply_manifests_merges_labels_and_retries(kube: FakeKube) -> None:
    manifest = {
        "apiVersion": "podtask.dev/v1alpha1",
        "kind": "Task",
        "metadata": {"name": "t", "labels": {"podtask.dev/project": "p"}},
        "spec": {"image": "a"},
    }
    assert apply_manifests(kube, NS, [manifest]) == [Applied("Task", "t", "created")]
    kube.patch("tasks", NS, "t", {"metadata": {"labels": {"owner": "me"}}})
    changed = {**manifest, "spec": {"image": "b"}}
    assert apply_manifests(kube, NS, [changed]) == [Applied("Task", "t", "configured")]
    stored = kube.get("tasks", NS, "t")
    assert stored["spec"] == {"image": "b"}
    assert stored["metadata"]["labels"] == {"podtask.dev/project": "p", "owner": "me"}
    assert prune(kube, NS, "p", [changed]) == []
    assert prune(kube, NS, "p", []) == [Applied("Task", "t", "deleted")]


# --------------------------------------------------------------------------- dev


def _dev_pod(
    session: str, name: str = "run-a-1", phase: str = "Running", **extra_env: str
) -> dict[str, Any]:
    env = [
        {"name": protocol.ENV_API_URL, "value": "http://in-cluster:8080"},
        {"name": protocol.ENV_TOKEN, "value": "tok"},
        {"name": protocol.ENV_NAMESPACE, "value": NS},
        {"name": protocol.ENV_RUN_NAME, "value": "run-a"},
        {"name": protocol.ENV_ATTEMPT, "value": "1"},
        {"name": protocol.ENV_ENTRYPOINT, "value": "tasks.example:hello"},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": protocol.ENV_DEV_SESSION, "value": session},
        *({"name": k, "value": v} for k, v in extra_env.items()),
    ]
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {"containers": [{"name": "task", "env": env}]},
        "status": {"phase": phase},
    }


FAKE_RUNNER = """\
import json, os, signal, sys, time
out = {k: os.environ.get(k) for k in ("PODTASK_API_URL", "PODTASK_RUN_TOKEN", "FROM_SECRET",
                                      "PODTASK_DEV_SESSION")}
out["cwd"] = os.getcwd()
out["pythonpath"] = os.environ.get("PYTHONPATH", "")
print(json.dumps(out), flush=True)
if os.environ.get("HANG"):
    signal.signal(signal.SIGTERM, lambda *_: (print("on_cancel ran", flush=True), sys.exit(143)))
    time.sleep(60)
"""


@pytest.fixture
def dev_project(tmp_path: Path) -> Path:
    run("init", str(tmp_path / "proj"))
    return tmp_path / "proj"


def _session(dev_project: Path, kube: FakeKube, tmp_path: Path) -> tuple[DevSession, list[str]]:
    fake_python = tmp_path / "fake-python"
    # Stands in for `python -m podtask.runner`: report what the local attempt was given.
    fake_python.write_text(f"#!{sys.executable}\n" + FAKE_RUNNER)
    fake_python.chmod(0o755)
    lines: list[str] = []
    session = DevSession(
        load_project(dev_project),
        kube,
        NS,
        emit=lines.append,
        api_url="http://127.0.0.1:9999",
        python=str(fake_python),
    )
    return session, lines


def _wait(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_dev_runs_an_attempt_locally_with_the_pods_identity(
    dev_project: Path, kube: FakeKube, tmp_path: Path
) -> None:
    import base64

    session, lines = _session(dev_project, kube, tmp_path)
    kube.secrets[(NS, "s")] = {"k": base64.b64encode(b"shh").decode()}
    session.on_pod("ADDED", _dev_pod("someone-else"))
    session.on_pod("ADDED", _dev_pod(session.session, phase="Pending"))
    assert session.attempts == {}
    session.on_pod("MODIFIED", _dev_pod(session.session))
    _wait(lambda: "run-a-1" in kube.deleted_pods)
    reported = json.loads(next(line.split("| ", 1)[1] for line in lines if "| {" in line))
    assert reported["PODTASK_API_URL"] == "http://127.0.0.1:9999"
    assert reported["PODTASK_RUN_TOKEN"] == "tok" and reported["FROM_SECRET"] == "shh"
    assert reported["PODTASK_DEV_SESSION"] is None  # the local runner runs, it does not relay
    assert Path(reported["cwd"]) == dev_project.resolve()
    assert reported["pythonpath"].split(os.pathsep)[0] == str(dev_project.resolve())
    assert any("local attempt exited with 0" in line for line in lines)
    # The same pod is never run twice.
    session.on_pod("MODIFIED", _dev_pod(session.session))
    assert session.attempts == {}


def test_dev_stops_the_local_attempt_when_its_pod_goes(
    dev_project: Path, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANG", "1")
    session, lines = _session(dev_project, kube, tmp_path)
    pod = _dev_pod(session.session)
    session.on_pod("ADDED", pod)
    _wait(lambda: any("| {" in line for line in lines))
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    session.on_pod("MODIFIED", pod)
    _wait(lambda: any("local attempt exited with 143" in line for line in lines))
    assert any("on_cancel ran" in line for line in lines)


def test_dev_marks_tasks_and_session_ids_are_stable(dev_project: Path) -> None:
    project = load_project(dev_project)
    assert session_id(project, "a") == session_id(project, "a") != session_id(project, "b")
    manifest = {
        "kind": "Task",
        "metadata": {"name": "t", "labels": {"x": "y"}},
        "spec": {"env": [{"name": "A", "value": "1"}]},
    }
    marked = task_manifest_for_dev(manifest, "s1")
    assert marked["metadata"]["labels"] == {"x": "y", "podtask.dev/dev-session": "s1"}
    assert marked["spec"]["env"] == [
        {"name": "A", "value": "1"},
        {"name": protocol.ENV_DEV_SESSION, "value": "s1"},
    ]
    assert manifest["spec"]["env"] == [{"name": "A", "value": "1"}]  # not mutated


def test_dev_syncs_tasks_and_reloads_on_change(dev_project: Path, kube: FakeKube) -> None:
    lines: list[str] = []
    session = DevSession(load_project(dev_project), kube, NS, emit=lines.append, poll_interval=0.1)
    session.sync()
    task_obj = kube.get("tasks", NS, "example.hello")
    assert task_obj["metadata"]["labels"]["podtask.dev/dev-session"] == session.session
    assert {"name": protocol.ENV_DEV_SESSION, "value": session.session} in task_obj["spec"]["env"]
    version = task_obj["spec"]["version"]
    assert version.startswith("dev-")
    import threading

    thread = threading.Thread(target=session._reload_loop, daemon=True)
    thread.start()
    try:
        example = dev_project / "tasks" / "example.py"
        example.write_text(example.read_text().replace('machine="micro"', 'machine="small-2x"'))
        _wait(lambda: any(line.startswith("reloaded") for line in lines), timeout=60)
    finally:
        session.stop()
        thread.join(5)
    updated = kube.get("tasks", NS, "example.hello")["spec"]
    assert updated["machine"] == "small-2x" and updated["version"] != version


def test_dev_command_reports_a_missing_project(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("dev")
    assert result.exit_code == 2 and "no podtask.toml" in result.stderr


def test_dev_command_stops_on_sigterm(kube: FakeKube, dev_project: Path) -> None:
    import threading

    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        result = run("dev", "--project", str(dev_project), "--poll-interval", "0.2")
    finally:
        timer.cancel()
    assert result.exit_code == 0, result.output
    assert "dev session" in result.stdout and "received SIGTERM; stopping" in result.stdout
    assert ("tasks", NS, "example.hello") in kube.objects


def test_unreachable_is_exit_4_for_every_command_that_needs_the_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreachable(**_: Any) -> Any:
        raise ClusterUnreachableError("no route to the API server")

    monkeypatch.setattr(cli, "client_factory", unreachable)
    for args in (
        ["runs", "list"],
        ["runs", "watch", "x"],
        ["runs", "cancel", "x"],
        ["runs", "replay", "x"],
        ["runs", "logs", "x"],
        ["tokens", "complete", "x"],
        ["schedules", "list"],
        ["schedules", "get", "x"],
        ["schedules", "create", "x", "--task", "t", "--cron", "@daily"],
        ["schedules", "delete", "x", "-o", "json"],
    ):
        result = run(*args)
        assert result.exit_code == 4, args
        assert "no route" in result.stderr
