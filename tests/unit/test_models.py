"""The v1alpha1 models: examples round-trip, invalid manifests fail naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from podtask.api import v1alpha1 as api
from podtask.api.machines import MACHINE_PRESETS, MachineName, next_larger

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VALID = sorted((EXAMPLES / "manifests").glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect-error: "), f"{path.name} must say which field is wrong"
    return first.removeprefix("# expect-error: ").strip()


def test_there_is_an_example_of_every_kind() -> None:
    kinds = {load(path)["kind"] for path in VALID}
    assert kinds == set(api.RESOURCES_BY_KIND)


def contains(whole: Any, part: Any) -> bool:
    """Every key and value of ``part`` is in ``whole`` (defaults may be added)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and contains(whole[key], value) for key, value in part.items()
        )
    return bool(whole == part)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_example_round_trips(path: Path) -> None:
    manifest = load(path)
    resource = api.parse(manifest)
    wire = resource.to_wire()
    assert contains(wire, manifest), wire
    assert api.parse(wire) == resource


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_naming_the_field(path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        api.parse(load(path))
    assert expected_field(path) in str(caught.value)


def spec_error(kind: type[api.Resource], spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        kind.model_validate(
            {
                "apiVersion": api.API_VERSION,
                "kind": kind.kind_name,
                "metadata": {"name": "x"},
                "spec": spec,
            }
        )
    return str(caught.value)


def test_idempotency_key_is_limited_to_2048_characters() -> None:
    api.TaskRunSpec(task="t", idempotency_key="k" * 2048)
    assert "idempotencyKey" in spec_error(api.TaskRun, {"task": "t", "idempotencyKey": "k" * 2049})


def test_inline_payload_is_limited() -> None:
    big = {"blob": "x" * api.MAX_INLINE_PAYLOAD_BYTES}
    message = spec_error(api.TaskRun, {"task": "t", "payload": big})
    assert "payload" in message and "limit" in message


def test_metadata_is_limited_to_256_kib() -> None:
    message = spec_error(api.TaskRun, {"task": "t", "metadata": {"m": "x" * (256 * 1024)}})
    assert "metadata" in message


def test_unknown_spec_field_is_refused() -> None:
    assert "payloadd" in spec_error(api.TaskRun, {"task": "t", "payloadd": 1})


def test_tags_must_be_unique() -> None:
    assert "unique" in spec_error(api.TaskRun, {"task": "t", "tags": ["a", "a"]})


def test_python_names_and_wire_names_both_work() -> None:
    spec = api.TaskRunSpec(task="t", idempotency_key_ttl="1h", delay_until=None)
    assert spec.to_wire() == {"task": "t", "idempotencyKeyTTL": "1h", "tags": []}
    again = api.TaskRunSpec.model_validate({"task": "t", "idempotencyKeyTTL": "1h"})
    assert again == spec


def test_task_defaults_follow_trigger_dev() -> None:
    spec = api.TaskSpec(image="img", entrypoint="m:f")
    assert spec.machine == "small-1x"
    assert spec.retry.max_attempts == 3
    assert spec.retry.factor == 2
    assert (spec.retry.min_timeout, spec.retry.max_timeout) == ("1s", "60s")
    assert spec.retry.randomize is True


@pytest.mark.parametrize(
    "cron", ["0 2 * * *", "*/5 * * * *", "*/1 * * * * *", "@hourly", "0 9 * * MON-FRI"]
)
def test_good_crons(cron: str) -> None:
    assert api.validate_cron(cron) == cron


@pytest.mark.parametrize("cron", ["61 * * * *", "* * *", "1 2 3 4 5 6 7", "@sometimes", ""])
def test_bad_crons_are_rejected_clearly(cron: str) -> None:
    with pytest.raises(ValueError, match=r"cron|fields"):
        api.validate_cron(cron)


def test_time_zones() -> None:
    assert api.validate_timezone("America/New_York") == "America/New_York"
    with pytest.raises(ValueError, match="IANA"):
        api.validate_timezone("Not/AZone")


def test_final_phases() -> None:
    assert api.Phase.COMPLETED.is_final and api.Phase.EXPIRED.is_final
    assert not api.Phase.WAITING.is_final and not api.Phase.QUEUED.is_final


def test_machine_literal_matches_the_preset_table() -> None:
    assert set(MachineName.__args__) == set(MACHINE_PRESETS)  # type: ignore[attr-defined]


def test_machine_presets() -> None:
    small = MACHINE_PRESETS["small-1x"]
    assert (small.cpu_quantity, small.memory_quantity) == ("500m", "512Mi")
    assert MACHINE_PRESETS["micro"].memory_quantity == "256Mi"
    assert next_larger("small-1x") == "small-2x"
    assert next_larger("small-2x") == "medium-1x"
    assert next_larger("large-2x") is None


def test_parse_refuses_wrong_api_version_and_kind() -> None:
    with pytest.raises(ValueError, match="apiVersion"):
        api.parse({"apiVersion": "v1", "kind": "TaskRun"})
    with pytest.raises(ValueError, match="kind"):
        api.parse({"apiVersion": api.API_VERSION, "kind": "Pod"})
