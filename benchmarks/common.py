"""Shared pieces of the benchmarks: interleaved timing, paired ratios, environment, output.

Timings on a shared machine drift as other work comes and goes. Three habits make the
ratios robust to that: every round runs each method once, in an order rotated round by
round; a ratio is the median over rounds of ``t_method / t_reference`` taken *within* the
same round, so both sides of a ratio saw the same load; and on CPU the clock is this
process's CPU time, which leaves out the time the OS hands to other jobs (with one torch
thread it is the latency the step would have on an idle core). CUDA uses wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The adapter set-ups compared, as AdapterConfig fields on top of r and the targets.
# "more" is MoRE with the paper's contrastive loss (cl_weight 0.1, the costliest set-up and
# the one the speed goals are stated for); "more_no_cl" is the shipped default (no loss) and
# "more_shared" shows what the embedding layout costs.
VARIANTS: dict[str, dict[str, object]] = {
    "lora": {"kind": "lora"},
    "more": {"kind": "more", "cl_weight": 0.1},
    "more_shared": {"kind": "more", "task_embedding": "shared", "cl_weight": 0.1},
    "more_no_cl": {"kind": "more", "cl_weight": 0.0},
    "moelora": {"kind": "moelora"},
    "multilora": {"kind": "multilora"},
    "per_task_lora": {"kind": "per_task_lora"},
    "mosld": {"kind": "mosld"},
}


def adamw(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The benchmarks' optimizer: torch's fused AdamW, as ``more train`` takes it and as the
    Hugging Face Trainer does by default (``adamw_torch_fused`` for torch >= 2.8), so the
    peer's step and ours pay the same optimizer."""
    return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01, fused=True)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for queued device work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def clock_for(device: torch.device, name: str = "auto") -> Callable[[], float]:
    """``cpu``: process CPU time (all threads); ``wall``: wall time; ``auto`` picks by device."""
    if name == "auto":
        name = "wall" if device.type == "cuda" else "cpu"
    return time.process_time if name == "cpu" else time.perf_counter


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int,
    sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each method, ``rounds`` samples each, methods alternating.

    Round ``i`` starts at method ``i mod n``, so no method always follows the same one
    (caches and allocator state left by the previous method then average out).
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    sync()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            calls[name]()
            sync()
            seconds[name].append(clock() - start)
    return seconds


def inference_call(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], routing: dict[str, object]
) -> Callable[[], None]:
    """A forward pass without gradients in eval mode; ``routing`` are the extra keyword
    arguments that pick each sample's task (``task_ids``, PEFT's ``adapter_names``)."""
    model.eval()

    def forward() -> None:
        with torch.inference_mode():
            model(**batch, **routing)

    return forward


def measure(
    calls: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int,
    device: torch.device,
    clock: str = "auto",
) -> dict[str, list[float]]:
    """:func:`time_interleaved` with the device's synchronisation and the chosen clock."""
    return time_interleaved(calls, rounds, warmup, synchronizer(device), clock_for(device, clock))


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is steadier when shared)"
    )
    parser.add_argument(
        "--clock", choices=("auto", "cpu", "wall"), default="auto",
        help="auto = process CPU time on CPU (robust to other jobs), wall time on CUDA",
    )  # fmt: skip


def summarize(seconds: dict[str, list[float]], reference: str) -> dict[str, dict[str, float]]:
    """Median milliseconds and the paired ratio to ``reference`` (median and quartiles)."""
    summary = {}
    for name, samples in seconds.items():
        ratios = [t / r for t, r in zip(samples, seconds[reference], strict=True)]
        quartiles = statistics.quantiles(ratios, n=4, method="inclusive")
        summary[name] = {
            "median_ms": 1000 * statistics.median(samples),
            "ratio": statistics.median(ratios),
            "ratio_q1": quartiles[0],
            "ratio_q3": quartiles[-1],
        }
    return summary


def format_table(summary: dict[str, dict[str, float]], reference: str) -> str:
    """A Markdown table of one ``summarize`` result."""
    lines = [
        f"| method | median ms | × {reference} | IQR of ratio |",
        "|---|---:|---:|---|",
    ]
    for name, row in summary.items():
        lines.append(
            f"| {name} | {row['median_ms']:.1f} | {row['ratio']:.3f} "
            f"| {row['ratio_q1']:.3f}–{row['ratio_q3']:.3f} |"
        )
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, object]:
    """What a reader needs to judge the numbers: hardware, threads, versions, load."""
    info: dict[str, object] = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_1m": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
