#!/usr/bin/env bash
# The speed benchmark on a CUDA GPU in one go: training step, inference and peak memory of
# every adapter kind and of PEFT's LoRA, T5 and LLaMA shapes, bf16 base weights (float32
# adapter factors), wall-clock timing and torch.cuda peak memory. Writes
# benchmarks/results/gpu/speed.json (+ the training-step plot); a few minutes on one GPU.
# Run from the repository root on a machine with CUDA:  bash benchmarks/gpu_speed.sh
set -euo pipefail
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device')"
python -m benchmarks.speed --device cuda --dtype bfloat16 --only train infer memory \
  --out-dir benchmarks/results/gpu "$@"
