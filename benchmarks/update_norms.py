"""How large each task's learned update is: the Frobenius norm of ``ΔW`` at every adapted
layer, per task and, for MoRE, pooled by the rank the router chose there.

A diagnostic of trained runs (no training): with linear rank scaling the update of a rank-k
expert is ``scaling · B[:, :k] diag(s[:k]²) A[:k]`` with ``s_i = (i+1)/r``, so a (layer, task)
whose chosen rank is small may be nearly unadapted. This measures how nearly, beside a LoRA
run of the same study.

    python -m benchmarks.update_norms runs/bench-glue8/lora-lr0.0003-s2024 \\
        runs/bench-glue8/more-lr0.0003-s2024 --out benchmarks/results/glue8_update_norms.json
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, write_json
from more_cli.adapters import MultiTaskAdapter
from more_cli.run_loading import load_run

OUT_JSON = RESULTS_DIR / "glue8_update_norms.json"


def update_norms(adapter: MultiTaskAdapter) -> dict[str, Any]:
    """Per task the mean ``‖ΔW‖_F`` over layers and the mean chosen rank; pooled over tasks
    and layers, the mean norm and the count of (layer, task) pairs at each chosen rank."""
    ranks = adapter.chosen_ranks()
    tasks: dict[str, dict[str, float]] = {}
    by_rank: dict[int, list[float]] = {}
    for task in adapter.tasks:
        norms = {name: delta.norm().item() for name, delta in adapter.delta_weights(task).items()}
        tasks[task] = {
            "mean_norm": statistics.fmean(norms.values()),
            "mean_rank": statistics.fmean(ranks[task].values()),
        }
        for name, norm in norms.items():
            by_rank.setdefault(ranks[task][name], []).append(norm)
    return {
        "kind": adapter.config.kind,
        "tasks": tasks,
        "by_rank": {
            str(rank): {"mean_norm": statistics.fmean(values), "pairs": len(values)}
            for rank, values in sorted(by_rank.items())
        },
    }


def markdown(records: Sequence[dict[str, Any]]) -> str:
    ranks = sorted({int(rank) for record in records for rank in record["by_rank"]})
    lines = ["Mean ‖ΔW‖_F over (layer, task) pairs at each chosen rank (pairs in brackets):", "",
             "| run | " + " | ".join(f"rank {rank}" for rank in ranks) + " |",
             "|---|" + "---:|" * len(ranks)]  # fmt: skip
    for record in records:
        cells = []
        for rank in ranks:
            entry = record["by_rank"].get(str(rank))
            cells.append(f"{entry['mean_norm']:.3f} ({entry['pairs']})" if entry else "—")
        lines.append(f"| {record['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--checkpoint", help="step-N instead of each run's adapter/")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    args = parser.parse_args(argv)
    records = []
    for run_dir in args.run_dirs:
        with torch.no_grad():
            run = load_run(run_dir, args.checkpoint)
            records.append({"run": run_dir.name} | update_norms(run.adapter))
    write_json(args.out, {"suite": "update_norms", "checkpoint": args.checkpoint, "runs": records})
    print(markdown(records))


if __name__ == "__main__":
    main()
