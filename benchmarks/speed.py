"""Training and inference speed, peak memory and task scaling of every adapter kind.

Models are built from configs with random weights (no download): a T5 with t5-base widths
(d_model 768, d_ff 3072, 12 heads) and a LLaMA with TinyLlama-1.1B widths (hidden 2048,
intermediate 5632, 32 heads, 4 KV heads). To fit a shared 2-core CPU they keep only 2
encoder + 2 decoder blocks (t5-base: 12 + 12) and 1 decoder block (TinyLlama: 22), and a
1024-word vocabulary so the output layer (never adapted) does not dilute the ratios of so
shallow a model. Adapters sit on every attention and MLP projection (the ``auto``
targets), r = 8, each batch of 8 samples mixes 8 tasks at random.

Sections (all ratios are paired, measured side by side in one run, methods interleaved):

- ``train``: forward + backward + AdamW step, each method as a ratio to LoRA of the same r,
  beside ``free_adapter``: the base model's forward and backward with the gradient flow of
  an adapter on the same layers but no adapter arithmetic, the floor no adapter can beat.
- ``infer``: forward without gradients; unmerged kinds against LoRA, and a per-task
  checkpoint made by ``merge_and_unload`` against the bare base model.
- ``memory``: peak memory of a training step above the loaded model, one fresh
  subprocess per method (CPU: peak RSS, reset through ``/proc/self/clear_refs``; CUDA:
  ``torch.cuda.max_memory_allocated``), with the trainable parameter counts.
- ``scaling``: T5 training step time as the number of tasks grows, each count's kinds
  interleaved; then (``scaling_paired``) each kind's step with the most tasks against the
  same kind with the fewest, both in the same interleaved rounds: the paired ratio of
  "flat in tasks".
- ``compile`` (only when asked for: compiling takes minutes): the training step of LoRA,
  MoRE and PEFT's LoRA under ``torch.compile`` against the same step in eager mode, all
  interleaved in one run; each compiled model's first (compiling) step is timed apart.

The peer is measured in the same runs (:mod:`benchmarks.peers`): PEFT's LoRA on the same
layers, r, alpha and dropout, in ``train`` and ``memory`` (one adapter) and in ``infer`` (one
adapter, ``peft_lora``, and one adapter per task mixed through ``adapter_names``,
``peft_mixed``); every table also gives the ratios to ``peft_lora``.

    python -m benchmarks.speed --quick --threads 1    # 32-token inputs
    python -m benchmarks.speed --threads 1            # 128-token inputs
    python -m benchmarks.speed --device cuda --only train infer
    python -m benchmarks.speed --quick --threads 1 --only compile
    bash benchmarks/gpu_speed.sh                        # the GPU run in one go, bf16
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from matplotlib.figure import Figure
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from benchmarks.common import (
    RESULTS_DIR,
    VARIANTS,
    adamw,
    add_timing_arguments,
    environment,
    format_table,
    inference_call,
    measure,
    summarize,
    synchronizer,
    write_json,
)
from benchmarks.peers import PEERS_TRAIN, peft_forward, peft_model, peft_train_step
from more_cli.adapters import AdapterConfig, MultiTaskAdapter, inject_adapter
from more_cli.adapters.injection import find_target_modules, resolve_target_patterns

FAMILIES = ("t5", "llama")
SECTIONS = ("train", "infer", "memory", "scaling", "compile")
DEFAULT_SECTIONS = ("train", "infer", "memory", "scaling")
SCALING_VARIANTS = ("lora", "more", "more_no_cl", "moelora", "multilora", "per_task_lora")
COMPILE_VARIANTS = ("lora", "more")
CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets the peak RSS (Linux >= 4.0)


@dataclass(frozen=True)
class Settings:
    t5_layers: int  # encoder blocks, and as many decoder blocks (t5-base has 12)
    llama_layers: int  # TinyLlama has 22
    width_divisor: int  # 1 = the real widths above; the smoke test shrinks them
    batch: int
    seq: int  # input tokens per sample
    target_len: int  # T5 decoder tokens (a label word or two)
    vocab: int
    tasks: int
    r: int
    rounds: int
    warmup: int
    memory_steps: int
    scaling_tasks: tuple[int, ...]
    scaling_rounds: int
    dtype: str = "float32"  # of the base model; adapters keep float32 factors (PEFT too)


PRESETS = {
    "full": Settings(2, 1, 1, 8, 128, 4, 1024, 8, 8, rounds=9, warmup=1, memory_steps=2,
                     scaling_tasks=(2, 8, 32, 128), scaling_rounds=5),
    "quick": Settings(2, 1, 1, 8, 32, 4, 1024, 8, 8, rounds=15, warmup=1, memory_steps=2,
                      scaling_tasks=(2, 8, 32, 128), scaling_rounds=9),
    "smoke": Settings(1, 1, 64, 2, 8, 2, 64, 3, 4, rounds=2, warmup=0, memory_steps=1,
                      scaling_tasks=(2, 4), scaling_rounds=2),
}  # fmt: skip


def build_base(family: str, settings: Settings) -> torch.nn.Module:
    """The randomly initialised base model, identical for every call (seeded)."""
    torch.manual_seed(0)
    d = settings.width_divisor
    if family == "t5":
        config = T5Config(
            vocab_size=settings.vocab, d_model=768 // d, d_kv=64 // d, d_ff=3072 // d,
            num_heads=12, num_layers=settings.t5_layers, decoder_start_token_id=0,
        )  # fmt: skip
        return T5ForConditionalGeneration(config).to(getattr(torch, settings.dtype))
    config = LlamaConfig(
        vocab_size=settings.vocab, hidden_size=2048 // d, intermediate_size=5632 // d,
        num_hidden_layers=settings.llama_layers, num_attention_heads=32 // min(d, 8),
        num_key_value_heads=4,
    )  # fmt: skip
    return LlamaForCausalLM(config).to(getattr(torch, settings.dtype))


def build(
    family: str, variant: str | None, settings: Settings, tasks: int, device: torch.device
) -> tuple[torch.nn.Module, MultiTaskAdapter | None]:
    model = build_base(family, settings).to(device)
    model.requires_grad_(False)
    if variant is None:
        return model, None
    config = AdapterConfig(r=settings.r, **VARIANTS[variant])
    return model, inject_adapter(model, config, [f"task{i}" for i in range(tasks)])


def make_batch(
    family: str, settings: Settings, tasks: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random token ids and a task id per sample, tasks mixed within the batch."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, settings.vocab, (settings.batch, settings.seq), generator=generator)
    if family == "t5":
        labels = torch.randint(1, settings.vocab, (settings.batch, settings.target_len),
                               generator=generator)  # fmt: skip
    else:
        labels = ids
    task_ids = torch.randint(tasks, (settings.batch,), generator=generator)
    return {"input_ids": ids.to(device), "labels": labels.to(device)}, task_ids.to(device)


def train_step(
    model: torch.nn.Module,
    adapter: MultiTaskAdapter,
    batch: dict[str, torch.Tensor],
    task_ids: torch.Tensor,
) -> Callable[[], None]:
    """One optimizer step as the training loop takes it (task loss + the kind's weighted
    auxiliary loss)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch, task_ids=task_ids).loss
        auxiliary = adapter.auxiliary_loss()
        if auxiliary is not None:
            loss = loss + auxiliary
        loss.backward()
        optimizer.step()

    return step


def free_adapter_step(
    family: str, settings: Settings, batch: dict[str, torch.Tensor], device: torch.device
) -> Callable[[], None]:
    """The floor of any adapter's training step: the bare base model, forward and backward,
    with gradients flowing exactly where an adapter on the ``auto`` targets would send them
    (a hook marks each target's output as requiring grad, so the backward reaches every
    target and goes through a target's input only where that input depends on an earlier
    target), and no low-rank arithmetic, no parameters and no optimizer."""
    model = build_base(family, settings).to(device)
    model.requires_grad_(False)
    model.train()
    targets = find_target_modules(model, resolve_target_patterns(model, "auto"))

    def needs_grad(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output if output.requires_grad else output.requires_grad_(True)

    for name in targets:
        model.get_submodule(name).register_forward_hook(needs_grad)
    return lambda: model(**batch).loss.backward()


def forward_only(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], task_ids: torch.Tensor | None
) -> Callable[[], None]:
    return inference_call(model, batch, {} if task_ids is None else {"task_ids": task_ids})


def bench_train(settings: Settings, device: torch.device, variants: list[str], clock: str) -> dict:
    results = {}
    for family in FAMILIES:
        batch, task_ids = make_batch(family, settings, settings.tasks, device)
        calls = {}
        for variant in variants:
            model, adapter = build(family, variant, settings, settings.tasks, device)
            calls[variant] = train_step(model, adapter, batch, task_ids)
        peer = peft_model(build_base(family, settings).to(device), family, settings.r)
        calls["peft_lora"] = peft_train_step(peer, batch)
        calls["free_adapter"] = free_adapter_step(family, settings, batch, device)
        seconds = measure(calls, settings.rounds, settings.warmup, device, clock)
        results[family] = summarize(seconds, "lora")
        results[f"{family}_vs_peft"] = summarize(seconds, "peft_lora")
        print(f"\n### training step, {family}\n\n{format_table(results[family], 'lora')}")
        print(f"\n{format_table(results[f'{family}_vs_peft'], 'peft_lora')}")
        del calls
        gc.collect()
    return results


def bench_infer(settings: Settings, device: torch.device, variants: list[str], clock: str) -> dict:
    results = {}
    for family in FAMILIES:
        batch, task_ids = make_batch(family, settings, settings.tasks, device)
        base, _ = build(family, None, settings, settings.tasks, device)
        calls = {"base": forward_only(base, batch, None)}
        # Training-only variants (more_shared, more_no_cl) infer exactly as "more" does.
        for variant in (v for v in variants if VARIANTS[v] == {"kind": VARIANTS[v]["kind"]}):
            model, _ = build(family, variant, settings, settings.tasks, device)
            calls[variant] = forward_only(model, batch, task_ids)
        if "more" in variants:
            model, adapter = build(family, "more", settings, settings.tasks, device)
            calls["more_merged"] = forward_only(adapter.merge_and_unload("task0"), batch, None)
        one = peft_model(build_base(family, settings).to(device), family, settings.r)
        calls["peft_lora"] = peft_forward(one, batch, None)
        mixed = peft_model(
            build_base(family, settings).to(device), family, settings.r, settings.tasks
        )
        calls["peft_mixed"] = peft_forward(mixed, batch, task_ids)
        seconds = measure(calls, settings.rounds, settings.warmup, device, clock)
        results[family] = {
            "vs_lora": summarize(seconds, "lora"),
            "vs_base": summarize(seconds, "base"),
            "vs_peft": summarize(seconds, "peft_lora"),
        }
        print(f"\n### inference, {family}\n\n{format_table(results[family]['vs_lora'], 'lora')}")
        if "more" in variants:
            merged = results[family]["vs_base"]["more_merged"]
            print(f"merged MoRE checkpoint / base model: {merged['ratio']:.3f}")
        del calls
        gc.collect()
    return results


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def probe_memory(family: str, variant: str, settings: Settings, device: torch.device) -> dict:
    """Peak memory of ``memory_steps`` training steps above the loaded model (this process).

    Run in a fresh process so that no other model's allocations are in the way. On CPU the
    figure is peak RSS: the kernel's high-water mark is reset after the model, adapter and
    batch are in memory, so it counts activations, gradients and optimizer state.
    """
    batch, task_ids = make_batch(family, settings, settings.tasks, device)
    if variant == "peft_lora":
        model = peft_model(build_base(family, settings).to(device), family, settings.r)
        adapter, step = None, peft_train_step(model, batch)
    else:
        model, adapter = build(family, variant, settings, settings.tasks, device)
        step = train_step(model, adapter, batch, task_ids)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _resident_kib("VmRSS") * 1024
        CLEAR_REFS.write_text("5")
    for _ in range(settings.memory_steps):
        step()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _resident_kib("VmHWM") * 1024
    if adapter is None:  # the peer: one LoRA, nothing task-specific
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        counts = {"total": trainable, "per_task_specific": 0, "per_task_average": trainable}
    else:
        counts = adapter.parameter_counts()
    return {
        "peak_mib": (peak - before) / 2**20,
        "trainable": counts["total"],
        "per_task_specific": counts["per_task_specific"],
        "per_task_average": counts["per_task_average"],
    }


def bench_memory(
    mode: str, settings: Settings, device: torch.device, variants: list[str], threads: int | None
) -> dict:
    results: dict[str, dict] = {}
    for family in FAMILIES:
        results[family] = {}
        for variant in [*variants, *PEERS_TRAIN]:
            request = {"family": family, "variant": variant, "mode": mode,
                       "device": str(device), "dtype": settings.dtype}  # fmt: skip
            command = [
                sys.executable,
                "-m",
                "benchmarks.speed",
                "--memory-probe",
                json.dumps(request),
            ]
            if threads:
                command += ["--threads", str(threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[family][variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"\n### peak training memory above the loaded model, {family}\n")
        print("| method | peak MiB | trainable params | per-task specific |\n|---|---:|---:|---:|")
        for variant, row in results[family].items():
            print(f"| {variant} | {row['peak_mib']:.0f} | {row['trainable']:,} "
                  f"| {row['per_task_specific']:,} |")  # fmt: skip
    return results


def bench_scaling(
    settings: Settings, device: torch.device, variants: list[str], clock: str
) -> dict:
    """T5 training step time at each task count, the kinds interleaved at each count."""
    results = {}
    for tasks in settings.scaling_tasks:
        batch, task_ids = make_batch("t5", settings, tasks, device)
        calls = {}
        for variant in (v for v in SCALING_VARIANTS if v in variants):
            model, adapter = build("t5", variant, settings, tasks, device)
            calls[variant] = train_step(model, adapter, batch, task_ids)
        rounds, warmup = settings.scaling_rounds, settings.warmup
        results[str(tasks)] = summarize(measure(calls, rounds, warmup, device, clock), "lora")
        print(f"\n### scaling, {tasks} tasks\n\n{format_table(results[str(tasks)], 'lora')}")
        del calls
        gc.collect()
    return results


def bench_task_flatness(
    settings: Settings, device: torch.device, variants: list[str], clock: str
) -> dict:
    """Per kind, its T5 training step with the most tasks of ``scaling_tasks`` as a paired
    ratio to its step with the fewest, every (kind, count) timed in the same rounds."""
    fewest, most = min(settings.scaling_tasks), max(settings.scaling_tasks)
    kinds = [v for v in SCALING_VARIANTS if v in variants]
    calls = {}
    for tasks in (fewest, most):
        batch, task_ids = make_batch("t5", settings, tasks, device)
        for variant in kinds:
            model, adapter = build("t5", variant, settings, tasks, device)
            calls[f"{variant}@{tasks}"] = train_step(model, adapter, batch, task_ids)
    seconds = measure(calls, settings.scaling_rounds, settings.warmup, device, clock)
    del calls
    gc.collect()
    results = {}
    for variant in kinds:
        few, many = f"{variant}@{fewest}", f"{variant}@{most}"
        pair = summarize({few: seconds[few], many: seconds[many]}, few)
        results[variant] = pair[many] | {"fewest_ms": pair[few]["median_ms"]}
    print(f"\n### {most} tasks against {fewest}, paired per kind\n\n"
          + format_table(results, f"same kind at {fewest} tasks"))  # fmt: skip
    return {"tasks": [fewest, most], "kinds": results}


def bench_compile(
    settings: Settings, device: torch.device, variants: list[str], clock: str, backend: str
) -> dict:
    """Training steps of ``torch.compile(model)`` against the same step in eager mode.

    Per family: ``<variant>`` is eager and ``<variant>_compiled`` compiled, for LoRA, MoRE
    (when asked for) and PEFT's LoRA, timed in the same interleaved rounds. ``speedup`` holds
    each compiled step as a paired ratio to its own eager step, ``vs_peft`` every step to
    PEFT's eager one, and ``compile_seconds`` the wall time of each compiled model's first
    step (tracing and code generation; excluded from the rounds).
    """
    results = {}
    for family in FAMILIES:
        batch, task_ids = make_batch(family, settings, settings.tasks, device)
        calls, compile_seconds = {}, {}
        names = [v for v in COMPILE_VARIANTS if v in variants] + ["peft_lora"]
        for variant in names:
            for compiled in (False, True):
                if variant == "peft_lora":
                    model = peft_model(build_base(family, settings).to(device), family, settings.r)
                    step = peft_train_step(_maybe_compiled(model, compiled, backend), batch)
                else:
                    model, adapter = build(family, variant, settings, settings.tasks, device)
                    forward = _maybe_compiled(model, compiled, backend)
                    step = train_step(forward, adapter, batch, task_ids)
                name = f"{variant}_compiled" if compiled else variant
                if compiled:
                    start = time.perf_counter()
                    step()
                    synchronizer(device)()
                    compile_seconds[name] = time.perf_counter() - start
                calls[name] = step
        seconds = measure(calls, settings.rounds, settings.warmup, device, clock)
        speedup = {}
        for variant in names:
            pair = {n: seconds[n] for n in (variant, f"{variant}_compiled")}
            speedup[variant] = summarize(pair, variant)[f"{variant}_compiled"]
        results[family] = {
            "vs_peft": summarize(seconds, "peft_lora"),
            "speedup": speedup,
            "compile_seconds": compile_seconds,
        }
        print(f"\n### compiled training step, {family} (backend {backend})\n")
        print(format_table(results[family]["vs_peft"], "peft_lora"))
        for variant, row in speedup.items():
            print(f"{variant}: compiled / eager {row['ratio']:.3f} "
                  f"(IQR {row['ratio_q1']:.3f}–{row['ratio_q3']:.3f}), "
                  f"first step {compile_seconds[variant + '_compiled']:.0f} s")  # fmt: skip
        del calls
        gc.collect()
        torch._dynamo.reset()
    return results


def _maybe_compiled(model: torch.nn.Module, compiled: bool, backend: str) -> torch.nn.Module:
    return torch.compile(model, backend=backend) if compiled else model


def plot_train(train: dict, path: Path) -> None:
    fig = Figure(figsize=(5 * len(train), 3.6))
    axes = fig.subplots(1, len(train), squeeze=False)
    for ax, (family, summary) in zip(axes[0], train.items(), strict=True):
        names = list(summary)
        ratios = [summary[n]["ratio"] for n in names]
        errors = [
            [summary[n]["ratio"] - summary[n]["ratio_q1"] for n in names],
            [summary[n]["ratio_q3"] - summary[n]["ratio"] for n in names],
        ]
        ax.bar(names, ratios, yerr=errors, color="tab:blue", capsize=3)
        ax.axhline(1.10, color="tab:red", linestyle="--", label="MoRE target 1.10")
        ax.set_title(f"{family}: training step / LoRA")
        ax.tick_params(axis="x", rotation=45)
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def plot_scaling(scaling: dict, path: Path) -> None:
    tasks = [int(n) for n in scaling]
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    for variant in scaling[str(tasks[0])]:
        left.plot(tasks, [scaling[str(n)][variant]["median_ms"] for n in tasks], "o-",
                  label=variant)  # fmt: skip
        right.plot(tasks, [scaling[str(n)][variant]["ratio"] for n in tasks], "o-",
                   label=variant)  # fmt: skip
    for ax, label in ((left, "median step time (ms)"), (right, "step time / LoRA (paired)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(tasks, [str(n) for n in tasks])
        ax.set_xlabel("tasks")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("T5 training step as the number of tasks grows")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="shallower models, short batches")
    preset.add_argument("--smoke", action="store_true", help="tiny sizes for the smoke test")
    add_timing_arguments(parser)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(DEFAULT_SECTIONS),
        help="sections to run (default: all but compile)",
    )
    parser.add_argument(
        "--compile-backend", default="inductor",
        help="torch.compile backend of the compile section (aot_eager: no C++ toolchain)",
    )  # fmt: skip
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
        help="adapter set-ups to compare; lora, the reference, is always kept",
    )  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="JSON and PNG folder")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="base model dtype"
    )
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: one subprocess
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        request = json.loads(args.memory_probe)
        settings = replace(PRESETS[request["mode"]], dtype=request["dtype"])
        device = torch.device(request["device"])
        print(json.dumps(probe_memory(request["family"], request["variant"], settings, device)))
        return
    if "memory" in args.only and args.device == "cpu" and not CLEAR_REFS.exists():
        parser.error("CPU peak memory needs Linux's /proc; leave it out with --only ...")
    mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    settings, device = replace(PRESETS[mode], dtype=args.dtype), torch.device(args.device)
    variants = ["lora", *(v for v in args.variants if v != "lora")]
    results: dict[str, object] = {
        "mode": mode,
        "settings": asdict(settings),
        "environment": environment(device) | {"clock": args.clock},
    }
    suffix = "" if mode == "full" else f"_{mode}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if "train" in args.only:
        results["train"] = bench_train(settings, device, variants, args.clock)
        plot_train(
            {f: results["train"][f] for f in FAMILIES}, args.out_dir / f"speed_train{suffix}.png"
        )
    if "infer" in args.only:
        results["infer"] = bench_infer(settings, device, variants, args.clock)
    if "memory" in args.only:
        results["memory"] = bench_memory(mode, settings, device, variants, args.threads)
    if "scaling" in args.only:
        results["scaling"] = bench_scaling(settings, device, variants, args.clock)
        plot_scaling(results["scaling"], args.out_dir / f"speed_scaling{suffix}.png")
        results["scaling_paired"] = bench_task_flatness(settings, device, variants, args.clock)
    if set(args.only) & set(DEFAULT_SECTIONS):
        results["load_average_1m_end"] = environment(device)["load_average_1m"]
        write_json(args.out_dir / f"speed{suffix}.json", results)
    if "compile" in args.only:  # its own file: it is run on its own, compiling takes minutes
        compiled = bench_compile(settings, device, variants, args.clock, args.compile_backend)
        write_json(
            args.out_dir / f"speed_compile{suffix}.json",
            {key: results[key] for key in ("mode", "settings", "environment")}
            | {"backend": args.compile_backend, "compile": compiled}
            | {"load_average_1m_end": environment(device)["load_average_1m"]},
        )


if __name__ == "__main__":
    main()
