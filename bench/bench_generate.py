"""Benchmark stage 1: episodes/s written as Parquet shards, Ray tasks vs one plain process.

Same run, same config, same code path per shard (`pipeline.generate.write_shard`:
sample with numpy -> Arrow table -> zstd Parquet in memory -> sha256 -> temp file ->
rename), so the ratio isolates what Ray parallelism buys (or costs):

- numpy-only:  `sample_episodes_np` for all N episodes, no Arrow/Parquet/I/O (ceiling);
- plain:       `generate(executor=local)`, shards one after another in this process;
- ray-cold:    first Ray run (worker processes start and import the package);
- ray:         `generate(executor=ray)` with warm workers, median of --repeats.

Usage (2-core box):
    RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \
        .venv/bin/python bench/bench_generate.py --episodes 4096 --shards 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.generate import GenerateConfig, generate  # noqa: E402
from pipeline.synthetic import TaskSpec, sample_episodes_np  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=4096)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--points", type=int, default=258)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-cpus", type=float, default=2, help="logical CPUs for the local Ray")
    ap.add_argument("--cpus-per-task", type=float, default=0.5)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()

    scratch = Path(a.dir or tempfile.mkdtemp(prefix="bench_generate_"))
    scratch.mkdir(parents=True, exist_ok=True)
    base = [f"episodes={a.episodes}", f"shards={a.shards}", f"task.d={a.d}", f"task.points={a.points}",
            f"cpus_per_task={a.cpus_per_task}"]
    runs = iter(range(10**6))

    def once(executor: str) -> float:
        out = scratch / f"run-{next(runs)}"
        cfg = load_config(GenerateConfig, None, [f"output={out}", f"executor={executor}", *base])
        t = time.perf_counter()
        generate(cfg, log=lambda *_: None)
        dt = time.perf_counter() - t
        shutil.rmtree(out)
        return dt

    res: dict = {"episodes": a.episodes, "shards": a.shards, "d": a.d, "points": a.points,
                 "cpus": os.cpu_count(), "ray_num_cpus": a.num_cpus, "cpus_per_task": a.cpus_per_task,
                 "load_avg_1m_start": os.getloadavg()[0]}

    spec = TaskSpec(d=a.d, points=a.points)
    t_np = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        sample_episodes_np(spec, a.episodes, np.random.default_rng(0)).y  # noqa: B018 - include labels
        t_np.append(time.perf_counter() - t)
    once("local")  # warm caches/imports for fairness
    t_plain = [once("local") for _ in range(a.repeats)]

    import ray

    t = time.perf_counter()
    ray.init(num_cpus=a.num_cpus, include_dashboard=False, logging_level="WARNING")
    res["ray_init_s"] = time.perf_counter() - t
    try:
        res["ray_cold_s"] = once("ray")
        t_ray = [once("ray") for _ in range(a.repeats)]
    finally:
        ray.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)

    med = statistics.median
    res.update(numpy_only_s=med(t_np), plain_s=med(t_plain), ray_s=med(t_ray),
               plain_runs_s=t_plain, ray_runs_s=t_ray, load_avg_1m_end=os.getloadavg()[0])
    eps = {k: a.episodes / res[f"{k}_s"] for k in ("numpy_only", "plain", "ray", "ray_cold")}
    res["episodes_per_s"] = eps
    res["ray_over_plain"] = eps["ray"] / eps["plain"]

    print(f"{a.episodes} episodes (d={a.d}, points={a.points}) in {a.shards} zstd Parquet shards; "
          f"median of {a.repeats}; {os.cpu_count()} cores, Ray num_cpus={a.num_cpus}, "
          f"{a.cpus_per_task} CPU/task; load avg {res['load_avg_1m_start']:.2f} -> {res['load_avg_1m_end']:.2f}")
    print(f"  {'mode':<28}{'seconds':>10}{'episodes/s':>14}")
    rows = [("numpy sampling only", "numpy_only"), ("plain process (local)", "plain"),
            ("Ray tasks, cold workers", "ray_cold"), ("Ray tasks, warm workers", "ray")]
    for label, k in rows:
        print(f"  {label:<28}{res[f'{k}_s']:>10.3f}{eps[k]:>14.0f}")
    print(f"  ray.init: {res['ray_init_s']:.2f}s (not counted)")
    print(f"ratio Ray(warm)/plain episodes/s: {res['ray_over_plain']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
