"""Reading MoRE's router history back from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from more_cli.router_history import read_history, shown_rows
from more_cli.rundir import RunDir


def _write(run: RunDir, changes: list[int | None]) -> None:
    lines = []
    for index, changed in enumerate(changes):
        router = {"mean_rank": {"rte": 1.0 + index}, "confidence": {"rte": 0.5}}
        if changed is not None:
            router["changed"] = changed
        lines.append(json.dumps({"step": 10 * (index + 1), "loss": 1.0, "router": router}))
    lines.insert(2, json.dumps({"step": 20, "split": "val_select", "eval": {}, "average": 1.0}))
    lines.append('{"step": 99, "loss": 1.0, "rou')  # cut short by a crash
    run.metrics.write_text("\n".join(lines) + "\n")


def test_history_skips_other_records_and_stops_at_a_step(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    _write(run, [None, 3, 2, 1, 0])
    points = read_history(run)
    assert [p.step for p in points] == [10, 20, 30, 40, 50]
    assert [p.changed for p in points] == [None, 3, 2, 1, 0]
    assert [p.step for p in read_history(run, until_step=30)] == [10, 20, 30]
    assert read_history(RunDir(tmp_path / "none")) == []


def test_shown_rows_sum_the_changes_between_them(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    _write(run, [None, 3, 2, 1, 4])
    points = read_history(run)
    rows = shown_rows(points, rows=3)  # steps 10, 30, 50
    assert [(p.step, moved) for p, moved in rows] == [(10, 0), (30, 5), (50, 5)]
    assert [p.step for p, _ in shown_rows(points, rows=20)] == [10, 20, 30, 40, 50]
