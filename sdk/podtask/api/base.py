"""Building blocks shared by every API version's models.

Every resource schema is a pydantic model; the CRDs are generated from them
(``podtask.api.crd``).  Cross-field rules are declared once on a model
(``__exclusive__``, ``__exactly_one__``) and enforced twice from that one
declaration: by pydantic in the SDK and operator, and as CEL
``x-kubernetes-validations`` by the API server at ``kubectl apply``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

GROUP = "podtask.dev"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

FreeJSON = Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]
"""Any JSON value, kept as is by the API server (payloads, outputs)."""

FreeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A JSON object of any shape (metadata, JSON Schemas)."""

# Kubernetes' own quantity regular expression (apimachinery resource.Quantity).
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"
Quantity = Annotated[
    int | str,
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]
"""A Kubernetes resource quantity such as ``500m`` or ``2Gi``."""


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    __exclusive__: ClassVar[tuple[tuple[str, ...], ...]] = ()
    """Groups of fields (by Python name) of which at most one may be set."""
    __exactly_one__: ClassVar[tuple[tuple[str, ...], ...]] = ()
    """Groups of fields (by Python name) of which exactly one must be set."""

    @classmethod
    def _wire_name(cls, field: str) -> str:
        info = cls.model_fields[field]
        return info.alias or field

    @classmethod
    def _rule_groups(cls) -> list[tuple[list[str], str, str]]:
        """(wire names, CEL comparison on how many are set, message) per declared group."""
        groups = []
        for group in cls.__exclusive__:
            names = [cls._wire_name(f) for f in group]
            message = f"{_either(names)} are mutually exclusive: set at most one"
            groups.append((names, "<= 1", message))
        for group in cls.__exactly_one__:
            names = [cls._wire_name(f) for f in group]
            groups.append((names, "== 1", f"set exactly one of {_either(names)}"))
        return groups

    @classmethod
    def _cel_can_see(cls, wire_name: str) -> bool:
        """CEL cannot refer to an untyped (free-form JSON) field, not even with has()."""
        field = next(f for f in cls.model_fields if cls._wire_name(f) == wire_name)
        for meta in cls.model_fields[field].metadata:
            schema = meta.json_schema if isinstance(meta, WithJsonSchema) else None
            if schema is not None and "type" not in schema:
                return False
        return True

    @classmethod
    def cel_rules(cls) -> list[dict[str, str]]:
        """The CEL rules equivalent to this model's cross-field declarations.

        A group that names a free-form JSON field is enforced by pydantic only (the
        operator then fails the run with a clear InvalidSpec reason).
        """
        rules = []
        for names, comparison, message in cls._rule_groups():
            if not all(cls._cel_can_see(name) for name in names):
                continue
            count = " + ".join(f"(has(self.{name}) ? 1 : 0)" for name in names)
            rules.append({"rule": f"{count} {comparison}", "message": message})
        return rules

    @model_validator(mode="after")
    def _check_cross_field_rules(self) -> Self:
        if not (self.__exclusive__ or self.__exactly_one__):
            # Most models declare no groups; this runs for every model validated (the
            # operator validates each run's status on every reconcile).
            return self
        by_wire = {self._wire_name(f): f for f in type(self).model_fields}
        for names, comparison, message in self._rule_groups():
            count = sum(getattr(self, by_wire[name]) is not None for name in names)
            if not (count <= 1 if comparison == "<= 1" else count == 1):
                raise ValueError(message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        rules = cls.cel_rules()
        if rules:
            target["x-kubernetes-validations"] = rules
        return schema

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(Model):
    """Status is written by the operator; tolerate fields a newer operator added."""

    model_config = ConfigDict(extra="ignore")


def _either(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


def immutable(message: str) -> dict[str, Any]:
    """Schema extra making a field immutable once set (a CEL transition rule)."""
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": message}]}


class ObjectMeta(BaseModel):
    """The parts of Kubernetes ObjectMeta podtask reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str | None = Field(default=None, description="Object name.")
    generate_name: str | None = Field(default=None, description="Name prefix.")
    namespace: str | None = Field(default=None, description="Namespace.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    uid: str | None = Field(default=None, description="Server-assigned UID.")
    resource_version: str | None = Field(default=None, description="Resource version.")
    generation: int | None = Field(default=None, description="Spec generation.")


class Condition(StatusModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(description="Condition type in CamelCase, e.g. Ready or Admitted.")
    status: str = Field(description="True, False or Unknown.", pattern=r"^(True|False|Unknown)$")
    reason: str = Field(default="", description="One CamelCase word saying why.")
    message: str = Field(default="", description="A human-readable explanation.")
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation the condition was computed from."
    )


CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
