"""The 8-task study's bookkeeping: rate picked on val_select only, paired statistics."""

from __future__ import annotations

import pytest
from scipy import stats

from benchmarks.glue8 import (
    calibration_markdown,
    calibration_record,
    markdown,
    paired_difference,
    picked_lrs,
    summarize_study,
)


def _run(config: str, seed: int, lr: float, select: float, test: float) -> dict:
    return {
        "config": config, "seed": seed, "lr": lr, "select_average": select,
        "tasks": {"rte": {"headline": test}}, "average": test, "parameters": None,
    }  # fmt: skip


RUNS = [
    _run("lora", 2023, 1e-3, 60.0, 50.0),
    _run("lora", 2023, 3e-3, 58.0, 99.0),  # best on val_test, worse on val_select
    _run("more", 2023, 1e-3, 59.0, 51.0),
    _run("more", 2023, 3e-3, 61.0, 53.0),
    _run("lora", 2024, 1e-3, None, 52.0),
    _run("more", 2024, 3e-3, None, 55.0),
    _run("lora", 2025, 1e-3, None, 54.0),
    _run("more", 2025, 3e-3, None, 54.0),
    _run("more", 2024, 1e-3, None, 90.0),  # not at the picked rate: ignored
]


def test_the_rate_is_picked_on_val_select_never_on_val_test() -> None:
    assert picked_lrs(RUNS) == {"lora": 1e-3, "more": 3e-3}


def test_paired_differences_and_interval() -> None:
    summary = summarize_study(RUNS)
    more = summary["test"]["more"]
    assert more["seeds"] == [2023, 2024, 2025] and more["lr"] == 3e-3
    diff = more["vs_lora"]
    assert diff["per_seed"] == {2023: 3.0, 2024: 3.0, 2025: 0.0}
    assert diff["mean"] == pytest.approx(2.0)
    half = stats.t.ppf(0.975, 2) * stats.sem([3.0, 3.0, 0.0])
    assert diff["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert "vs_lora" not in summary["test"]["lora"]
    assert summary["selection"]["lora"] == {"0.001": 60.0, "0.003": 58.0}


def test_an_extra_seed_of_one_method_only_is_left_out_of_the_pairs() -> None:
    extra = [*RUNS, _run("lora", 2026, 1e-3, None, 70.0)]
    summary = summarize_study(extra)
    assert summary["test"]["lora"]["seeds"] == [2023, 2024, 2025, 2026]
    assert summary["test"]["more"]["vs_lora"] == summarize_study(RUNS)["test"]["more"]["vs_lora"]


def test_one_seed_has_no_interval_and_the_tables_render() -> None:
    one = [r for r in RUNS if r["seed"] == 2023]
    assert "ci95" not in paired_difference(one, one)
    text = markdown(summarize_study(RUNS))
    assert "| more | 3e-03 |" not in text and "| more | 0.003 | 3 |" in text
    assert "**61.0**" in text and "+3.0 / +3.0 / +0.0" in text
    ablation = markdown(summarize_study([*RUNS, _run("more_no_cl", 2023, 1e-3, 62.0, 52.0)]))
    assert "| more_no_cl | 62.0 | — |" in ablation  # one rate tried: nothing was picked


def _calibration_run(tmp_path, curve: list[tuple[int, dict]], final: dict[str, float]):
    """A finished run directory as `more train` leaves it: the recipe, ``val_select`` records
    at each step of ``curve`` and ``final`` as its ``val_test`` scores."""
    from more_cli.recipe import Recipe
    from more_cli.recipe_io import dump_resolved
    from more_cli.rundir import RunDir, append_jsonl, atomic_write_json, write_run_info

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    recipe = Recipe.model_validate(
        {"model": {"name": "demo:minilm"}, "adapter": {"kind": "lora"},
         "tasks": [{"name": t} for t in final],
         "train": {"lr": 3e-4, "max_steps": curve[-1][0]}, "output_dir": str(run.root)}
    )  # fmt: skip
    dump_resolved(recipe, run.recipe)
    write_run_info(run, status="finished", best_step=curve[-1][0])
    append_jsonl(run.metrics, {"step": 50, "loss": 1.0})
    for step, scores in curve:
        evaluation = {t: {"headline": v} for t, v in scores.items()}
        average = sum(scores.values()) / len(scores)
        append_jsonl(run.metrics, {"step": step, "split": "val_select", "eval": evaluation,
                                   "average": average})  # fmt: skip
    tasks = {t: {"headline": v} for t, v in final.items()}
    average = sum(final.values()) / len(final)
    atomic_write_json(run.eval, {"split": "val_test", "tasks": tasks, "average": average})
    return run


def test_a_calibration_run_is_recorded_with_its_val_select_curve(tmp_path) -> None:
    from more_cli.rundir import write_run_info

    curve = [(1000, {"cola": 0.0, "rte": 60.0, "mrpc": 80.0}),
             (2000, {"cola": 12.0, "rte": 56.0, "mrpc": 75.0})]  # fmt: skip
    run = _calibration_run(tmp_path, curve, {"cola": 11.0, "rte": 57.0, "mrpc": 76.0})
    record = calibration_record(run.root)
    assert record["kind"] == "lora" and record["lr"] == 3e-4 and record["steps"] == 2000
    assert [e["step"] for e in record["val_select"]] == [1000, 2000]
    assert record["clears_trivial_scores_at"] == [2000]  # step 1000: CoLA MCC 0
    assert record["val_test"]["rte"] == 57.0 and record["best_step"] == 2000
    assert "| lora lr 0.0003 | best (2000) | val_test |" in calibration_markdown([record])
    run.eval.unlink()  # a run stopped before its end: the curve so far, no val_test
    write_run_info(run, status="interrupted", step=2000)
    stopped = calibration_record(run.root)
    assert stopped["val_test_average"] is None and stopped["status"] == "interrupted"
    assert "(stopped at 2000) | val_test | not yet" in calibration_markdown([stopped])


def test_a_probe_of_some_tasks_is_judged_on_the_trivial_scores_of_those(tmp_path) -> None:
    curve = [(750, {"cola": 6.3}), (1000, {"cola": 13.3})]
    record = calibration_record(_calibration_run(tmp_path, curve, {"cola": 14.9}).root)
    assert record["tasks"] == ["cola"] and record["clears_trivial_scores_at"] == [1000]
    assert "| lora lr 0.0003 | best (1000) | val_test | 14.9 | **14.9** |" in (
        calibration_markdown([record])
    )


def test_runs_are_named_config_at_rate() -> None:
    import argparse

    from benchmarks.glue8 import config_at_rate

    assert config_at_rate("more@3e-3") == ("more", 0.003)
    for bad in ("nope@1e-3", "more@fast", "more"):
        with pytest.raises(argparse.ArgumentTypeError):
            config_at_rate(bad)


def test_the_test_stage_trains_the_picked_rate_or_the_named_one() -> None:
    import argparse

    from benchmarks.glue8 import wanted_runs

    kept = [_run("lora", 2023, 3e-4, 66.0, 65.0), _run("lora", 2023, 1e-3, 40.0, 39.0)]
    test = argparse.Namespace(stage="test", runs=None, configs=["lora"], seeds=[2024, 2025])
    assert wanted_runs(test, kept) == [("lora", 2024, 3e-4), ("lora", 2025, 3e-4)]
    named = argparse.Namespace(stage="test", runs=[("more", 3e-4)], configs=[], seeds=[2025])
    assert wanted_runs(named, []) == [("more", 2025, 3e-4)]
    with pytest.raises(SystemExit, match="no selection run for more"):
        wanted_runs(
            argparse.Namespace(stage="test", runs=None, configs=["more"], seeds=[2024]), kept
        )


def test_curves_show_each_evaluation_and_the_router_at_it() -> None:
    from benchmarks.glue8 import curves_markdown

    router = {"mean_rank": {"rte": 3.0, "cola": 5.0}, "confidence": {}, "changed": 7}
    runs = [
        _run("more", 2023, 1e-3, 61.0, 53.0)
        | {"curve": [{"step": 750, "average": 50.0, "router": router},
                     {"step": 1500, "average": 55.25, "router": router | {"changed": 0}}]},
        _run("lora", 2023, 3e-4, 60.0, 50.0) | {"curve": [{"step": 750, "average": 58.0}]},
        _run("lora", 2023, 1e-3, 60.0, 50.0),  # recorded before curves: left out
    ]  # fmt: skip
    lines = curves_markdown(runs).splitlines()
    assert lines[2] == "| run | step 750 | step 1500 |"
    assert lines[4:] == [
        "| lora lr 0.0003 s2023 | 58.0 | — |",
        "| more lr 0.001 s2023 | 50.0 (4.00, 7) | 55.2 (4.00, 0) |",
    ]
    assert curves_markdown(runs[2:]) == ""


def test_every_config_of_the_study_is_a_valid_recipe(tmp_path) -> None:
    from benchmarks.glue8 import CONFIGS, SETTINGS, job
    from more_cli.adapters.router import Router

    adapters = {
        config: job(config, 2023, 3e-4, SETTINGS, tmp_path, tmp_path / "work").recipe.adapter
        for config in CONFIGS
    }
    assert all(adapters[config].kind == CONFIGS[config]["kind"] for config in CONFIGS)
    full = adapters["more_full_rank"]
    router = Router(full, ["a", "b"], [16, 16])
    assert bool((router.chosen_ranks() == full.r).all())
