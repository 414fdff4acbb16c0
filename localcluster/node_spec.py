"""Pure pieces of the process kubelet: quantities, `$(VAR)` expansion, env and volume contents.

Nothing here does I/O; ConfigMaps and Secrets arrive as already-fetched dicts (``None``
for "not found"), so the kubelet rules (precedence, optional refs, error messages) can be
unit-tested without a cluster. Error messages are kubelet's own, because they end up in
``state.waiting.message`` where users and tests read them.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
DEFAULT_FILE_MODE = 0o644


class ConfigError(Exception):
    """A container cannot be configured yet (kubelet: CreateContainerConfigError)."""


# --- quantities -----------------------------------------------------------------------

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$"
)


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes resource.Quantity (``512Mi``, ``0.5Gi``, ``1G``, ``250m``, ``1e3``)."""
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"invalid quantity {text!r}")
    number, exponent, suffix = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation as error:
        raise ValueError(f"invalid quantity {text!r}") from error
    if exponent:
        return value * Decimal(10) ** int(exponent[1:])
    suffix = suffix or ""
    return value * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def memory_bytes(text: str | int | float) -> int:
    # Quantities round up to whole units, as resource.Quantity.Value() does.
    return math.ceil(parse_quantity(text))


def cpu_millis(text: str | int | float) -> int:
    return math.ceil(parse_quantity(text) * 1000)


# --- $(VAR) expansion ------------------------------------------------------------------


def expand(text: str, mapping: Callable[[str], str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (third_party/forked/golang/expansion), ``$$`` escapes."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:
                    # An unterminated reference is kept verbatim.
                    out.append("$(")
                    advance = 1
                else:
                    out.append(mapping(rest[1:close]))
                    advance = close + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def mapping_for(*contexts: Mapping[str, str]) -> Callable[[str], str]:
    def lookup(name: str) -> str:
        for context in contexts:
            if name in context:
                return context[name]
        return f"$({name})"

    return lookup


def expand_command(container: Obj, env: Mapping[str, str]) -> list[str]:
    lookup = mapping_for(env)
    return [expand(part, lookup) for part in (container.get("command") or [])] + [
        expand(part, lookup) for part in (container.get("args") or [])
    ]


# --- the downward API -------------------------------------------------------------------

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def format_map(values: Mapping[str, str]) -> str:
    # kubelet's fieldpath.FormatMap: sorted `key="value"` lines, Go %q quoting.
    return "\n".join(f"{key}={json.dumps(values[key])}" for key in sorted(values))


def field_value(pod: Obj, field_path: str, *, pod_ip: str, host_ip: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    subscript = _SUBSCRIPT.match(field_path)
    if subscript:
        return str((meta.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    simple: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: str(meta.get("name", "")),
        "metadata.namespace": lambda: str(meta.get("namespace", "")),
        "metadata.uid": lambda: str(meta.get("uid", "")),
        "metadata.labels": lambda: format_map(meta.get("labels") or {}),
        "metadata.annotations": lambda: format_map(meta.get("annotations") or {}),
        "spec.nodeName": lambda: str(spec.get("nodeName", "")),
        "spec.serviceAccountName": lambda: str(spec.get("serviceAccountName", "")),
        "status.hostIP": lambda: host_ip,
        "status.hostIPs": lambda: host_ip,
        "status.podIP": lambda: pod_ip,
        "status.podIPs": lambda: pod_ip,
    }
    if field_path not in simple:
        raise ConfigError(f"unsupported fieldPath: {field_path}")
    return simple[field_path]()


def resource_value(ref: Obj, container: Obj, node_allocatable: Mapping[str, str]) -> str:
    """``resourceFieldRef``: a limit defaults to the node's allocatable, as in kubelet."""
    resource = str(ref["resource"])
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "limits":
        raw = node_allocatable.get(name)
    if raw is None:
        raw = "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        divisor = Decimal(1)
    if name == "cpu":
        return str(math.ceil(parse_quantity(raw) / divisor))
    if name in {"memory", "ephemeral-storage"} or name.startswith("hugepages-"):
        return str(math.ceil(parse_quantity(raw) / divisor))
    raise ConfigError(f"unsupported container resource : {resource}")


# --- env ---------------------------------------------------------------------------------


def referenced_objects(pod: Obj) -> tuple[set[str], set[str]]:
    """ConfigMap and Secret names the pod's env, envFrom and volumes refer to."""
    configmaps: set[str] = set()
    secrets: set[str] = set()
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for source in container.get("envFrom") or []:
            if source.get("configMapRef"):
                configmaps.add(source["configMapRef"]["name"])
            if source.get("secretRef"):
                secrets.add(source["secretRef"]["name"])
        for var in container.get("env") or []:
            value_from = var.get("valueFrom") or {}
            if value_from.get("configMapKeyRef"):
                configmaps.add(value_from["configMapKeyRef"]["name"])
            if value_from.get("secretKeyRef"):
                secrets.add(value_from["secretKeyRef"]["name"])
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            configmaps.add(volume["configMap"]["name"])
        if "secret" in volume:
            secrets.add(volume["secret"]["secretName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if source.get("configMap"):
                configmaps.add(source["configMap"]["name"])
            if source.get("secret"):
                secrets.add(source["secret"]["name"])
    return configmaps, secrets


def configmap_data(configmap: Obj) -> dict[str, bytes]:
    data = {k: str(v).encode() for k, v in (configmap.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (configmap.get("binaryData") or {}).items()})
    return data


def secret_data(secret: Obj) -> dict[str, bytes]:
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    # stringData is write-only on the server, but a fake object in a test may carry it.
    data.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return data


@dataclass(frozen=True)
class EnvContext:
    pod: Obj
    configmaps: Mapping[str, Obj | None]
    secrets: Mapping[str, Obj | None]
    service_env: Mapping[str, str] = field(default_factory=dict)
    pod_ip: str = "127.0.0.1"
    host_ip: str = "127.0.0.1"
    node_allocatable: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return str((self.pod.get("metadata") or {}).get("namespace", ""))

    def configmap(self, name: str, optional: bool) -> dict[str, bytes] | None:
        found = self.configmaps.get(name)
        if found is None:
            if optional:
                return None
            raise ConfigError(f'configmap "{name}" not found')
        return configmap_data(found)

    def secret(self, name: str, optional: bool) -> dict[str, bytes] | None:
        found = self.secrets.get(name)
        if found is None:
            if optional:
                return None
            raise ConfigError(f'secret "{name}" not found')
        return secret_data(found)


def container_env(container: Obj, ctx: EnvContext) -> dict[str, str]:
    """The container's env as kubelet's makeEnvironmentVariables builds it.

    envFrom first, then env (which may refer to earlier entries and to the service env
    with `$(VAR)`), then the service env for names still unset.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        data: dict[str, bytes] | None = None
        if source.get("configMapRef"):
            ref = source["configMapRef"]
            data = ctx.configmap(ref["name"], bool(ref.get("optional")))
        elif source.get("secretRef"):
            ref = source["secretRef"]
            data = ctx.secret(ref["name"], bool(ref.get("optional")))
        for key, raw in (data or {}).items():
            env[prefix + key] = raw.decode(errors="replace")

    lookup = mapping_for(env, ctx.service_env)
    for var in container.get("env") or []:
        name = var["name"]
        value = var.get("value") or ""
        value_from = var.get("valueFrom")
        if value:
            value = expand(value, lookup)
        elif value_from:
            resolved = _value_from(value_from, container, ctx)
            if resolved is None:
                continue
            value = resolved
        env[name] = value
    for key, value in ctx.service_env.items():
        env.setdefault(key, value)
    return env


def _value_from(value_from: Obj, container: Obj, ctx: EnvContext) -> str | None:
    if value_from.get("fieldRef"):
        return field_value(
            ctx.pod, value_from["fieldRef"]["fieldPath"], pod_ip=ctx.pod_ip, host_ip=ctx.host_ip
        )
    if value_from.get("resourceFieldRef"):
        return resource_value(value_from["resourceFieldRef"], container, ctx.node_allocatable)
    if value_from.get("configMapKeyRef"):
        ref = value_from["configMapKeyRef"]
        optional = bool(ref.get("optional"))
        data = ctx.configmap(ref["name"], optional)
        if data is None:
            return None
        if ref["key"] not in data:
            if optional:
                return None
            raise ConfigError(
                f"couldn't find key {ref['key']} in ConfigMap {ctx.namespace}/{ref['name']}"
            )
        return data[ref["key"]].decode(errors="replace")
    if value_from.get("secretKeyRef"):
        ref = value_from["secretKeyRef"]
        optional = bool(ref.get("optional"))
        data = ctx.secret(ref["name"], optional)
        if data is None:
            return None
        if ref["key"] not in data:
            if optional:
                return None
            raise ConfigError(
                f"couldn't find key {ref['key']} in Secret {ctx.namespace}/{ref['name']}"
            )
        return data[ref["key"]].decode(errors="replace")
    raise ConfigError(f"unsupported valueFrom: {sorted(value_from)}")


# --- volumes -----------------------------------------------------------------------------

# relative path inside the volume -> (content, file mode)
VolumeFiles = dict[str, tuple[bytes, int]]


@dataclass(frozen=True)
class TokenSource:
    path: str
    audience: str
    expiration_seconds: int


def token_sources(volume: Obj) -> list[TokenSource]:
    """The serviceAccountToken projections of a volume; the caller asks TokenRequest for them."""
    sources = (volume.get("projected") or {}).get("sources") or []
    return [
        TokenSource(
            path=s["serviceAccountToken"]["path"],
            audience=s["serviceAccountToken"].get("audience") or "",
            expiration_seconds=int(s["serviceAccountToken"].get("expirationSeconds") or 3600),
        )
        for s in sources
        if s.get("serviceAccountToken")
    ]


def _keyed_files(
    data: dict[str, bytes] | None,
    items: Sequence[Obj] | None,
    mode: int,
    what: str,
    optional: bool,
) -> VolumeFiles:
    if data is None:
        return {}
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    files: VolumeFiles = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise ConfigError(f"{what} references non-existent config key: {item['key']}")
        files[item["path"]] = (data[item["key"]], int(item.get("mode") or mode))
    return files


def _downward_files(items: Sequence[Obj], mode: int, ctx: EnvContext) -> VolumeFiles:
    files: VolumeFiles = {}
    for item in items:
        if item.get("fieldRef"):
            value = field_value(
                ctx.pod, item["fieldRef"]["fieldPath"], pod_ip=ctx.pod_ip, host_ip=ctx.host_ip
            )
        else:
            ref = item["resourceFieldRef"]
            container: Obj = next(
                (
                    c
                    for c in (ctx.pod.get("spec") or {}).get("containers") or []
                    if c["name"] == ref.get("containerName")
                ),
                {},
            )
            value = resource_value(ref, container, ctx.node_allocatable)
        files[item["path"]] = (value.encode(), int(item.get("mode") or mode))
    return files


def volume_files(volume: Obj, ctx: EnvContext, tokens: Mapping[str, str]) -> VolumeFiles | None:
    """The files of a configMap/secret/downwardAPI/projected volume; None for other kinds."""
    if "configMap" in volume:
        source = volume["configMap"]
        optional = bool(source.get("optional"))
        return _keyed_files(
            ctx.configmap(source["name"], optional),
            source.get("items"),
            int(source.get("defaultMode") or DEFAULT_FILE_MODE),
            "configmap",
            optional,
        )
    if "secret" in volume:
        source = volume["secret"]
        optional = bool(source.get("optional"))
        return _keyed_files(
            ctx.secret(source["secretName"], optional),
            source.get("items"),
            int(source.get("defaultMode") or DEFAULT_FILE_MODE),
            "secret",
            optional,
        )
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        return _downward_files(
            source.get("items") or [], int(source.get("defaultMode") or DEFAULT_FILE_MODE), ctx
        )
    if "projected" in volume:
        projected = volume["projected"]
        mode = int(projected.get("defaultMode") or DEFAULT_FILE_MODE)
        files: VolumeFiles = {}
        for source in projected.get("sources") or []:
            if source.get("configMap"):
                ref = source["configMap"]
                optional = bool(ref.get("optional"))
                files.update(
                    _keyed_files(
                        ctx.configmap(ref["name"], optional),
                        ref.get("items"),
                        mode,
                        "configmap",
                        optional,
                    )
                )
            elif source.get("secret"):
                ref = source["secret"]
                optional = bool(ref.get("optional"))
                files.update(
                    _keyed_files(
                        ctx.secret(ref["name"], optional),
                        ref.get("items"),
                        mode,
                        "secret",
                        optional,
                    )
                )
            elif source.get("downwardAPI"):
                files.update(_downward_files(source["downwardAPI"].get("items") or [], mode, ctx))
            elif source.get("serviceAccountToken"):
                path = source["serviceAccountToken"]["path"]
                if path in tokens:
                    files[path] = (tokens[path].encode(), mode)
        return files
    return None


def env_name_for_path(prefix: str, path: str) -> str:
    """``/etc/my-config`` -> ``<prefix>ETC_MY_CONFIG``."""
    return prefix + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_").upper()


# --- image map --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageEnv:
    """The local environment that stands in for one or more container images."""

    match: str = "*"
    path_prepend: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    # The image's ENTRYPOINT and CMD, used when the container leaves command/args empty.
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


def parse_image_map(entries: Any, base_dir: Path) -> list[ImageEnv]:
    """Entries ``{match, pathPrepend, env, workingDir, entrypoint, cmd}``.

    Relative directories are relative to base_dir (the map file's directory), so a
    committed map needs no machine-specific paths.
    """
    if not isinstance(entries, list):
        raise ValueError("an image map is a list of {match, pathPrepend, env, ...} entries")
    result = []
    for entry in entries:
        if not isinstance(entry, dict) or "match" not in entry:
            raise ValueError(f"image map entry without 'match': {entry!r}")
        unknown = set(entry) - {"match", "pathPrepend", "env", "workingDir", "entrypoint", "cmd"}
        if unknown:
            raise ValueError(f"unknown image map keys {sorted(unknown)} in {entry!r}")
        working_dir = entry.get("workingDir")
        result.append(
            ImageEnv(
                match=str(entry["match"]),
                path_prepend=tuple(str(base_dir / str(p)) for p in entry.get("pathPrepend") or []),
                env={str(k): str(v) for k, v in (entry.get("env") or {}).items()},
                working_dir=str(base_dir / str(working_dir)) if working_dir else None,
                entrypoint=tuple(str(p) for p in entry.get("entrypoint") or []),
                cmd=tuple(str(p) for p in entry.get("cmd") or []),
            )
        )
    return result


def match_image(image: str, image_map: Sequence[ImageEnv]) -> ImageEnv:
    """The first entry whose glob matches the image; an empty environment if none does."""
    for entry in image_map:
        if fnmatch.fnmatchcase(image, entry.match):
            return entry
    return ImageEnv(match=image)
