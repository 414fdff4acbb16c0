"""A podtask project: ``podtask.toml``, the modules defining tasks, their manifests.

``podtask.toml`` at the project root::

    [project]
    name = "my-tasks"          # labels every Task and Schedule deploy makes
    dirs = ["tasks"]           # every module under these directories is imported
    # pythonpath = "src"       # where module names start (a src layout); default "."
    # namespace = "default"
    # image = "my-tasks"       # the image deploy uses when --image is not given

    [deploy.env]               # extra environment for every task's container
    LOG_LEVEL = "info"

``podtask deploy`` imports each module under ``dirs`` (with ``pythonpath``, by default
the project root, on ``sys.path``, as the runner image has it on ``PYTHONPATH``), collects the tasks
and declarative schedules those modules define, and turns them into Task and
Schedule manifests.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podtask import __version__
from podtask.api.v1alpha1 import API_VERSION, EnvVar, TaskSpec
from podtask.errors import KubernetesApiError, PodtaskError

if TYPE_CHECKING:
    from podtask._kube import Backend

__all__ = [
    "CONFIG_FILE",
    "LABEL_PROJECT",
    "Manifests",
    "Project",
    "ProjectError",
    "collect",
    "find_project",
    "scaffold",
]

CONFIG_FILE = "podtask.toml"
LABEL_PROJECT = "podtask.dev/project"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_DEV_SESSION = "podtask.dev/dev-session"
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", "tests", "test"}
_PROJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ProjectError(PodtaskError, ValueError):
    """No project, a bad ``podtask.toml``, or a module that fails to import."""

    error_type = "ProjectError"


@dataclass(frozen=True, slots=True)
class Project:
    root: Path
    name: str
    dirs: tuple[str, ...] = ("tasks",)
    pythonpath: str = "."
    namespace: str | None = None
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def import_root(self) -> Path:
        """The directory module names are relative to (on ``PYTHONPATH`` in the image)."""
        return (self.root / self.pythonpath).resolve()

    def source_files(self) -> Iterator[Path]:
        """The Python files whose modules are imported, in a stable order."""
        for directory in self.dirs:
            base = (self.root / directory).resolve()
            if base.is_file() and base.suffix == ".py":
                yield base
                continue
            if not base.is_dir():
                continue
            for path in sorted(base.rglob("*.py")):
                relative = path.relative_to(base).parts
                if not any(part in _SKIP_DIRS or part.startswith(".") for part in relative[:-1]):
                    yield path

    def modules(self) -> list[str]:
        names = []
        for path in self.source_files():
            if not path.is_relative_to(self.import_root):
                raise ProjectError(
                    f"{path} is outside pythonpath {self.import_root}: it has no module name"
                )
            parts = list(path.relative_to(self.import_root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and all(part.isidentifier() for part in parts):
                names.append(".".join(parts))
        return names

    def fingerprint(self) -> str:
        """A hash of every source file and the config: changes when any of them does."""
        digest = hashlib.sha256()
        for path in [self.config_path, *self.source_files()]:
            try:
                digest.update(str(path).encode())
                digest.update(path.read_bytes())
            except OSError:
                continue
        return digest.hexdigest()[:12]


def find_project(start: Path | None = None) -> Project:
    """The project whose ``podtask.toml`` is in ``start`` or the nearest parent."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / CONFIG_FILE).is_file():
            return load_project(directory)
    raise ProjectError(
        f"no {CONFIG_FILE} in {here} or any parent directory: run `podtask init` to create a "
        "project, or pass --project"
    )


def load_project(root: Path) -> Project:
    path = root / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ProjectError(f"cannot read {path}: {error}") from error
    section = data.get("project") or {}
    name = str(section.get("name") or root.name.lower())
    if not _PROJECT_NAME.fullmatch(name) or len(name) > 63:
        raise ProjectError(
            f"{path}: project name {name!r} must be a DNS label (lowercase letters, digits, '-')"
        )
    dirs = section.get("dirs", ["tasks"])
    if isinstance(dirs, str):
        dirs = [dirs]
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise ProjectError(f"{path}: project.dirs must be a list of directories")
    pythonpath = section.get("pythonpath", ".")
    if not isinstance(pythonpath, str):
        raise ProjectError(f"{path}: project.pythonpath must be a directory")
    env = (data.get("deploy") or {}).get("env") or {}
    if not isinstance(env, dict):
        raise ProjectError(f"{path}: deploy.env must be a table of NAME = value")
    return Project(
        root=root.resolve(),
        name=name,
        dirs=tuple(dirs),
        pythonpath=pythonpath,
        namespace=section.get("namespace"),
        image=section.get("image"),
        env={str(k): str(v) for k, v in env.items()},
    )


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True, slots=True)
class Manifests:
    tasks: list[dict[str, Any]]
    schedules: list[dict[str, Any]]

    def all(self) -> list[dict[str, Any]]:
        return [*self.tasks, *self.schedules]


def import_modules(project: Project) -> list[str]:
    """Import every module of the project (root first on ``sys.path``); their names."""
    root = str(project.import_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    importlib.invalidate_caches()
    names = project.modules()
    # Another project's package of the same name (say `tasks`) may be imported already
    # (tests, a long-lived process): forget it, or its modules would stand in for ours.
    for top in {name.split(".")[0] for name in names}:
        for loaded in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            if not _inside(sys.modules[loaded], project.import_root):
                del sys.modules[loaded]
    for name in names:
        try:
            importlib.import_module(name)
        except PodtaskError as error:
            raise ProjectError(f"module {name}: {error}") from error
        except Exception as error:
            raise ProjectError(
                f"importing module {name} failed: {type(error).__name__}: {error}"
            ) from error
    return names


def _inside(module: Any, root: Path) -> bool:
    paths = [getattr(module, "__file__", None), *list(getattr(module, "__path__", None) or [])]
    return any(p is not None and Path(p).resolve().is_relative_to(root) for p in paths)


def default_version(now: datetime | None = None) -> str:
    """Trigger.dev-style ``YYYYMMDD.HHMMSS`` (UTC): sortable, unique per second."""
    return (now or datetime.now(UTC)).strftime("%Y%m%d.%H%M%S")


def collect(
    project: Project,
    *,
    image: str,
    version: str | None = None,
    namespace: str | None = None,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Manifests:
    """Task and Schedule manifests for every task the project's modules define."""
    from podtask import schedules, tasks

    modules = set(import_modules(project))
    found = [t for t in tasks.all() if t.entrypoint.partition(":")[0] in modules]
    if not found:
        raise ProjectError(
            f"no tasks found in {', '.join(project.dirs)} under {project.root}: define one with "
            "@task(id=...) in a module there"
        )
    common_labels = {
        LABEL_PROJECT: project.name,
        LABEL_PART_OF: project.name,
        **dict(labels or {}),
    }
    extra_env = [EnvVar(name=k, value=v) for k, v in {**project.env, **dict(env or {})}.items()]
    task_manifests = []
    for found_task in found:
        spec = found_task.to_spec(image, version)
        if extra_env:
            names = {e.name for e in extra_env}
            spec = TaskSpec.model_validate(
                {
                    **spec.model_dump(),
                    "env": [*(e for e in spec.env if e.name not in names), *extra_env],
                }
            )
        metadata: dict[str, Any] = {"name": found_task.id, "labels": dict(common_labels)}
        if namespace:
            metadata["namespace"] = namespace
        task_manifests.append(
            {
                "apiVersion": API_VERSION,
                "kind": "Task",
                "metadata": metadata,
                "spec": spec.to_wire(),
            }
        )
    ids = {t.id for t in found}
    schedule_manifests = []
    for schedule in schedules.declared(namespace):
        if schedule.spec.task not in ids:
            continue
        wire = schedule.to_wire()
        wire["metadata"]["labels"] = {**wire["metadata"].get("labels", {}), **common_labels}
        schedule_manifests.append(wire)
    return Manifests(task_manifests, schedule_manifests)


# --------------------------------------------------------------------------- scaffold

_CONFIG_TEMPLATE = """\
# podtask project: `podtask deploy` imports every module under `dirs` and turns the
# tasks defined there into Task resources.
[project]
name = "{name}"
dirs = ["tasks"]
# namespace = "default"
# image = "{name}"

# Extra environment for every task's container.
# [deploy.env]
# LOG_LEVEL = "info"
"""

_EXAMPLE_TASK = '''\
"""An example task: greets someone, reporting progress through run metadata.

Trigger it with ``podtask trigger example.hello '{"name": "Ada"}' --wait``.
"""

from __future__ import annotations

import time
from typing import Any

from podtask import TaskContext, metadata, task


@task(id="example.hello", machine="micro", retry={"max_attempts": 3})
def hello(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Greet someone."""
    name = str(payload.get("name", "world"))
    steps = int(payload.get("steps", 3))
    for step in range(1, steps + 1):
        time.sleep(float(payload.get("step_seconds", 0.2)))
        metadata.set("progress", step / steps)
    print(f"greeting {name} (attempt {ctx.attempt})", flush=True)
    return {"greeting": f"Hello, {name}!"}
'''

_DOCKERFILE = """\
# The task image: podtask's runner image with this project in /app (on PYTHONPATH).
FROM podtask/runner:{version}
COPY --chown=10001:10001 requirements.txt /app/
RUN pip install -r /app/requirements.txt
COPY --chown=10001:10001 . /app
"""

_README = """\
# {name}

A podtask project. Tasks live in `tasks/`.

    podtask dev                                   # run tasks locally against a cluster
    podtask trigger example.hello '{{"name": "Ada"}}' --wait
    podtask deploy --image {name}:1 --apply       # Task resources for a built image
"""


def scaffold(target: Path, name: str | None = None, *, force: bool = False) -> list[Path]:
    """Create a project with an example task in ``target``; the files written."""
    target = target.resolve()
    project_name = name or re.sub(r"[^a-z0-9-]+", "-", target.name.lower()).strip("-") or "tasks"
    if not _PROJECT_NAME.fullmatch(project_name) or len(project_name) > 63:
        raise ProjectError(
            f"project name {project_name!r} must be a DNS label (lowercase letters, digits, '-')"
        )
    files = {
        target / CONFIG_FILE: _CONFIG_TEMPLATE.format(name=project_name),
        target / "tasks" / "__init__.py": "",
        target / "tasks" / "example.py": _EXAMPLE_TASK,
        target / "requirements.txt": "",
        target / "Dockerfile": _DOCKERFILE.format(version=__version__),
        target / "README.md": _README.format(name=project_name),
    }
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise ProjectError(
            f"{', '.join(str(p.relative_to(target)) for p in existing)} already exist in "
            f"{target}; use --force to overwrite"
        )
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return list(files)


# --------------------------------------------------------------------------- applying

_PLURALS = {"Task": "tasks", "Schedule": "schedules"}


@dataclass(frozen=True, slots=True)
class Applied:
    kind: str
    name: str
    action: str
    """created, configured, unchanged or deleted."""


def apply_manifests(
    backend: Backend, namespace: str, manifests: list[dict[str, Any]]
) -> list[Applied]:
    """Create each object, or replace the one there when it differs (labels merged)."""
    applied = []
    for manifest in manifests:
        kind = manifest["kind"]
        plural = _PLURALS[kind]
        name = manifest["metadata"]["name"]
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        for _ in range(5):
            try:
                backend.create(plural, namespace, body)
                applied.append(Applied(kind, name, "created"))
                break
            except KubernetesApiError as error:
                if error.status != 409:
                    raise
            current = backend.get(plural, namespace, name)
            meta = current.get("metadata") or {}
            labels = {**(meta.get("labels") or {}), **(body["metadata"].get("labels") or {})}
            if current.get("spec") == body["spec"] and labels == (meta.get("labels") or {}):
                applied.append(Applied(kind, name, "unchanged"))
                break
            replacement = {
                **body,
                "metadata": {**meta, "labels": labels},
            }
            try:
                backend.replace(plural, namespace, name, replacement)
                applied.append(Applied(kind, name, "configured"))
                break
            except KubernetesApiError as error:
                if error.status not in (404, 409):  # changed or deleted meanwhile: again
                    raise
        else:
            raise ProjectError(f"{kind} {namespace}/{name} kept changing while being applied")
    return applied


def prune(
    backend: Backend, namespace: str, project: str, keep: list[dict[str, Any]]
) -> list[Applied]:
    """Delete the project's Tasks and Schedules that ``keep`` no longer has."""
    wanted = {(m["kind"], m["metadata"]["name"]) for m in keep}
    deleted = []
    for kind, plural in _PLURALS.items():
        items, _ = backend.list(plural, namespace, label_selector=f"{LABEL_PROJECT}={project}")
        for item in items:
            name = str((item.get("metadata") or {}).get("name"))
            if (kind, name) in wanted:
                continue
            try:
                backend.delete(plural, namespace, name)
            except KubernetesApiError as error:
                if error.status != 404:
                    raise
            deleted.append(Applied(kind, name, "deleted"))
    return deleted
