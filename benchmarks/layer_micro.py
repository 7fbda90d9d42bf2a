"""Forward + backward time of one adapted linear layer on a mixed-task batch.

Every adapter kind wraps the same frozen ``nn.Linear``; each call runs the adapter's full
path (router, masked low-rank update, contrastive loss where the kind has one) and the
backward to the layer input, as inside a network whose earlier layers also train. Times
are reported as ratios to a plain LoRA layer of the same rank (target for MoRE: ≤ 1.10).

    python -m benchmarks.layer_micro --quick --threads 1   # ~2 minutes on 2 CPU cores
    python -m benchmarks.layer_micro                    # batch 32 x 128 tokens, more rounds
    python -m benchmarks.layer_micro --device cuda
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import (
    RESULTS_DIR,
    VARIANTS,
    add_timing_arguments,
    environment,
    format_table,
    measure,
    summarize,
    write_json,
)
from more_cli.adapters import AdapterConfig, inject_adapter


@dataclass(frozen=True)
class Settings:
    shapes: tuple[tuple[int, int], ...]  # (d_in, d_out) of the adapted layer
    batch: int
    seq: int
    tasks: int
    r: int
    rounds: int
    warmup: int


PRESETS = {
    "full": Settings(((768, 768), (768, 3072)), 32, 128, 8, 8, rounds=30, warmup=3),
    "quick": Settings(((768, 768), (768, 3072)), 8, 128, 8, 8, rounds=30, warmup=2),
    "smoke": Settings(((16, 32),), 2, 4, 3, 4, rounds=2, warmup=1),
}


class _OneLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _call(
    variant: str | None, shape: tuple[int, int], settings: Settings, device: torch.device
) -> Callable[[], None]:
    """One forward + backward of the layer; ``variant=None`` is the frozen layer alone."""
    torch.manual_seed(0)
    model = _OneLayer(*shape).to(device).train()
    model.requires_grad_(False)
    adapter = None
    if variant is not None:
        config = AdapterConfig(r=settings.r, targets=["proj"], **VARIANTS[variant])
        tasks = [f"task{i}" for i in range(settings.tasks)]
        adapter = inject_adapter(model, config, tasks)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(settings.batch, settings.seq, shape[0], generator=generator).to(device)
    x.requires_grad_(True)
    task_ids = torch.randint(settings.tasks, (settings.batch,), generator=generator).to(device)
    grad_out = torch.randn(settings.batch, settings.seq, shape[1], generator=generator).to(device)
    params = [x, *(p for p in model.parameters() if p.requires_grad)]

    def step() -> None:
        for param in params:
            param.grad = None
        if adapter is None:
            model(x).backward(grad_out)
            return
        outputs, grads = [model(x, task_ids=task_ids)], [grad_out]
        auxiliary = adapter.auxiliary_loss()
        if auxiliary is not None:
            outputs.append(auxiliary)
            grads.append(torch.tensor(1.0, device=device))
        torch.autograd.backward(outputs, grads)

    return step


def run(settings: Settings, device: torch.device, clock: str = "auto") -> dict[str, object]:
    results: dict[str, object] = {
        "settings": asdict(settings),
        "environment": environment(device) | {"clock": clock},
        "shapes": {},
    }
    for shape in settings.shapes:
        calls = {"frozen_linear": _call(None, shape, settings, device)}
        calls |= {name: _call(name, shape, settings, device) for name in VARIANTS}
        summary = summarize(measure(calls, settings.rounds, settings.warmup, device, clock), "lora")
        key = f"{shape[0]}x{shape[1]}"
        results["shapes"][key] = summary
        print(f"\n### nn.Linear {shape[0]}→{shape[1]}, batch {settings.batch} × {settings.seq} "
              f"tokens, {settings.tasks} tasks, r={settings.r}\n")  # fmt: skip
        print(format_table(summary, "lora"))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="batch 8, fewer rounds")
    preset.add_argument("--smoke", action="store_true", help="tiny sizes for the smoke test")
    add_timing_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    results = run(PRESETS[mode], torch.device(args.device), args.clock)
    results["mode"] = mode
    suffix = "" if mode == "full" else f"_{mode}"
    write_json(args.out or RESULTS_DIR / f"layer_micro{suffix}.json", results)


if __name__ == "__main__":
    main()
