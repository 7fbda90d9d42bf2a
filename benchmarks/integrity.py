"""What the SHA-256 manifests cost: writing ``SHA256SUMS`` after saving, checking it before
loading, on an adapter of LLaMA-2-7B's shape (r = 8 on all seven projections of 32 layers,
fp32, 80 MB) and on a checkpoint of it (adapter + AdamW's two moments, 240 MB).

Each round saves the tensors with the package's own path (safetensors bytes written
atomically, fsync included), writes the manifest, loads them back (``read_weights``, which
also checks every value is finite) and checks the manifest; the ratios are taken within a
round (manifest / save, check / load), medians over rounds. Wall time: saving is mostly
disk, not CPU. Files are read back from the page cache, as right after a save; a cold read
from disk costs the same extra time with or without the check, so the ratio can only fall.

    python -m benchmarks.integrity            # writes results/integrity.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save

from benchmarks.common import RESULTS_DIR, environment, write_json
from more_cli.adapters.state import read_weights
from more_cli.atomic import atomic_write_bytes
from more_cli.integrity import manifest_problem, write_manifest

# LLaMA-2-7B: hidden 4096, MLP 11008, 32 layers; (d_in, d_out) of the seven projections.
PROJECTIONS = [(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)]
LAYERS, RANK = 32, 8


def adapter_tensors(layers: int) -> dict[str, torch.Tensor]:
    tensors = {}
    for layer in range(layers):
        for index, (d_in, d_out) in enumerate(PROJECTIONS):
            tensors[f"{layer}.{index}.A"] = torch.randn(RANK, d_in)
            tensors[f"{layer}.{index}.B"] = torch.randn(d_out, RANK)
    return tensors


def one_round(folder: Path, files: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    seconds = {}
    start = time.perf_counter()
    for name, tensors in files.items():
        atomic_write_bytes(folder / name, save(tensors))
    seconds["save"] = time.perf_counter() - start
    start = time.perf_counter()
    write_manifest(folder)
    seconds["manifest"] = time.perf_counter() - start
    start = time.perf_counter()
    for name in files:
        read_weights(folder / name)
    seconds["load"] = time.perf_counter() - start
    start = time.perf_counter()
    assert manifest_problem(folder) is None
    seconds["check"] = time.perf_counter() - start
    return seconds


def measure(files: dict[str, dict[str, torch.Tensor]], rounds: int) -> dict[str, float]:
    samples = []
    for _ in range(rounds + 1):  # the first round warms the allocator and the page cache
        with tempfile.TemporaryDirectory() as folder:
            samples.append(one_round(Path(folder), files))
    samples = samples[1:]
    size = sum(t.numel() * t.element_size() for f in files.values() for t in f.values())
    result = {"megabytes": size / 1e6}
    for key in ("save", "manifest", "load", "check"):
        result[f"{key}_s"] = statistics.median(s[key] for s in samples)
    result["manifest_over_save"] = statistics.median(s["manifest"] / s["save"] for s in samples)
    result["check_over_load"] = statistics.median(s["check"] / s["load"] for s in samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=LAYERS, help="fewer for a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "integrity.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    adapter = adapter_tensors(args.layers)
    moments = {"exp_avg": {k: torch.randn_like(v) for k, v in adapter.items()}}
    moments["exp_avg_sq"] = {k: torch.rand_like(v) for k, v in adapter.items()}
    cases = {
        "adapter": {"more_adapter.safetensors": adapter},
        "checkpoint": {
            "more_adapter.safetensors": adapter,
            "optimizer.safetensors": {
                f"{k}.{m}": t for m, state in moments.items() for k, t in state.items()
            },
        },
    }
    results = {name: measure(files, args.rounds) for name, files in cases.items()}
    payload = {
        "suite": "integrity",
        "shape": f"LLaMA-2-7B, {args.layers} layers, r=8 on q/k/v/o/gate/up/down, fp32",
        "rounds": args.rounds,
        "results": results,
        "environment": environment(torch.device("cpu")),
    }
    write_json(args.out, payload)
    print(
        "| folder | MB | save s | manifest s | manifest / save | load s | check s | check / load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['megabytes']:.0f} | {r['save_s']:.2f} | {r['manifest_s']:.2f} | "
            f"{r['manifest_over_save']:.2f} | {r['load_s']:.2f} | {r['check_s']:.2f} | "
            f"{r['check_over_load']:.2f} |"
        )


if __name__ == "__main__":
    main()
