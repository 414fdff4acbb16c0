"""Generate apiextensions.k8s.io/v1 CRDs from the pydantic models.

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3
schema.  The differences that matter (Kubernetes docs, "Specifying a structural
schema"): no ``$ref``/``$defs``; every node typed (unless it preserves unknown
fields or is int-or-string); no ``additionalProperties: false`` (the server
prunes instead); no ``const``, ``uniqueItems`` or numeric ``exclusiveMinimum``;
``anyOf [X, null]`` is just an optional X.  ``to_structural`` rewrites those, and
``structural_errors`` checks the result independently, so a model change that
the converter does not understand fails a unit test instead of ``kubectl apply``.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from podtask.api.base import GROUP
from podtask.api.v1alpha1 import RESOURCES, VERSION, Resource

CATEGORY = "podtask"
_DROP = {"title", "default", "examples", "$schema"}
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_FORBIDDEN = {
    "$ref",
    "$defs",
    "definitions",
    "dependencies",
    "discriminator",
    "patternProperties",
    "readOnly",
    "writeOnly",
    "prefixItems",
    "const",
    "$schema",
    "title",
}
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_NOT_IN_JUNCTORS = {"type", "description", "default", "nullable", "additionalProperties"}


class UnsupportedSchemaError(ValueError):
    """A pydantic construct the converter cannot express structurally."""


def to_structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite one pydantic JSON Schema node (and its children) into a structural one."""
    defs = schema.get("$defs", {}) if defs is None else defs
    node = {k: v for k, v in schema.items() if k != "$defs"}

    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Field-level keys (description, validations) win over the referenced model's.
        node = {**to_structural(target, defs), **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**to_structural(node.pop("allOf")[0], defs), **node}
    if "anyOf" in node:
        node = _collapse_union(node, defs)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "additionalProperties" and value is False:
            continue  # the API server prunes unknown fields; `false` is not structural
        if key == "const":
            out["enum"] = [value]
        elif key == "uniqueItems":
            if value:
                out["x-kubernetes-list-type"] = "set"
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: to_structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_structural(value, defs)
        else:
            out[key] = copy.deepcopy(value)
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    # type and description first: the generated YAML is read by people too.
    return {k: out[k] for k in ("type", "description") if k in out} | out


def _collapse_union(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    branches = node.pop("anyOf")
    concrete = [b for b in branches if b.get("type") != "null"]
    if len(concrete) == 1:
        # `X | None`: optional fields are simply not required; we never send null.
        return {**to_structural(concrete[0], defs), **node}
    types = {to_structural(b, defs).get("type") for b in concrete}
    if types == {"integer", "string"}:
        return {**node, "x-kubernetes-int-or-string": True}
    raise UnsupportedSchemaError(
        f"union of {sorted(str(t) for t in types)} has no structural form; use one type, "
        "int | str, or a model with optional fields"
    )


def _enum_type(values: list[Any]) -> str:
    kinds = {type(v) for v in values}
    if kinds <= {str}:
        return "string"
    if kinds <= {int}:
        return "integer"
    if kinds <= {bool}:
        return "boolean"
    raise UnsupportedSchemaError(f"enum {values!r} mixes types")


def _walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")
    for junctor in _JUNCTORS:
        for index, sub in enumerate(_as_list(schema.get(junctor))):
            yield from _walk(sub, f"{path}.{junctor}[{index}]")


def _as_list(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def structural_errors(schema: dict[str, Any], path: str = "") -> list[str]:
    """Every way ``schema`` breaks the Kubernetes structural-schema rules."""
    errors: list[str] = _metadata_errors(schema, path) if path == "" else []
    for where, node in _walk(schema, path):
        in_junctor = any(f".{j}[" in where for j in _JUNCTORS)
        for key in sorted(_FORBIDDEN & node.keys()):
            errors.append(f"{where}: {key} is not allowed in a structural schema")
        if node.get("uniqueItems") is True:
            errors.append(f"{where}: uniqueItems: true is not allowed")
        if node.get("additionalProperties") is False:
            errors.append(f"{where}: additionalProperties: false is not allowed")
        if "additionalProperties" in node and "properties" in node:
            errors.append(f"{where}: additionalProperties and properties are mutually exclusive")
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node and not isinstance(node[key], bool):
                errors.append(f"{where}: {key} must be a boolean in OpenAPI v3.0")
        if in_junctor:
            for key in sorted(_NOT_IN_JUNCTORS & node.keys()):
                errors.append(f"{where}: {key} is not allowed inside allOf/anyOf/oneOf/not")
            continue
        free = node.get("x-kubernetes-preserve-unknown-fields") is True or node.get(
            "x-kubernetes-int-or-string"
        )
        if "type" not in node and not free:
            errors.append(f"{where}: type is missing")
        elif "type" in node and node["type"] not in _TYPES:
            errors.append(f"{where}: type {node['type']!r} is not one of {sorted(_TYPES)}")
        if node.get("type") == "array" and "items" not in node:
            errors.append(f"{where}: an array needs items")
        errors.extend(_junctor_errors(node, where))
        if node.get("x-kubernetes-list-type") == "map":
            item = node.get("items", {})
            for key in node.get("x-kubernetes-list-map-keys", []):
                if key not in item.get("required", []):
                    errors.append(f"{where}: list-map key {key!r} must be a required field")
    return errors


def _metadata_errors(root: dict[str, Any], path: str) -> list[str]:
    """At the root, metadata may say only that it is an object and restrict its names."""
    metadata = root.get("properties", {}).get("metadata")
    if metadata is None:
        return []
    errors = [
        f"{path}.metadata: {key} is not allowed (only type and name/generateName restrictions)"
        for key in sorted(set(metadata) - {"type", "properties"})
    ]
    errors += [
        f"{path}.metadata.{name}: only name and generateName may be restricted"
        for name in sorted(set(metadata.get("properties", {})) - {"name", "generateName"})
    ]
    return errors


def _junctor_errors(node: dict[str, Any], where: str) -> list[str]:
    """Properties named inside a junctor must also be declared outside it."""
    declared = set(node.get("properties", {}))
    errors = []
    for junctor in _JUNCTORS:
        for sub in _as_list(node.get(junctor)):
            for name in set(sub.get("properties", {})) - declared:
                errors.append(f"{where}: {junctor} names {name!r} not declared outside it")
    return errors


def openapi_schema(resource: type[Resource]) -> dict[str, Any]:
    """The structural openAPIV3Schema of one resource kind."""
    raw = resource.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    properties = raw["properties"]
    spec = to_structural(properties["spec"], defs)
    status = to_structural(properties["status"], defs)
    schema: dict[str, Any] = {
        "type": "object",
        "description": resource.description,
        "properties": {
            "apiVersion": {"type": "string", "description": "podtask.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"{resource.kind_name}."},
            # The API server owns metadata's schema: a CRD may only restrict name and
            # generateName there (not even add a description).
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if "spec" in raw.get("required", []):
        schema["required"] = ["spec"]
    return schema


def crd_manifest(resource: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource kind."""
    columns = [
        column.model_dump(by_alias=True, exclude_defaults=True) | {"jsonPath": column.json_path}
        for column in resource.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{resource.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "podtask"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": resource.kind_name,
                "listKind": f"{resource.kind_name}List",
                "plural": resource.plural,
                "singular": resource.kind_name.lower(),
                "shortNames": list(resource.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                }
            ],
        },
    }


HEADER = "# Generated by `make crds` from podtask.api.v1alpha1. Do not edit.\n"


def render(resource: type[Resource]) -> str:
    body = yaml.safe_dump(crd_manifest(resource), sort_keys=False, width=100)
    return HEADER + body


def crd_filename(resource: type[Resource]) -> str:
    return f"{resource.plural}.{GROUP}.yaml"


def generate() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    return {crd_filename(resource): render(resource) for resource in RESOURCES}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else Path("crds")
    for path in write(target):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
