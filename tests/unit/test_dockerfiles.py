"""The Dockerfiles, read (there is no Docker engine here to build them).

A small parser turns each file into (instruction, arguments) pairs, joining line
continuations and dropping comments, so the checks read like a review.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "runner-image" / "Dockerfile"
OPERATOR = ROOT / "operator" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BASE = "python:3.11-slim"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped too
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text:
            keyword, _, args = text.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"{path}: a line continuation runs off the end of the file"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    result: dict[str, str] = project["project"]["scripts"]
    return result


KNOWN = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


@pytest.mark.parametrize("path", [RUNNER, OPERATOR], ids=["runner", "operator"])
def test_dockerfile_shape(path: Path) -> None:
    instructions = parse(path)
    assert instructions[0].keyword == "FROM", "FROM must come first"
    assert {i.keyword for i in instructions} <= KNOWN
    stage = final_stage(instructions)
    assert stage[0].args.split()[0] == BASE
    for ins in instructions:
        if ins.keyword == "FROM":
            assert ins.args.split()[0] == BASE, ins

    users = [i.args for i in stage if i.keyword == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be numeric and not root (runAsNonRoot)"
    assert user == "10001"

    (entrypoint,) = [i.args for i in stage if i.keyword == "ENTRYPOINT"]
    command = exec_form(entrypoint)
    assert len(command) == 1 and command[0] in scripts(), command


@pytest.mark.parametrize("path", [RUNNER, OPERATOR], ids=["runner", "operator"])
def test_project_is_installed_from_the_build_context(path: Path) -> None:
    instructions = parse(path)
    copied: list[str] = []
    for ins in instructions:
        if ins.keyword in {"COPY", "ADD"}:
            parts = ins.args.split()
            if any(p.startswith("--from=") for p in parts):
                continue
            sources = [p for p in parts if not p.startswith("--")][:-1]
            copied += sources
    # Every source exists in the repository (the build context is its root) ...
    for source in copied:
        assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
    # ... and together they are what setuptools needs to build the project.
    assert {"pyproject.toml", "README.md"} <= set(copied)
    assert {"sdk", "operator"} <= {s.rstrip("/").removeprefix("./") for s in copied}
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "pip wheel" in runs and "pip install" in runs


def test_runner_image() -> None:
    stage = final_stage(parse(RUNNER))
    workdirs = [i.args for i in stage if i.keyword == "WORKDIR"]
    assert workdirs[-1] == "/app"
    assert exec_form(next(i.args for i in stage if i.keyword == "ENTRYPOINT")) == ["podtask-runner"]
    env = " ".join(i.args for i in stage if i.keyword == "ENV")
    assert "PYTHONPATH=/app" in env, "user code in /app must be importable"
    # The installed package is the plain one: the runner stays light.
    install = [i.args for i in stage if i.keyword == "RUN" and "pip install" in i.args]
    assert install and not any("[operator]" in args for args in install)
    # pip must work for derived images without going back to root: the venv is the user's.
    user_index = next(k for k, i in enumerate(stage) if i.keyword == "USER")
    venv_index = next(k for k, i in enumerate(stage) if "python -m venv" in i.args)
    assert user_index < venv_index


def test_operator_image() -> None:
    stage = final_stage(parse(OPERATOR))
    assert exec_form(next(i.args for i in stage if i.keyword == "ENTRYPOINT")) == [
        "podtask-operator"
    ]
    install = " ".join(i.args for i in stage if i.keyword == "RUN" and "pip install" in i.args)
    assert "[operator]" in install
    exposed = {port for i in stage if i.keyword == "EXPOSE" for port in i.args.split()}
    assert exposed == {"8080", "8081"}
    # USER comes after the installs (which run as root) and before the entrypoint.
    keywords = [i.keyword for i in stage]
    assert keywords.index("USER") > max(
        k for k, i in enumerate(stage) if i.keyword == "RUN" and "pip install" in i.args
    )


def test_how_to_add_code_is_documented() -> None:
    readme = (ROOT / "runner-image" / "README.md").read_text()
    for text in (RUNNER.read_text(), readme):
        assert re.search(r"FROM podtask/runner", text)
        assert "COPY . /app" in text
        assert "pip install -r requirements.txt" in text


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` spans directories, `*` and `?` do not."""
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        if token == "**/":
            out += "(.*/)?"
        elif token == "**":
            out += ".*"
        elif token == "*":
            out += "[^/]*"
        elif token == "?":
            out += "[^/]"
        else:
            out += re.escape(token)
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a matched directory hides its files."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (".venv/bin/python", ".localcluster/etcd", ".git/HEAD", ".mypy_cache/x"):
        assert _ignored(path, patterns), path
    assert _ignored("sdk/podtask/__pycache__/x.pyc", patterns)
    assert _ignored("podtask.egg-info/PKG-INFO", patterns)
    for needed in ("pyproject.toml", "README.md", "sdk/podtask/runner.py", "operator/Dockerfile"):
        assert not _ignored(needed, patterns), needed
