"""Scaling out and down: 2-process vs 1-process throughput, 4-bit vs full-precision memory.

Both figures come from real ``more train`` runs on a random LLaMA-style model saved to a
temporary folder, with the demo-free tiny jsonl data written here:

- **throughput**: ``more train --num-processes 2`` (batch B per process) against one
  process with batch B and ``grad_accum: 2`` (the same global batch and batch sequence),
  as the ratio of the median ``samples_per_s`` in ``metrics.jsonl`` (start-up excluded).
  On a CPU the two processes share its cores: the ratio shows the overhead of the gloo
  all-reduce and of contention, not what N GPUs give.
- **memory**: peak resident memory of a short run above the process after imports, each in
  a fresh process (the kernel's high-water mark is reset after imports), 4-bit NF4 base
  against a float32 base; the ratio is 4-bit / full precision.

Run from the repository root: ``python -m benchmarks.scaling --quick --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from benchmarks.common import RESULTS_DIR, environment, write_json

ROOT = Path(__file__).resolve().parents[1]
CLEAR_REFS = Path("/proc/self/clear_refs")
SIZES = {  # hidden, layers, steps
    "smoke": (64, 1, 4),
    "quick": (512, 4, 30),
    "full": (1024, 8, 60),
}


def make_model(directory: Path, hidden: int, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny import TINY_VOCAB, tiny_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=hidden, intermediate_size=hidden * 11 // 4 // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 128, 1), pad_token_id=0, eos_token_id=1, bos_token_id=3,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    tiny_tokenizer(add_eos=False).save_pretrained(directory)


def make_data(directory: Path) -> None:
    rng = random.Random(0)
    words = {0: ["bad", "awful", "dull"], 1: ["good", "great", "wonderful"]}
    for split, count in (("train", 256), ("validation", 16)):
        rows = []
        for _ in range(count):
            label = rng.randint(0, 1)
            rows.append({"sentence": f"the movie was {rng.choice(words[label])} .", "label": label})
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_recipe(
    path: Path, model: Path, data: Path, out: Path, steps: int, **train: object
) -> None:
    recipe = {
        "model": {"name": str(model)},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "v_proj"]},
        "tasks": [{"name": "sst2", "source": str(data)}],
        "data": {"max_source_length": 32, "max_target_length": 4, "split_validation": False},
        "train": {
            "lr": 1e-3,
            "warmup_steps": 0,
            "batch_size": 8,
            "max_steps": steps,
            "log_every": max(steps // 6, 1),
            "seed": 0,
            **train,
        },  # fmt: skip
        "output_dir": str(out),
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def _more_train(*args: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "more_cli", "train", *args], env=env, check=True)


def _throughput(run: Path) -> float:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    return statistics.median(rates[1:] or rates)  # the first window holds the warm-up


def bench_processes(work: Path, model: Path, data: Path, steps: int, threads: int) -> dict:
    recipe = work / "processes.yaml"
    write_recipe(recipe, model, data, work / "unused", steps)
    _more_train(str(recipe), "--set", "train.grad_accum=2", "-o", str(work / "p1"), threads=threads)
    _more_train(str(recipe), "--num-processes", "2", "-o", str(work / "p2"), threads=threads)
    one, two = _throughput(work / "p1"), _throughput(work / "p2")
    return {"samples_per_s_1_process": one, "samples_per_s_2_processes": two, "ratio": two / one}


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def probe_memory(recipe: Path) -> dict:
    """Peak MiB of training ``recipe`` above this process after imports (run it fresh)."""
    from more_cli.recipe_io import load_recipe
    from more_cli.training.loop import train

    before = _kib("VmRSS")
    CLEAR_REFS.write_text("5")
    train(load_recipe(recipe))
    return {"peak_mib": (_kib("VmHWM") - before) / 1024}


def bench_memory(work: Path, model: Path, data: Path, threads: int) -> dict:
    results = {}
    four_bit = {"load_in_4bit": True, "dtype": "float32",
                "quantization": {"quant_type": "nf4", "compute_dtype": "float32"}}  # fmt: skip
    for name, model_extra in (("full_precision", {}), ("4bit_nf4", four_bit)):
        recipe = work / f"memory-{name}.yaml"
        write_recipe(recipe, model, data, work / f"m-{name}", 3)
        loaded = yaml.safe_load(recipe.read_text())
        loaded["model"].update(model_extra)
        recipe.write_text(yaml.safe_dump(loaded, sort_keys=False))
        command = [sys.executable, "-m", "benchmarks.scaling", "--memory-probe", str(recipe),
                   "--threads", str(threads)]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    results["ratio"] = results["4bit_nf4"]["peak_mib"] / results["full_precision"]["peak_mib"]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a smaller model, fewer steps")
    preset.add_argument("--smoke", action="store_true", help="tiny sizes, meaningless numbers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: one subprocess
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(probe_memory(Path(args.memory_probe))))
        return
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    hidden, layers, steps = SIZES[mode]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, data = work / "model", work / "data"
        data.mkdir()
        make_model(model, hidden, layers)
        make_data(data)
        results = {
            "mode": mode,
            "model": {"family": "llama", "hidden": hidden, "layers": layers},
            "environment": environment(torch.device("cpu")),
            "processes": bench_processes(work, model, data, steps, args.threads),
            "memory": bench_memory(work, model, data, args.threads),
        }
    print(f"2 processes / 1 process throughput: {results['processes']['ratio']:.3f}")
    print(f"4-bit / full-precision peak memory: {results['memory']['ratio']:.3f}")
    write_json(args.out_dir / f"scaling_{mode}.json", results)


if __name__ == "__main__":
    main()
