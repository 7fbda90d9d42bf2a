"""Few-shot transfer to RTE: MoRE's transfer against a fresh LoRA and the majority class.

The source run is the shipped ``recipes/transfer_source_minilm.yaml`` (MiniLM, MoRE with the
shipped defaults, MNLI / QNLI / SST-2, RTE held out), its tasks read from ``--glue-dir``.
For each k in ``--shots`` and each seed:

- ``transfer_k<k>``: the shipped ``recipes/transfer_rte_minilm.yaml`` with ``transfer.shots:
  k`` — RTE's task embedding and head train, everything else is the source run's;
- ``fresh_lora_k<k>``: a fresh LoRA (same r, alpha, targets, data settings) with its own
  head, trained on the same k RTE rows (``max_train_samples: k`` draws exactly the rows
  ``transfer.shots: k`` draws: the same seeded sample), for the same steps and evaluations,
  at ``--fresh-lr``.

Every run keeps its best ``val_select`` checkpoint and is scored once on ``val_test``; the
majority class is the training split's most frequent label, scored on the same ``val_test``
rows. Runs resume and are reused as in :mod:`benchmarks.quality`.

    python -m benchmarks.transfer_fewshot                   # k = 16, 32, 64; 3 seeds
    python -m benchmarks.transfer_fewshot --report          # tables from the JSON
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, environment
from benchmarks.quality import (
    DEFAULT_GLUE_DIR,
    REPO_ROOT,
    Job,
    cell,
    check_glue_dir,
    kept_runs,
    run_jobs,
)
from more_cli.recipe import Recipe, TaskConfig
from more_cli.recipe_io import load_recipe
from more_cli.rundir import read_json
from more_cli.tasks import compute_metrics, get_task
from more_cli.transfer import resolve_transfer

SOURCE_RECIPE = REPO_ROOT / "recipes" / "transfer_source_minilm.yaml"
TRANSFER_RECIPE = REPO_ROOT / "recipes" / "transfer_rte_minilm.yaml"
SHOTS, SEEDS, FRESH_LR = (16, 32, 64), (2023, 2024, 2025), 1e-3
OUT_JSON = RESULTS_DIR / "transfer_fewshot.json"
NEW_TASK = "rte"


def source_recipe(glue_dir: Path, work: Path) -> Recipe:
    """The shipped source recipe with its tasks read from ``glue_dir``."""
    names = load_recipe(SOURCE_RECIPE).task_names
    sources = [f"tasks.{i}.source={glue_dir / name}" for i, name in enumerate(names)]
    return load_recipe(SOURCE_RECIPE, [*sources, f"output_dir={work / 'source'}"])


def transfer_recipe(source: Recipe, glue_dir: Path, work: Path, shots: int, seed: int) -> Recipe:
    """The shipped transfer recipe from ``source``'s run with k shots, resolved."""
    overrides = [
        f"transfer.from_run={source.output_dir}",
        f"transfer.shots={shots}",
        f"tasks.0.source={glue_dir / NEW_TASK}",
        f"train.seed={seed}",
        f"output_dir={work / f'transfer_k{shots}-s{seed}'}",
    ]
    return resolve_transfer(load_recipe(TRANSFER_RECIPE, overrides))


def fresh_lora_recipe(transfer: Recipe, source: Recipe, lr: float, work: Path) -> Recipe:
    """A fresh LoRA on the transfer's new-task rows, steps and evaluations."""
    adapter = source.adapter.model_dump(include={"r", "alpha", "dropout", "targets"})
    new = [t for t in transfer.tasks if t.name not in source.task_names]
    shots, seed = new[0].max_train_samples, transfer.train.seed
    return Recipe.model_validate(
        {
            "model": transfer.model.model_dump(),
            "adapter": adapter | {"kind": "lora"},
            "tasks": [t.model_dump() for t in new],
            "data": transfer.data.model_dump(),
            "train": transfer.train.model_dump() | {"lr": lr},
            "output_dir": str(work / f"fresh_lora_k{shots}-s{seed}"),
        }
    )


def majority_score(task: TaskConfig, seed: int) -> float:
    """The headline of always answering the training split's most frequent label, on the
    ``val_test`` rows a run of training seed ``seed`` is scored on."""
    loaded = get_task(task.model_copy(update={"max_train_samples": None}), seed=seed)
    label = Counter(e.label for e in loaded.load_split("train")).most_common(1)[0][0]
    references = [e.label for e in loaded.load_split("val_test")]
    return compute_metrics(loaded, [label] * len(references), references)["headline"]


def markdown(payload: dict[str, Any]) -> str:
    summary, majority = payload["summary"], payload["majority"]
    lines = []
    if "source" in summary:
        tasks = list(summary["source"]["tasks"])
        lines += [
            "| source run (val_test) | " + " | ".join(tasks) + " |",
            "|---|" + "---:|" * len(tasks),
            "| MoRE, seed 2023 | " + " | ".join(cell(summary["source"]["tasks"][t]) for t in tasks)
            + " |",
            "| majority class | " + " | ".join(f"{majority[t]:.1f}" for t in tasks) + " |",
            "",
        ]  # fmt: skip
    lines += [
        f"| k | MoRE transfer ({NEW_TASK}) | fresh LoRA | majority class | seeds |",
        "|---:|---:|---:|---:|---|",
    ]
    for shots in payload["shots"]:
        transfer = summary.get(f"transfer_k{shots}")
        fresh = summary.get(f"fresh_lora_k{shots}")
        if transfer is None and fresh is None:
            continue
        seeds = (transfer or fresh)["seeds"]
        row = [cell(s["tasks"][NEW_TASK]) if s else "—" for s in (transfer, fresh)]
        lines.append(f"| {shots} | {row[0]} | {row[1]} | {majority[NEW_TASK]:.1f} | {seeds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="tables from the JSON only")
    parser.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--fresh-lr", type=float, default=FRESH_LR)
    parser.add_argument("--glue-dir", type=Path, default=DEFAULT_GLUE_DIR)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "runs" / "bench-transfer")
    args = parser.parse_args(argv)
    if args.report:
        print(markdown(read_json(args.out)))
        return
    glue_dir, work = args.glue_dir.resolve(), args.work_dir.resolve()
    source = source_recipe(glue_dir, work)
    check_glue_dir(glue_dir, [*source.task_names, NEW_TASK])
    new_task = TaskConfig(name=NEW_TASK, source=str(glue_dir / NEW_TASK))
    source_seed = source.train.seed
    payload: dict[str, Any] = {
        "suite": "transfer_fewshot",
        "tasks": [*source.task_names, NEW_TASK],
        # Shots and seeds are per run, so an invocation with other ones keeps these runs.
        "settings": {"fresh_lr": args.fresh_lr},
        "shots": sorted({*SHOTS, *args.shots}),
        "source_recipe": source.model_dump(mode="json", exclude={"output_dir"}),
        "majority": {t.name: majority_score(t, source_seed) for t in [*source.tasks, new_task]},
        "environment": environment(torch.device("cpu")) | {"workers": args.workers},
    }
    # What kept_runs compares per run: each configuration's adapter and training keys.
    payload["configs"] = {"source": _compared(source)}
    for shots in payload["shots"]:  # a transfer is only as good as the source it started from
        payload["configs"][f"transfer_k{shots}"] = {"shots": shots} | payload["configs"]["source"]
        payload["configs"][f"fresh_lora_k{shots}"] = {"shots": shots, "lr": args.fresh_lr}
    kept = kept_runs(args.out, payload)
    done = {(r["config"], r["seed"]) for r in kept}
    if ("source", source_seed) not in done:
        job = Job("source", source_seed, source, threads=1)
        kept = run_jobs([job], 1, payload, args.out, kept)["runs"]
    jobs = []
    for shots in args.shots:
        for seed in args.seeds:
            transfer = transfer_recipe(source, glue_dir, work, shots, seed)
            fresh = fresh_lora_recipe(transfer, source, args.fresh_lr, work)
            jobs += [Job(f"transfer_k{shots}", seed, transfer, threads=1),
                     Job(f"fresh_lora_k{shots}", seed, fresh, threads=1)]  # fmt: skip
    jobs = [job for job in jobs if (job.config, job.seed) not in done]
    print(f"{len(kept)} runs kept from {args.out}, {len(jobs)} to train", flush=True)
    payload = run_jobs(jobs, args.workers, payload, args.out, kept)
    print(markdown(payload))


def _compared(recipe: Recipe) -> dict[str, Any]:
    """The recipe keys a kept run must share, data folders by name only (machines differ)."""
    dumped = recipe.model_dump(mode="json", include={"adapter", "tasks", "data", "train"})
    tasks = [t | {"source": Path(t["source"]).name} for t in dumped["tasks"]]
    return dumped | {"tasks": tasks}


if __name__ == "__main__":
    main()
