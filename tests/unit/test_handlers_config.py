"""kopf's configuration: with only raw event handlers registered (ours), kopf builds no
diff base (a deep copy of every object on every watch event); were a change-detecting
handler ever registered, it would build them again."""

from __future__ import annotations

from typing import Any

import kopf

from podtask_operator import handlers, handlers_schedules  # noqa: F401  (register handlers)
from podtask_operator.handlers import EventsOnlyDiffBase, configure, has_change_handlers


def test_the_operator_registers_no_change_handlers_so_builds_no_diff_bases() -> None:
    assert not has_change_handlers(kopf.get_default_registry())
    settings = kopf.OperatorSettings()
    configure(settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, EventsOnlyDiffBase)
    body = kopf.Body({"metadata": {"name": "r"}, "spec": {"task": "t"}, "status": {"a": 1}})
    assert storage.build(body=body) == {}


def test_a_change_handler_brings_diff_bases_back() -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.update("podtask.dev", "v1alpha1", "taskruns", registry=registry)
    def changed(**_: Any) -> None:
        return None

    assert has_change_handlers(registry)
    assert not has_change_handlers(kopf.OperatorRegistry())
