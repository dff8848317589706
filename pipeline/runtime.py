"""Where work runs: the one Ray start-up and the one device / dtype policy of every stage.

- `init_ray(address, num_cpus)`: connect to a cluster (a stage's `--address`, or the job's
  own cluster under `ray job submit`) or start a local Ray with the same environment the
  README's scripts set (usage stats and token auth off, `pipeline` importable by workers).
- `device_for(gpus)`: "cuda" when a task or actor is given GPUs, else "cpu".
- `resolve_dtype(dtype, device)`: what `auto` means on a device: bfloat16 on a GPU and on a
  CPU with native bf16 (AVX512-BF16 / AMX; 1.8-2.8x faster there, accuracies within 0.003:
  BENCHMARKS.md), else float32.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import console

DTYPES = ("float32", "float16", "bfloat16", "auto")

# What the README's scripts export before starting Ray; a local Ray started by `tart` gets the same.
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

_CPU_BF16: bool | None = None


def init_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Connect to `address` or start a local Ray; a no-op when already connected.

    Inside a Ray job (`RAY_ADDRESS` set by `ray job submit`) `ray.init()` joins the job's
    cluster; elsewhere it starts a local one.
    """
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return
    # Workers' output still reaches the driver (Ray Train's step lines come from its workers);
    # the driver's own library noise is routed by the console.
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        # local workers inherit the driver's environment: make `pipeline` importable without pip install
        root = str(Path(__file__).resolve().parents[1])
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    console.route_third_party()  # Ray installs its handlers at start-up


def device_for(gpus: float | None) -> str:
    """The device of work that was given `gpus` GPUs (a Ray task's or actor's num_gpus)."""
    return "cuda" if gpus and gpus > 0 else "cpu"


def cpu_has_native_bf16() -> bool:
    """True if this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16; Linux flags).

    There oneDNN runs bf16 GEMMs ~4x faster than MKL's fp32 (BENCHMARKS.md); elsewhere bf16 is
    emulated and can be slower than fp32, so `auto` keeps float32.
    """
    global _CPU_BF16
    if _CPU_BF16 is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        _CPU_BF16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return _CPU_BF16


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype `auto` means on `device`: bfloat16 on a GPU and on a CPU with native bf16, else float32."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return "bfloat16"
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return dtype


def torch_dtype(dtype):
    """The torch dtype of a dtype name (None: float32); ValueError names the accepted ones."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(dtype) not in table:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(table)}")
    return table[str(dtype)]
