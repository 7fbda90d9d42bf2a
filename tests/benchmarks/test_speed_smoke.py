"""Keep the benchmark entry points from rotting: run each once at tiny sizes (no timings).

The benchmarks run as modules from the repository root, exactly as the docs tell users.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="CPU memory probe needs Linux /proc"
)


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], cwd=ROOT, check=True, timeout=600)


def test_layer_micro_smoke(tmp_path: Path) -> None:
    out = tmp_path / "layer.json"
    _run("benchmarks.layer_micro", "--smoke", "--threads", "1", "--out", str(out))
    shapes = json.loads(out.read_text())["shapes"]
    assert {"lora", "more", "moelora", "multilora", "mosld"} <= set(next(iter(shapes.values())))


def test_fusion_probe_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fusion.json"
    # The probe itself asserts that the fused variants match today's outputs and gradients.
    _run("benchmarks.fusion_probe", "--smoke", "--threads", "1", "--out", str(out))
    shapes = json.loads(out.read_text())
    assert set(shapes.pop("environment")) >= {"device", "threads"}
    assert set(next(iter(shapes.values()))) == {"frozen", "peft_style", "current", "addmm", "fused"}


def test_speed_smoke(tmp_path: Path) -> None:
    _run("benchmarks.speed", "--smoke", "--threads", "1", "--variants", "lora", "more",
         "--out-dir", str(tmp_path))  # fmt: skip
    results = json.loads((tmp_path / "speed_smoke.json").read_text())
    assert set(results) >= {"train", "infer", "memory", "scaling"}
    assert results["infer"]["t5"]["vs_base"]["more_merged"]["median_ms"] > 0
    assert results["train"]["llama"]["free_adapter"]["median_ms"] > 0
    assert results["memory"]["llama"]["more"]["trainable"] > 0
    paired = results["scaling_paired"]
    assert paired["tasks"] == [2, 4] and set(paired["kinds"]) == {"lora", "more"}
    assert all(row["ratio"] > 0 and row["fewest_ms"] > 0 for row in paired["kinds"].values())
    assert (tmp_path / "speed_scaling_smoke.png").exists()
    assert (tmp_path / "speed_train_smoke.png").exists()


def test_speed_compile_smoke(tmp_path: Path) -> None:
    _run("benchmarks.speed", "--smoke", "--threads", "1", "--only", "compile",
         "--compile-backend", "aot_eager", "--out-dir", str(tmp_path))  # fmt: skip
    assert not (tmp_path / "speed_smoke.json").exists()  # the other sections' file is kept
    results = json.loads((tmp_path / "speed_compile_smoke.json").read_text())["compile"]
    for family in ("t5", "llama"):
        assert set(results[family]["speedup"]) == {"lora", "more", "peft_lora"}
        assert set(results[family]["vs_peft"]) == {
            f"{v}{c}" for v in ("lora", "more", "peft_lora") for c in ("", "_compiled")
        }
        assert min(results[family]["compile_seconds"].values()) > 0


def test_integrity_smoke(tmp_path: Path) -> None:
    out = tmp_path / "integrity.json"
    _run("benchmarks.integrity", "--layers", "1", "--rounds", "1", "--out", str(out))
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"adapter", "checkpoint"}
    assert results["checkpoint"]["megabytes"] == 3 * results["adapter"]["megabytes"]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_the_gpu_script_refuses_a_machine_without_cuda() -> None:
    # The script calls `python`: the one running these tests, whether or not its venv is active.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    done = subprocess.run(
        ["bash", "benchmarks/gpu_speed.sh"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ | {"PATH": path},
    )  # fmt: skip
    assert done.returncode != 0 and "error: no CUDA device" in done.stderr
