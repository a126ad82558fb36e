"""Tasks; importing this package registers them, in the order tables list their columns."""

# isort: off
from pemma.tasks import segmentation, prognosis  # noqa: F401

# isort: on
from pemma.tasks.base import TASKS, Measured, Metric, Task, Unit, all_metrics, register_task

__all__ = ["TASKS", "Measured", "Metric", "Task", "Unit", "all_metrics", "register_task"]
