from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import OperatorProcess

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Pytest calls this hook with every collected item, not just this directory's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="module")
def operator(
    kubeconfig: Path, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The real operator as a process, one per test module (tests may kill and restart it)."""
    process = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator"))
    process.start()
    yield process
    process.stop()
