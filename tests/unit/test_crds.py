"""Generated CRDs: structural, described, in step with the committed files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from podtask.api import crd
from podtask.api.v1alpha1 import RESOURCES, Resource

CRDS = Path(__file__).resolve().parents[2] / "crds"


def schema_of(resource: type[Resource]) -> dict[str, Any]:
    return crd.openapi_schema(resource)


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind_name)
def test_schema_is_structural(resource: type[Resource]) -> None:
    assert crd.structural_errors(schema_of(resource)) == []


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind_name)
def test_committed_crd_matches_the_models(resource: type[Resource]) -> None:
    committed = (CRDS / crd.crd_filename(resource)).read_text()
    assert committed == crd.render(resource), "crds/ drifted from the models: run `make crds`"


def test_no_stray_crd_files() -> None:
    assert {p.name for p in CRDS.glob("*.yaml")} == set(crd.generate())


def _properties(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, sub in schema.get("properties", {}).items():
        if path == "" and name == "metadata":
            continue  # the API server forbids describing metadata
        found.append((f"{path}.{name}", sub))
        found += _properties(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _properties(schema["items"], f"{path}[]")
    return found


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind_name)
def test_every_field_has_a_description(resource: type[Resource]) -> None:
    missing = [p for p, sub in _properties(schema_of(resource)) if not sub.get("description")]
    assert missing == []


def test_free_form_json_only_where_it_belongs() -> None:
    free = {
        f"{r.kind_name}{path}"
        for r in RESOURCES
        for path, sub in _properties(schema_of(r))
        if sub.get("x-kubernetes-preserve-unknown-fields")
    }
    assert free == {
        "TaskRun.spec.payload",
        "TaskRun.spec.metadata",
        "TaskRun.status.output",
        "TaskRun.status.metadata",
        "TaskRun.status.journal.entries[].output",
        "TaskRun.status.taskSnapshot.payloadSchema",
        "Task.spec.payloadSchema",
        "Schedule.spec.payload",
        "WaitToken.status.output",
    }


def test_cross_field_rules_become_cel() -> None:
    spec = schema_of(RESOURCES[1])["properties"]["spec"]
    rules = {rule["message"]: rule["rule"] for rule in spec["x-kubernetes-validations"]}
    assert rules["delay and delayUntil are mutually exclusive: set at most one"] == (
        "(has(self.delay) ? 1 : 0) + (has(self.delayUntil) ? 1 : 0) <= 1"
    )
    # payload is free-form JSON, which CEL cannot see: that rule stays in pydantic
    # (and so in the operator, which fails such a run with InvalidSpec).
    assert not any("payloadFrom" in rule for rule in rules.values())


def test_taskrun_printer_columns() -> None:
    manifest = crd.crd_manifest(RESOURCES[1])
    version = manifest["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Task",
        "Phase",
        "Attempt",
        "Queue",
        "Age",
        "Duration",
    ]
    assert version["subresources"] == {"status": {}}
    assert manifest["spec"]["names"]["categories"] == ["podtask"]


# The checker must catch what pydantic emits raw, or it proves nothing.
@pytest.mark.parametrize(
    ("schema", "complaint"),
    [
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}, "$ref"),
        ({"type": "object", "properties": {"a": {"description": "untyped"}}}, "type is missing"),
        ({"type": "object", "additionalProperties": False}, "additionalProperties: false"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "integer", "exclusiveMinimum": 0}, "boolean"),
        ({"type": "string", "const": "a"}, "const"),
        ({"type": "array"}, "needs items"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "anyOf": [{"properties": {"b": {"type": "string"}}}],
            },
            "not declared outside",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "anyOf": [{"type": "string"}],
            },
            "inside allOf",
        ),
        ({"type": "object", "properties": {"a": {"type": "str"}}}, "not one of"),
        (
            {
                "type": "object",
                "properties": {"x": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            },
            "mutually exclusive",
        ),
    ],
)
def test_checker_catches_non_structural_schemas(schema: dict[str, Any], complaint: str) -> None:
    errors = crd.structural_errors(schema)
    assert any(complaint in error for error in errors), errors


def test_converter_fixes_raw_pydantic_schemas() -> None:
    from pydantic import BaseModel, Field

    class Inner(BaseModel):
        n: int = Field(gt=0, description="n")

    class Outer(BaseModel):
        model_config = {"extra": "forbid"}
        inner: Inner | None = Field(default=None, description="inner")
        mode: str = Field(default="a", description="mode", json_schema_extra={"const": "a"})
        count: int | str = Field(default=1, description="count")
        names: set[str] = Field(default_factory=set, description="names")

    raw = Outer.model_json_schema()
    assert crd.structural_errors(raw)  # raw pydantic output is not structural
    fixed = crd.to_structural(raw)
    assert crd.structural_errors(fixed) == []
    assert fixed["properties"]["inner"]["properties"]["n"] == {
        "type": "integer",
        "description": "n",
        "minimum": 0,
        "exclusiveMinimum": True,
    }
    assert fixed["properties"]["count"]["x-kubernetes-int-or-string"] is True
    assert fixed["properties"]["names"]["x-kubernetes-list-type"] == "set"


def test_unions_of_models_are_refused() -> None:
    from pydantic import BaseModel

    class A(BaseModel):
        a: int

    class B(BaseModel):
        b: str

    class Either(BaseModel):
        x: A | B

    with pytest.raises(crd.UnsupportedSchemaError):
        crd.to_structural(Either.model_json_schema())


def test_committed_crds_parse_as_yaml() -> None:
    for path in CRDS.glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        assert document["kind"] == "CustomResourceDefinition"
