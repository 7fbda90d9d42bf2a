"""How MoRE's router moved during training, read back from the ``router`` field of the loss
records in ``metrics.jsonl`` (written by :class:`more_cli.training.reporting.RouterTrace`):
each task's mean chosen rank and mean gate confidence over the layers, and how many
(layer, task) choices changed between records. ``more inspect --router-history`` shows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from more_cli.rundir import RunDir

ROWS = 9  # table rows: the first record, the last, and evenly spaced ones between


@dataclass(frozen=True)
class RouterPoint:
    step: int
    mean_rank: dict[str, float]
    confidence: dict[str, float]
    changed: int | None  # since the previous record; None for a process's first record


def read_history(run: RunDir, until_step: int | None = None) -> list[RouterPoint]:
    """The router records of ``run`` in step order, up to ``until_step`` when given.

    Resumed runs drop the records after their checkpoint from ``metrics.jsonl``, so every
    step appears once."""
    if not run.metrics.is_file():
        return []
    points = []
    for line in run.metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash; resume drops it too
            continue
        router = record.get("router")
        if router is None or (until_step is not None and record["step"] > until_step):
            continue
        points.append(
            RouterPoint(
                record["step"], router["mean_rank"], router["confidence"], router.get("changed")
            )
        )
    return sorted(points, key=lambda p: p.step)


def shown_rows(points: list[RouterPoint], rows: int = ROWS) -> list[tuple[RouterPoint, int]]:
    """About ``rows`` evenly spaced points, each with the choices changed since the previous
    shown point (the sum of the records in between)."""
    if not points:
        return []
    count = min(rows, len(points))
    picked = sorted({round(i * (len(points) - 1) / max(count - 1, 1)) for i in range(count)})
    shown, previous = [], -1
    for index in picked:
        moved = sum(p.changed or 0 for p in points[previous + 1 : index + 1])
        shown.append((points[index], moved))
        previous = index
    return shown


def history_table(points: list[RouterPoint], total_choices: int) -> Table:
    """Steps down, tasks across: mean chosen rank (confidence) and choices changed."""
    tasks = list(points[0].mean_rank)
    table = Table(
        title="Router over training: mean chosen rank (mean confidence) per task",
        caption=f"changed: (layer, task) choices that moved since the row above, of "
        f"{total_choices}",
    )
    table.add_column("step", justify="right")
    for task in tasks:
        table.add_column(task, justify="right")
    table.add_column("changed", justify="right")
    for point, moved in shown_rows(points):
        cells = [f"{point.mean_rank[t]:.2f} ({point.confidence[t]:.2f})" for t in tasks]
        table.add_row(str(point.step), *cells, "—" if point is points[0] else str(moved))
    return table


def plot_history(points: list[RouterPoint], r: int, path: Path) -> None:
    """Two panels over steps: mean chosen rank (on the full 1..r scale) and mean confidence,
    one line per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p.step for p in points]
    figure, (ranks, confidence) = plt.subplots(1, 2, figsize=(11, 4.2))
    for task in points[0].mean_rank:
        ranks.plot(steps, [p.mean_rank[task] for p in points], label=task)
        confidence.plot(steps, [p.confidence[task] for p in points], label=task)
    ranks.set(title="mean chosen rank over layers", xlabel="step", ylabel="rank", ylim=(1, r))
    confidence.set(title="mean router confidence over layers", xlabel="step", ylim=(0, 1.02))
    ranks.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
