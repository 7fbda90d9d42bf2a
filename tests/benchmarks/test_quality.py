"""The quality suite's bookkeeping: keeping the runs of an earlier results JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.quality import PAPER_MORE, kept_runs, run_jobs, training_curve
from more_cli.rundir import RunDir


def _payload(steps: int = 400, configs: dict | None = None) -> dict:
    configs = configs or {"lora": {"kind": "lora"}, "more": PAPER_MORE}
    return {"tasks": ["rte"], "settings": {"steps": steps}, "configs": configs}


def _run(config: str, seed: int) -> dict:
    return {"config": config, "seed": seed, "average": 50.0, "reused": False}


def test_runs_of_the_same_settings_and_configuration_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    earlier = _payload() | {"runs": [_run("lora", 1), _run("more", 1), _run("moelora", 1)]}
    earlier["configs"]["moelora"] = {"kind": "moelora"}
    out.write_text(json.dumps(earlier))

    kept = kept_runs(out, _payload())
    assert [(r["config"], r["seed"], r["reused"]) for r in kept] == [
        ("lora", 1, True), ("more", 1, True),
    ]  # fmt: skip
    assert kept_runs(out, _payload(steps=100)) == []  # other settings: nothing kept
    changed = _payload(configs={"lora": {"kind": "lora"}, "more": PAPER_MORE | {"r": 4}})
    assert [r["config"] for r in kept_runs(out, changed)] == ["lora"]
    assert kept_runs(tmp_path / "missing.json", _payload()) == []


def test_a_more_row_written_before_the_defaults_moved_is_the_papers_more(tmp_path: Path) -> None:
    """Such a JSON says only {"kind": "more"}: the paper's MoRE then, not today's default."""
    out = tmp_path / "quality.json"
    old = {"lora": {"kind": "lora"}, "more": {"kind": "more"}}
    out.write_text(json.dumps(_payload(configs=old) | {"runs": [_run("more", 1)]}))
    assert [r["config"] for r in kept_runs(out, _payload())] == ["more"]
    today = _payload(configs={"more": {"kind": "more"}})
    assert kept_runs(out, today) == []


def test_a_configuration_that_is_no_adapter_config_is_compared_as_it_is(tmp_path: Path) -> None:
    out = tmp_path / "transfer.json"
    configs = {"source": {"adapter": {"kind": "more"}, "train": {"lr": 3e-4}}}
    out.write_text(json.dumps(_payload(configs=configs) | {"runs": [_run("source", 1)]}))
    assert [r["config"] for r in kept_runs(out, _payload(configs=configs))] == ["source"]


def test_settings_with_tuples_match_their_json_form(tmp_path: Path) -> None:
    """The payload holds seeds as a tuple; the JSON written earlier holds a list."""
    out = tmp_path / "quality.json"
    settings = {"steps": 400, "seeds": (1, 2)}
    out.write_text(json.dumps(_payload() | {"settings": settings, "runs": [_run("lora", 1)]}))
    kept = kept_runs(out, _payload() | {"settings": settings})
    assert [(r["config"], r["seed"]) for r in kept] == [("lora", 1)]


def test_adding_seeds_keeps_the_runs_of_the_earlier_ones(tmp_path: Path) -> None:
    """``--seeds 2 3 --keep-results`` after a seed-1 suite: the seed-1 runs stay in the JSON,
    whose settings then name every seed it holds."""
    out = tmp_path / "quality.json"
    earlier = _payload() | {"settings": {"steps": 400, "seeds": [1]}, "runs": [_run("lora", 1)]}
    out.write_text(json.dumps(earlier))
    later = _payload() | {"settings": {"steps": 400, "seeds": (2, 3)}}
    kept = kept_runs(out, later)
    assert [(r["config"], r["seed"]) for r in kept] == [("lora", 1)]
    written = run_jobs([], 1, later, out, kept, summarize_runs=lambda runs: {})
    assert written["settings"] == {"steps": 400, "seeds": [1, 2, 3]}
    assert [r["seed"] for r in written["runs"]] == [1]
    other = _payload() | {"settings": {"steps": 100, "seeds": (2,)}}
    assert kept_runs(out, other) == []  # a setting other than the seeds still differs


def test_the_curve_holds_each_evaluation_with_the_router_at_its_step(tmp_path: Path) -> None:
    def router(rank: float, changed: int | None) -> dict:
        trace = {"mean_rank": {"rte": rank}, "confidence": {"rte": 0.5}}
        return {"router": trace | ({} if changed is None else {"changed": changed})}

    records = [
        {"step": 10, "loss": 1.0} | router(2.0, None),
        {"step": 20, "loss": 1.0} | router(3.0, 4),
        {"step": 20, "split": "val_select", "eval": {}, "average": 50.0},
        {"step": 30, "loss": 1.0} | router(3.0, 1),
        {"step": 40, "loss": 1.0} | router(3.5, 2),
        {"step": 40, "split": "val_select", "eval": {}, "average": 55.0},
    ]
    run = RunDir(tmp_path)
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    curve = training_curve(run)
    assert [(p["step"], p["average"]) for p in curve] == [(20, 50.0), (40, 55.0)]
    assert [p["router"]["changed"] for p in curve] == [4, 3]
    assert curve[1]["router"]["mean_rank"] == {"rte": 3.5}


_ORPHAN_WORKER = """
import multiprocessing, sys
from tests.benchmarks.test_quality import sleep_until_stopped
if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(
        target=sleep_until_stopped, args=(sys.argv[1],)
    )
    child.start()
    print(child.pid, flush=True)
    import os
    os._exit(0)  # the suite dies without a word to its worker
"""


def sleep_until_stopped(marker: str) -> None:
    """A stand-in for a training worker: SIGTERM makes it write ``marker`` and stop."""
    import signal
    import sys
    import time

    from benchmarks.quality import stop_when_orphaned

    def stopped(signum: int, frame: object) -> None:
        Path(marker).write_text("stopped")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stopped)
    stop_when_orphaned(poll_s=0.1)
    time.sleep(60)


def test_a_worker_whose_suite_is_gone_stops_as_on_sigterm(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    marker = tmp_path / "stopped"
    repo = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-c", _ORPHAN_WORKER, str(marker)], cwd=repo, check=True, timeout=60
    )
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.read_text() == "stopped"
