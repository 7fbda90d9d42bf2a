"""Tasks: registry, loading, text-to-text formatting, label words, metrics, the demo suite.

```python
from more_cli.tasks import get_task, compute_metrics

task = get_task(TaskConfig(name="rte", source="data/glue/rte"))
examples = task.load_split("train")        # [Example(text="rte sentence1: …", target=…, label=…)]
task.candidates()                           # ["entailment", "not_entailment"]
compute_metrics(task, predicted_labels, [e.label for e in examples])
```
"""

from more_cli.tasks.base import SPLIT_SEED, SPLITS, Example, RowError, Task, score_target
from more_cli.tasks.metrics import compute_metrics, glue_average
from more_cli.tasks.registry import DEMO_TASKS, GLUE_TASKS, TASK_NAMES, get_task

__all__ = [
    "DEMO_TASKS",
    "GLUE_TASKS",
    "SPLITS",
    "SPLIT_SEED",
    "TASK_NAMES",
    "Example",
    "RowError",
    "Task",
    "compute_metrics",
    "get_task",
    "glue_average",
    "score_target",
]
