"""The workbench's tasks, one module per kind, registered here (see `base` for the seam).

| task | trains | metrics (each as train_/val_/test_) |
|---|---|---|
| ``classify`` | an MLP or a small CNN on image/vector data | ``loss`` (cross-entropy), ``acc`` |
| ``charlm`` | the char Transformer on a text corpus | ``loss`` (nats per character), ``bpc``, ``acc`` |
| ``gan`` | a class-conditional generator and discriminator (hinge loss) | ``d_loss``, ``g_loss`` |
| ``regress`` | least squares: a linear or random-features model | ``loss`` (mean squared error), ``acc`` where targets are classes |

A spec names its task (`RunSpec.task`); `make_task` builds it. Adding a task is one module with a
`Task` subclass and one line in `TASKS`.
"""
from __future__ import annotations

import importlib

from reltrust.workbench.tasks.base import Shard, Step, Task, TaskError, load_cached

# name → "module:Class" (imported on first use)
TASKS = {
    "classify": "reltrust.workbench.tasks.classify:ClassifyTask",
    "charlm": "reltrust.workbench.tasks.charlm:CharLMTask",
    "gan": "reltrust.workbench.tasks.gan:GANTask",
    "regress": "reltrust.workbench.tasks.regress:RegressTask",
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise TaskError(f"RunSpec.task: unknown task {name!r}; known: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_task(spec, *, device, data_dir: str | None = None) -> Task:
    """The task `spec.task` for this spec, its data loaded (see `reltrust.workbench.tasks.base`)."""
    return task_class(spec.task)(spec, device=device, data_dir=data_dir)


__all__ = ["TASKS", "Shard", "Step", "Task", "TaskError", "load_cached", "make_task", "task_class"]
