"""The benchmark table: task name -> reader. ``videollama eval TASK`` picks from it."""

from __future__ import annotations

from ..errors import UsageError
from .activitynet_qa import ActivityNetQA
from .base import Task
from .msrvtt_qa import MSRVTTQA
from .msvd_qa import MSVDQA
from .synthav_qa import SynthAVQA

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (MSVDQA, MSRVTTQA, ActivityNetQA, SynthAVQA)}
TASK_NAMES = tuple(TASKS)


def get_task(task: str | Task) -> Task:
    """A task by name (``msvd-qa``, ``msrvtt-qa``, ``activitynet-qa``, ``synthav``) or as given."""
    if isinstance(task, Task):
        return task
    key = task.lower().replace("_", "-")
    if key not in TASKS:
        raise UsageError(f"unknown eval task {task!r}; choose one of: {', '.join(TASK_NAMES)}")
    return TASKS[key]()
