"""Quality study on all 8 GLUE tasks: each method's learning rate picked on val_select, then
three seeds scored once on val_test, with paired differences to LoRA.

The setting (meant to be calibrated so that plain LoRA clears every task's trivial score;
it does on RTE and MRPC, not on CoLA, where every run ends at MCC 0: docs/benchmarks.md):
the MiniLM encoder (``demo:minilm``, one head per task), the 8 tasks of
the local GLUE copy (``../shared/data/glue``), every training split capped at 9,000 rows
(only SST-2 is larger), inputs cut at 64 tokens, balanced sampling, batch 16, r = 8,
alpha = 32, adapters on every linear layer (``bert`` targets), the same steps, data and
heads for every method. Each run evaluates on ``val_select`` every quarter of its steps and
keeps the best checkpoint; that checkpoint is scored once on ``val_test``.

Protocol, in two stages that can be run (and resumed) separately:

1. ``--stage select``: every method at every learning rate of the grid, seed 2023. A
   method's learning rate is the one with the best ``val_select`` average.
2. ``--stage test``: seeds 2024 and 2025 at each method's picked rate. Seed 2023 is the
   selection run at that rate: its ``val_test`` score was written once at the end of its
   training and plays no part in the choice.

The report gives per-task mean ± std over the three seeds, the average, and for every method
the paired per-seed difference of the average to LoRA with a 95 % t-interval (scipy).
``peft_lora`` is the reference row of the peer: the ``lora`` configuration trained with
PEFT's own LoRA layer computing every update, everything else the same.
Runs are reused and resumed exactly as in :mod:`benchmarks.quality`; the results JSON is
rewritten after every run, so a stopped study keeps what it finished.

    python -m benchmarks.glue8 --stage select              # 5 methods x 3 rates
    python -m benchmarks.glue8 --stage test                # 5 methods x 2 more seeds
    python -m benchmarks.glue8 --stage select --configs lora more --lrs 1e-3
    python -m benchmarks.glue8 --stage select --runs lora@3e-4 more@3e-3   # in this order
    python -m benchmarks.glue8 --stage select --runs peft_lora@3e-4   # PEFT's LoRA, reference
    python -m benchmarks.glue8 --stage test --runs more_no_cl@3e-4 --seeds 2024
    python -m benchmarks.glue8 --stage test --configs lora --seeds 2026 2027   # extra seeds
    python -m benchmarks.glue8 --report                    # tables from the JSON
    python -m benchmarks.glue8 --calibration RUN_DIR ...   # record calibration runs
    python -m benchmarks.glue8 --calibration RUN_DIR ... --calibration-out OTHER.json

Calibration (how the step budget was chosen): plain LoRA and MoRE trained with ``more train``
on the same setting at one rate, evaluated on ``val_select`` every 1,000 steps; the budget is
the one at which LoRA clears every task's trivial score on ``val_select`` (CoLA MCC > 10,
RTE > 55, MRPC above its 74.2 majority score). ``--calibration`` records such runs (their
``val_select`` curves and final ``val_test`` scores) in ``results/glue8_calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from benchmarks.common import RESULTS_DIR, environment, write_json
from benchmarks.quality import (
    ABLATIONS,
    ALPHA,
    DEFAULT_GLUE_DIR,
    HEADLINE_NAMES,
    METHODS,
    RANK,
    REPO_ROOT,
    Job,
    Settings,
    cell,
    check_glue_dir,
    encoder_recipe,
    kept_runs,
    mean_std,
    run_jobs,
)
from more_cli.recipe_io import load_recipe
from more_cli.rundir import RunDir, read_json, read_run_info

TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
SELECT_SEED, TEST_SEEDS = 2023, (2024, 2025)
# Seeds beyond the protocol's three, for narrowing a paired interval; named explicitly with
# --seeds, every run of them is reported (pairs use the seeds both methods have).
EXTRA_SEEDS = (2026, 2027)
LR_GRID = (3e-4, 1e-3, 3e-3)
# eval_samples caps each half of the validation split (max_eval_samples applies after the
# val_select / val_test halving, rows drawn with the run's seed): only QNLI's halves
# (2,732 / 2,731 rows) are cut.
SETTINGS = Settings(
    steps=3000,
    seeds=(SELECT_SEED, *TEST_SEEDS),
    train_samples=9000,
    eval_samples=2000,
    batch_size=16,
    lr=LR_GRID[1],
    max_source_length=64,
)
METHOD_CONFIGS = [name for name in METHODS if name != "per_task_lora"]
# MoRE's ablations (candidate fixes) run under the same protocol when named in --configs.
CONFIGS = {name: METHODS.get(name) or ABLATIONS[name] for name in METHOD_CONFIGS + list(ABLATIONS)}
# The peer's reference row: the `lora` configuration with PEFT's own LoRA layer computing
# every update (benchmarks.peers.use_peft_lora_layers); run at LoRA's picked rate, e.g.
# --stage select --runs peft_lora@3e-4.
PEER_CONFIGS = {"peft_lora": "lora"}
CONFIGS |= {peer: CONFIGS[ours] for peer, ours in PEER_CONFIGS.items()}
OUT_JSON = RESULTS_DIR / "glue8.json"
CALIBRATION_JSON = RESULTS_DIR / "glue8_calibration.json"
# A predictor's trivial score on val_select that the calibrated setting must clear with LoRA.
TRIVIAL = {"cola": 10.0, "rte": 55.0, "mrpc": 74.2}


def job(config: str, seed: int, lr: float, settings: Settings, glue_dir: Path, work: Path) -> Job:
    run_dir = work / f"{config}-lr{lr:g}-s{seed}"
    train = {"lr": lr, "eval_every": max(settings.steps // 4, 1), "save_every": settings.steps}
    recipe = encoder_recipe(
        config, seed, settings, glue_dir, run_dir,
        adapter=CONFIGS[config], tasks=TASKS, train=train,
    )  # fmt: skip
    return Job(config, seed, recipe, threads=1, peft_layers=config in PEER_CONFIGS)


def picked_lrs(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per method, the grid rate whose selection-seed run has the best val_select average."""
    best: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run["seed"] != SELECT_SEED or run.get("select_average") is None:
            continue
        if (
            run["config"] not in best
            or run["select_average"] > best[run["config"]]["select_average"]
        ):
            best[run["config"]] = run
    return {config: run["lr"] for config, run in best.items()}


def summarize_study(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The selection table (val_select per rate) and, at each picked rate, the test summary
    over seeds with paired differences to LoRA."""
    picked = picked_lrs(runs)
    selection = {
        config: {f"{run['lr']:g}": run["select_average"] for run in runs
                 if run["config"] == config and run["seed"] == SELECT_SEED}
        for config in dict.fromkeys(run["config"] for run in runs)
    }  # fmt: skip
    chosen = {
        config: sorted(
            (r for r in runs if r["config"] == config and r["lr"] == lr), key=lambda r: r["seed"]
        )
        for config, lr in picked.items()
    }
    test: dict[str, Any] = {}
    for config, mine in chosen.items():
        tasks = list(mine[0]["tasks"])
        test[config] = {
            "lr": picked[config],
            "seeds": [r["seed"] for r in mine],
            "tasks": {t: mean_std([r["tasks"][t]["headline"] for r in mine]) for t in tasks},
            "average": mean_std([r["average"] for r in mine]),
            "parameters": mine[0]["parameters"],
        }
        if config != "lora" and "lora" in chosen:
            test[config]["vs_lora"] = paired_difference(mine, chosen["lora"])
    return {"picked_lr": picked, "selection": selection, "test": test}


def paired_difference(
    runs: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Per seed both have, ``average - reference average``; mean and 95 % t-interval."""
    by_seed = {r["seed"]: r["average"] for r in reference}
    pairs = {r["seed"]: r["average"] - by_seed[r["seed"]] for r in runs if r["seed"] in by_seed}
    values = list(pairs.values())
    result: dict[str, Any] = {"per_seed": pairs, "mean": statistics.fmean(values)}
    if len(values) > 1:
        half = stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)
        result["ci95"] = [result["mean"] - half, result["mean"] + half]
    return result


def markdown(summary: dict[str, Any]) -> str:
    """The selection table and the test table of a study summary."""
    lines = ["Learning-rate selection (val_select average, seed 2023; the rate picked among "
             "several in bold):", ""]  # fmt: skip
    grid = sorted({lr for rates in summary["selection"].values() for lr in rates}, key=float)
    lines += ["| config | " + " | ".join(f"lr {lr}" for lr in grid) + " |",
              "|---|" + "---:|" * len(grid)]  # fmt: skip
    for config, rates in summary["selection"].items():
        tried = [lr for lr, value in rates.items() if value is not None]
        picked = f"{summary['picked_lr'].get(config, 0):g}" if len(tried) > 1 else None
        cells = [
            ("—" if rates.get(lr) is None else
             f"**{rates[lr]:.1f}**" if lr == picked else f"{rates[lr]:.1f}")
            for lr in grid
        ]  # fmt: skip
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    test = summary["test"]
    if not test:
        return "\n".join(lines)
    tasks = list(next(iter(test.values()))["tasks"])
    header = [f"{t} {HEADLINE_NAMES.get(t, '')}".strip() for t in tasks]
    lines += ["", "val_test at the picked rate (mean ± std over seeds):", "",
              "| config | lr | seeds | " + " | ".join(header)
              + " | average | Δ vs lora (per seed) | 95 % CI |",
              "|---|---:|---:|" + "---:|" * (len(tasks) + 3)]  # fmt: skip
    for config, row in test.items():
        diff = row.get("vs_lora")
        per_seed = " / ".join(f"{d:+.1f}" for d in diff["per_seed"].values()) if diff else "—"
        interval = (
            f"[{diff['ci95'][0]:+.1f}, {diff['ci95'][1]:+.1f}]" if diff and "ci95" in diff else "—"
        )
        cells = [cell(row["tasks"][t]) for t in tasks]
        lines.append(
            f"| {config} | {row['lr']:g} | {len(row['seeds'])} | " + " | ".join(cells)
            + f" | **{cell(row['average'])}** | {per_seed} | {interval} |"
        )  # fmt: skip
    return "\n".join(lines)


def curves_markdown(runs: Sequence[dict[str, Any]]) -> str:
    """Each run's ``val_select`` average at every evaluation and, for MoRE, its router then:
    the mean chosen rank over tasks and layers, and the choices that moved since the
    previous evaluation. Runs recorded before curves were kept are left out."""
    with_curves = [r for r in runs if r.get("curve")]
    if not with_curves:
        return ""
    steps = sorted({point["step"] for r in with_curves for point in r["curve"]})
    lines = ["val_select average at each evaluation (router: mean rank, choices moved):", "",
             "| run | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|" + "---:|" * len(steps)]  # fmt: skip
    for run in sorted(with_curves, key=lambda r: (r["config"], r["lr"], r["seed"])):
        at = {point["step"]: point for point in run["curve"]}
        cells = []
        for step in steps:
            point = at.get(step)
            if point is None:
                cells.append("—")
                continue
            cell_text = f"{point['average']:.1f}"
            if "router" in point:
                ranks = point["router"]["mean_rank"].values()
                moved = point["router"]["changed"]
                cell_text += f" ({statistics.fmean(ranks):.2f}, {moved})"
            cells.append(cell_text)
        name = f"{run['config']} lr {run['lr']:g} s{run['seed']}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration_record(run_dir: Path) -> dict[str, Any]:
    """One calibration run: recipe essentials, ``val_select`` curve, ``val_test`` (an
    unfinished run, stopped to be resumed, has its curve so far and no ``val_test``)."""
    run = RunDir(run_dir)
    recipe, info = load_recipe(run.recipe, resolved=True), read_run_info(run)
    report = read_json(run.eval) if run.eval.is_file() else {"tasks": {}, "average": None}
    evals = [
        {"step": r["step"], "average": r["average"],
         "tasks": {t: m["headline"] for t, m in r["eval"].items()}}
        for r in map(json.loads, run.metrics.read_text().splitlines())
        if r.get("split") == "val_select"
    ]  # fmt: skip
    return {
        "run_dir": str(run_dir),
        "status": info.get("status"),
        "step": info.get("step"),
        "kind": recipe.adapter.kind,
        "lr": recipe.train.lr,
        "steps": recipe.train.max_steps,
        "seed": recipe.train.seed,
        "batch_size": recipe.train.batch_size,
        "max_source_length": recipe.data.max_source_length,
        "tasks": recipe.task_names,
        "val_select": evals,
        "clears_trivial_scores_at": [  # of the tasks the run has (a probe may have one)
            e["step"]
            for e in evals
            if all(e["tasks"][t] > v for t, v in TRIVIAL.items() if t in e["tasks"])
        ],
        "best_step": info.get("best_step"),
        "val_test": {t: m["headline"] for t, m in report["tasks"].items()},
        "val_test_average": report["average"],
        "parameters": info.get("parameters"),
        "started": info.get("created"),
        "finished": info.get("updated"),
    }


def calibration_markdown(records: Sequence[dict[str, Any]]) -> str:
    tasks = records[0]["tasks"]
    lines = ["| run | step | split | " + " | ".join(tasks) + " | average |",
             "|---|---:|---|" + "---:|" * (len(tasks) + 1)]  # fmt: skip
    for record in records:
        name = f"{record['kind']} lr {record['lr']:g}"
        for e in record["val_select"]:
            cells = " | ".join(f"{e['tasks'][t]:.1f}" for t in tasks)
            lines.append(f"| {name} | {e['step']} | val_select | {cells} | {e['average']:.1f} |")
        if record["val_test_average"] is None:
            lines.append(f"| {name} | (stopped at {record['step']}) | val_test | not yet |")
            continue
        cells = " | ".join(f"{record['val_test'][t]:.1f}" for t in tasks)
        best, average = record["best_step"], record["val_test_average"]
        lines.append(f"| {name} | best ({best}) | val_test | {cells} | **{average:.1f}** |")
    return "\n".join(lines)


def wanted_runs(
    args: argparse.Namespace, kept: Sequence[dict[str, Any]]
) -> list[tuple[str, int, float]]:
    """``(config, seed, lr)`` of every run the invocation asks for, finished or not.

    The test stage trains each config at the rate its selection run picked; with ``--runs``
    at the rate given instead, which is how an ablation's test seeds can run beside its
    selection run (the ablations run at the rate MoRE picked; what is kept as the default is
    still decided on ``val_select``)."""
    if args.stage == "select":
        return [(c, SELECT_SEED, lr) for c, lr in args.runs or selection_grid(args)]
    if args.runs:
        return [(c, seed, lr) for seed in args.seeds for c, lr in args.runs]
    picked = picked_lrs(kept)
    missing = [c for c in args.configs if c not in picked]
    if missing:
        sys.exit(f"error: no selection run for {', '.join(missing)}; run --stage select first")
    return [(c, seed, picked[c]) for seed in args.seeds for c in args.configs]


def selection_grid(args: argparse.Namespace) -> list[tuple[str, float]]:
    """Every named config at every named rate, rate by rate."""
    return [(config, lr) for lr in args.lrs for config in args.configs]


def config_at_rate(text: str) -> tuple[str, float]:
    """``more@3e-3`` -> ``("more", 0.003)``, for ``--runs``."""
    config, _, rate = text.partition("@")
    if config not in CONFIGS:
        raise argparse.ArgumentTypeError(f"unknown config {config!r}: one of {', '.join(CONFIGS)}")
    try:
        return config, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write CONFIG@LR, e.g. more@3e-3") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["select", "test"])
    parser.add_argument("--report", action="store_true", help="tables from the JSON only")
    parser.add_argument("--calibration", type=Path, nargs="+", help="record calibration runs")
    parser.add_argument(
        "--calibration-out", type=Path, default=CALIBRATION_JSON,
        help="where --calibration writes (default results/glue8_calibration.json)",
    )  # fmt: skip
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=METHOD_CONFIGS)
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LR_GRID))
    parser.add_argument(
        "--runs",
        type=config_at_rate,
        nargs="+",
        metavar="CONFIG@LR",
        help="runs to train, in this order (instead of --configs x --lrs); with --stage test "
        "their test seeds at that rate, before their selection run has finished",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", choices=TEST_SEEDS + EXTRA_SEEDS,
        default=list(TEST_SEEDS),
        help="--stage test: the seeds to train (default 2024 2025; 2026 2027 are extra seeds)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=SETTINGS.steps)
    parser.add_argument("--glue-dir", type=Path, default=DEFAULT_GLUE_DIR)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "runs" / "bench-glue8")
    args_given = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(args_given)
    if args.calibration:
        records = [calibration_record(run_dir) for run_dir in args.calibration]
        write_json(args.calibration_out, {"suite": "glue8-calibration", "runs": records})
        print(calibration_markdown(records))
        return
    if args.report or args.stage is None:
        results = read_json(args.out)
        print(markdown(results["summary"]) + "\n\n" + curves_markdown(results["runs"]))
        return
    settings = Settings(**asdict(SETTINGS) | {"steps": args.steps})
    glue_dir = args.glue_dir.resolve()
    check_glue_dir(glue_dir, TASKS)
    payload = {
        "suite": "glue8",
        "command": shlex.join(["python", "-m", "benchmarks.glue8", *args_given]),
        "model": "demo:minilm (all-MiniLM-L6-v2)",
        "tasks": list(TASKS),
        "settings": asdict(settings) | {"r": RANK, "alpha": ALPHA, "targets": "bert"},
        "configs": CONFIGS,
        "environment": environment(torch.device("cpu")) | {"workers": args.workers},
    }
    kept = kept_runs(args.out, payload)
    done = {(r["config"], r["seed"], r["lr"]) for r in kept}
    work = args.work_dir.resolve()
    jobs = [
        job(config, seed, lr, settings, glue_dir, work)
        for config, seed, lr in wanted_runs(args, kept)
        if (config, seed, lr) not in done
    ]
    print(f"{len(kept)} runs kept from {args.out}, {len(jobs)} to train", flush=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    payload = run_jobs(jobs, args.workers, payload, args.out, kept, summarize_study)
    print(markdown(payload["summary"]) + "\n\n" + curves_markdown(payload["runs"]))


if __name__ == "__main__":
    main()
