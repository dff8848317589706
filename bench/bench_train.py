"""Benchmark stage 2: training throughput (steps/s) through Ray Train vs the plain PyTorch loop.

Same run, same model, same batch, same code (`pipeline.train.train_loop`):

- plain: `train_local(cfg)` in this process (torch threads pinned to --threads);
- ray:   `train(cfg)` with 1 Ray Train worker (TorchTrainer, gloo, the same thread count
  via OMP_NUM_THREADS); includes `ray.train.report` every --log-every steps and the
  checkpoint at the end, i.e. what a user gets.

Two numbers per launcher: `loop steps/s` (steps / wall time of the training loop, from
the loop's own timer: what Ray costs per step) and `end-to-end s` (call to return:
worker start-up, checkpoint persistence, MLflow logging included). The ratio of loop
steps/s (ray / plain) is the per-step overhead of Ray Train.

Usage (2-core box):
    RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \
        .venv/bin/python bench/bench_train.py --steps 30 --size tiny --batch 32 --points 66
One GPU (both launchers on cuda, bf16 autocast; Ray Train with nccl):
    python bench/bench_train.py --gpu --size standard --batch 256 --points 258 --steps 60 --log-every 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def loop_seconds(history: list[dict], log_every: int) -> float:
    """Wall time of the training steps: the loop times each log window (steps / steps_per_s)."""
    return sum(log_every / r["steps_per_s"] for r in history if "steps_per_s" in r and r["step"] % log_every == 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", default="tiny", help="reasoner size preset (tiny/small/medium/standard)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--points", type=int, default=66)
    ap.add_argument("--log-every", type=int, default=10, help="ray.train.report cadence")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in both launchers")
    ap.add_argument("--num-cpus", type=float, default=2, help="logical CPUs for the local Ray")
    ap.add_argument("--gpu", action="store_true", help="train on one GPU in both launchers (Ray Train: nccl)")
    ap.add_argument("--fp32", action="store_true", help="with --gpu: no bf16 autocast")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if a.steps % a.log_every:
        ap.error("--steps must be a multiple of --log-every (throughput is timed per log window)")

    import torch

    from pipeline.config import load_config
    from pipeline.runtime import init_ray
    from pipeline.train import TrainConfig, train, train_local

    scratch = Path(a.dir or tempfile.mkdtemp(prefix="bench_train_"))
    scratch.mkdir(parents=True, exist_ok=True)
    base = [f"size={a.size}", f"steps={a.steps}", f"batch_size={a.batch}", f"task.points={a.points}",
            f"model.max_points={a.points}",
            # no curriculum: every step at the full d and --points (the size the figure names)
            "curriculum.dims_start=16", f"curriculum.points_start={a.points}", "eval_ks=[16]", "eval_episodes=32", f"log_every={a.log_every}",
            f"eval_every={a.steps}", f"checkpoint_every={a.steps}", "warmup_steps=5", "system_metrics=false",
            f"storage={scratch / 'runs'}", f"mlflow_uri=sqlite:///{scratch / 'mlflow.db'}",
            f"gpu={str(a.gpu).lower()}", f"bf16={str(a.gpu and not a.fp32).lower()}"]
    if a.gpu and not torch.cuda.is_available():
        ap.error("--gpu: torch sees no CUDA device")
    os.environ["TART_MLFLOW_ARTIFACTS"] = str(scratch / "mlartifacts")

    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # Ray workers inherit it (Ray pins 1 thread by default)
    # Ray first: on a GPU box a local Ray started after the in-process CUDA run timed out in its
    # node start-up (H200, Ray 2.60); an idle Ray costs the plain loop nothing.
    t0 = time.time()
    init_ray(None, a.num_cpus)
    ray_init_s = time.time() - t0

    torch.set_num_threads(a.threads)
    cfg = load_config(TrainConfig, None, base + ["name=plain"])
    t0 = time.time()
    plain = train_local(cfg, str(scratch / "plain"))
    plain_e2e = time.time() - t0
    plain_sps = a.steps / loop_seconds(plain["history"], a.log_every)

    cfg = load_config(TrainConfig, None, base + ["name=ray", "workers=1"])
    t0 = time.time()
    rep = train(cfg, log=lambda *_: None)
    ray_e2e = time.time() - t0
    ray_sps = a.steps / loop_seconds(rep["history"], a.log_every)

    res = {
        "device": torch.cuda.get_device_name(0) if a.gpu else "cpu", "bf16": a.gpu and not a.fp32,
        "size": a.size, "batch": a.batch, "points": a.points, "steps": a.steps, "threads": a.threads,
        "plain_loop_steps_per_s": round(plain_sps, 3), "ray_loop_steps_per_s": round(ray_sps, 3),
        "ratio_ray_over_plain": round(ray_sps / plain_sps, 3),
        "plain_end_to_end_s": round(plain_e2e, 2), "ray_end_to_end_s": round(ray_e2e, 2),
        "ray_init_s": round(ray_init_s, 2),
        "final_loss_plain": round(plain["loss"], 5), "final_loss_ray": round(rep["metrics"]["loss"], 5),
    }
    print(json.dumps(res, indent=2))
    print(f"Ray Train / plain loop throughput: {res['ratio_ray_over_plain']:.2f}x "
          f"({ray_sps:.2f} vs {plain_sps:.2f} steps/s); end to end {ray_e2e:.1f}s vs {plain_e2e:.1f}s")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    if not a.dir:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
