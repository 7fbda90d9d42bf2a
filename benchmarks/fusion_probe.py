"""Would fusing the low-rank update into the frozen layer's own matmuls pay? One layer, measured.

The speed issue's first candidate for a faster training step: add the update into the base
output in place (addmm) instead of allocating it and adding. Each variant below runs one
frozen ``nn.Linear`` plus a rank-8 update with a per-sample coefficient on its r components
(MoRE's rank mask times alpha / r, which carries the router's gradient), forward and
backward to the layer input, A, B and the coefficient, interleaved in one run:

- ``frozen``: the bare layer, forward and backward to its input (no adapter at all);
- ``peft_style``: ``W x + B(A(x)) * scaling``, PEFT's LoRA (scales the wide output);
- ``current``: ``W x + ((x A^T) * c) B^T``, what :class:`AdapterLayer` computes today;
- ``addmm``: the same with the update added by ``addmm`` into the base output (one fewer
  wide tensor in the forward; autograd does the backward);
- ``fused``: a hand-written autograd function that also accumulates the adapter's input
  gradient into the base layer's in place. Exact only with no dropout on the adapter
  input (the two branches then share one input), so it is not a drop-in for the default
  dropout of 0.1.

    python -m benchmarks.fusion_probe --threads 1     # ~1 minute on an idle core

Results: ``results/fusion_probe.json``; discussion in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import (
    RESULTS_DIR,
    add_timing_arguments,
    environment,
    format_table,
    measure,
    summarize,
    write_json,
)

RANK = 8
SCALING = 2.0
# (d_in, d_out, batch, tokens): T5-base's attention and MLP widths at the layer benchmark's
# batch, TinyLlama's at the speed benchmark's --quick batch.
SHAPES = {
    "full": ((768, 768, 8, 128), (768, 3072, 8, 128), (2048, 2048, 8, 32), (2048, 5632, 8, 32)),
    "smoke": ((16, 24, 2, 3),),
}
VARIANTS = ("frozen", "peft_style", "current", "addmm", "fused")


class _FusedLowRankLinear(torch.autograd.Function):
    """``W x + b + ((x A^T) * c) B^T`` with both additions done in place by ``addmm_``."""

    @staticmethod
    def forward(ctx, x, weight, bias, a, b, coefficient):
        hidden = x @ a.T
        out = F.linear(x, weight, bias)
        out.view(-1, out.shape[-1]).addmm_((hidden * coefficient).reshape(-1, RANK), b.T)
        ctx.save_for_backward(x, weight, a, b, hidden, coefficient)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, a, b, hidden, coefficient = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_scaled = (flat_grad @ b).view(hidden.shape)
        grad_b = flat_grad.T @ (hidden * coefficient).reshape(-1, RANK)
        grad_coefficient = (grad_scaled * hidden).sum_to_size(coefficient.shape)
        grad_hidden = (grad_scaled * coefficient).reshape(-1, RANK)
        grad_a = grad_hidden.T @ x.reshape(-1, x.shape[-1])
        grad_x = grad @ weight
        grad_x.view(-1, grad_x.shape[-1]).addmm_(grad_hidden, a)
        return grad_x, None, None, grad_a, grad_b, grad_coefficient


def make_step(
    variant: str, shape: tuple[int, int, int, int], device: torch.device
) -> tuple[Callable[[], None], Callable[[], list[torch.Tensor]]]:
    """One forward + backward of ``variant``, and a function returning its output and the
    gradients of the input, A, B and the coefficient after one such step."""
    d_in, d_out, batch, tokens = shape
    torch.manual_seed(0)  # nn.Linear's initialisation
    base = nn.Linear(d_in, d_out).requires_grad_(False).to(device)
    generator = torch.Generator().manual_seed(0)

    def leaf(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*size, generator=generator) * scale).to(device).requires_grad_(True)

    a, b = leaf(RANK, d_in, scale=0.02), leaf(d_out, RANK, scale=0.02)
    x, mask = leaf(batch, tokens, d_in), leaf(batch, RANK)
    grad_out = torch.randn(batch, tokens, d_out, generator=generator).to(device)
    leaves = [x, a, b, mask]

    def forward() -> torch.Tensor:
        if variant == "frozen":
            return base(x)
        if variant == "peft_style":
            return base(x) + F.linear(F.linear(x, a), b) * SCALING
        coefficient = (mask * SCALING)[:, None, :]
        if variant == "current":
            return base(x) + ((x @ a.T) * coefficient) @ b.T
        if variant == "addmm":
            result, hidden = base(x), (x @ a.T) * coefficient
            fused = torch.addmm(result.view(-1, d_out), hidden.reshape(-1, RANK), b.T)
            return fused.view(result.shape)
        return _FusedLowRankLinear.apply(x, base.weight, base.bias, a, b, coefficient)

    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        forward().backward(grad_out)

    def outputs() -> list[torch.Tensor]:
        step()
        return [forward().detach()] + [leaf.grad.clone() for leaf in leaves]

    return step, outputs


def run(mode: str, device: torch.device, clock: str) -> dict[str, object]:
    rounds, warmup = (25, 2) if mode == "full" else (2, 1)
    results: dict[str, object] = {"environment": environment(device) | {"clock": clock}}
    for shape in SHAPES[mode]:
        reference = make_step("current", shape, device)[1]()
        for variant in ("addmm", "fused"):  # the same output and gradients as today's
            got = make_step(variant, shape, device)[1]()
            for want, have in zip(reference, got, strict=True):
                torch.testing.assert_close(have, want)
        calls = {name: make_step(name, shape, device)[0] for name in VARIANTS}
        summary = summarize(measure(calls, rounds, warmup, device, clock), "peft_style")
        key = "{}x{} at {}x{}".format(*shape)
        results[key] = summary
        print(f"\n### nn.Linear {key} tokens, r={RANK}\n\n{format_table(summary, 'peft_style')}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny shape, two rounds")
    add_timing_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "full"
    results = run(mode, torch.device(args.device), args.clock)
    suffix = "" if mode == "full" else f"_{mode}"
    write_json(args.out or RESULTS_DIR / f"fusion_probe{suffix}.json", results)


if __name__ == "__main__":
    main()
