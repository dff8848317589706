"""Benchmark stage 3: embedding throughput, Ray Data actor pool (1 actor) vs a plain loop.

Same run, same backbone, batch size, torch threads and texts:

- plain:     one `load_backbone` in this process, then `embed_texts` over the texts in
             slices of --batch-size, in the same longest-first order the pipeline uses
             (the ceiling: no Ray, no Arrow, no cache writes);
- local:     `embed(executor=local)`: the pipeline's in-process path (same embedder class
             as the actors) incl. dataset digest, Parquet cache write and manifest;
- ray-cold:  `embed(executor=ray)`, first run: includes the actor start and model load;
- ray:       `embed(executor=ray)` again on warm Ray (new actor pool; model load per run),
             and `ray-stream`: just the Ray Data pipeline (build_dataset + iter_batches), no
             cache I/O, so the ratio isolates Ray Data's own overhead.

`--actors 1,2,4,8` then times the Ray Data pipeline (`ray-stream`) with each pool size, each
actor on --cpus-per-actor CPUs and --threads torch threads: scaling with actors where the
cores allow (a 2-core box has no room; run it on a many-core machine,
`bench/embed_scaling_check.sh`).

Every pipeline run uses overwrite=true so it really computes. The model load inside the
actor is reported separately (`load_s`) so steady-state throughput can be compared.

Usage (2-core box):
    RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 \\
        .venv/bin/python bench/bench_embed.py --backbone minilm-l6 --n 512 --batch-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)

import numpy as np  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="minilm-l6")
    ap.add_argument("--dataset", default="sms_spam")
    ap.add_argument("--n", type=int, default=512, help="texts (first n of the train split)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, same for plain and the actor")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--num-cpus", type=float, default=2, help="logical CPUs of the local Ray")
    ap.add_argument("--actors", default="", help="comma list of pool sizes for the scaling runs (e.g. 1,2,4,8)")
    ap.add_argument("--only-scaling", action="store_true", help="plain loop + the --actors runs only")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pipeline import embed as E
    from pipeline.backbones import load_backbone

    res: dict = {"backbone": args.backbone, "n": args.n, "batch_size": args.batch_size, "threads": args.threads}
    tmp = tempfile.mkdtemp(prefix="bench_embed_")
    base = dict(dataset=args.dataset, splits=["train"], backbone=args.backbone, limit=args.n,
                batch_size=args.batch_size, torch_threads=args.threads, cpus_per_actor=args.cpus_per_actor,
                cache_uri=tmp, overwrite=True, actors=1)

    # plain loop
    t = time.perf_counter()
    bb = load_backbone(args.backbone)
    load_s = time.perf_counter() - t
    plan = E.make_plan(E.EmbedConfig(**base))
    ex = plan.examples["train"]
    texts = [ex.texts[i] for i in np.argsort([-len(x) for x in ex.texts], kind="stable")]
    bb.embed_texts(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up (allocator, kernels)
    t = time.perf_counter()
    for s in range(0, len(texts), args.batch_size):
        bb.embed_texts(texts[s:s + args.batch_size], batch_size=args.batch_size)
    plain = time.perf_counter() - t
    res["plain"] = {"seconds": round(plain, 3), "texts_per_s": round(len(texts) / plain, 1), "load_s": round(load_s, 2)}
    print(f"plain loop: {plain:.2f} s, {len(texts) / plain:.0f} texts/s", flush=True)

    import ray

    if args.only_scaling:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR")
        return _scaling(args, res, E, base, plan, ex, texts, plain)
    t = time.perf_counter()
    E.embed(E.EmbedConfig(**base, executor="local"), log=lambda m: None)
    local = time.perf_counter() - t
    res["local"] = {"seconds": round(local, 3), "texts_per_s": round(len(texts) / local, 1), "includes": "model load"}

    t = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR")
    res["ray_init_s"] = round(time.perf_counter() - t, 2)
    for name in ("ray-cold", "ray"):
        t = time.perf_counter()
        E.embed(E.EmbedConfig(**base, executor="ray"), log=lambda m: None)
        secs = time.perf_counter() - t
        res[name] = {"seconds": round(secs, 3), "texts_per_s": round(len(texts) / secs, 1),
                     "includes": "actor start + model load + cache write"}
    cfg = E.EmbedConfig(**base, executor="ray")
    t = time.perf_counter()
    n = sum(len(b["id"]) for b in E.build_dataset(cfg, plan, ex).iter_batches(batch_size=None, batch_format="numpy"))
    secs = time.perf_counter() - t
    assert n == len(texts)
    res["ray-stream"] = {"seconds": round(secs, 3), "texts_per_s": round(n / secs, 1),
                         "includes": "actor start + model load"}
    # steady state: subtract one model load (measured in this process) from the Ray runs
    for name in ("ray", "ray-stream", "local"):
        steady = max(1e-9, res[name]["seconds"] - load_s)
        res[name]["ratio_vs_plain_minus_load"] = round(steady / plain, 2)
    res["ratio_ray_vs_plain_total"] = round(res["ray"]["seconds"] / plain, 2)
    return _scaling(args, res, E, base, plan, ex, texts, plain)


def _scaling(args, res, E, base, plan, ex, texts, plain) -> int:
    import ray

    scaling = {}
    for a in [int(x) for x in args.actors.split(",") if x]:
        cfg = E.EmbedConfig(**{**base, "actors": a}, executor="ray")
        t = time.perf_counter()
        n = sum(len(b["id"]) for b in E.build_dataset(cfg, plan, ex).iter_batches(batch_size=None, batch_format="numpy"))
        secs = time.perf_counter() - t
        assert n == len(texts)
        scaling[a] = {"seconds": round(secs, 3), "texts_per_s": round(n / secs, 1)}
        print(f"{a} actor(s): {secs:.2f} s, {n / secs:.0f} texts/s", flush=True)
    for a, r in scaling.items():
        r["speedup_vs_1_actor"] = round(scaling[min(scaling)]["seconds"] / r["seconds"], 2)
        r["vs_plain_loop"] = round(plain / r["seconds"], 2)
    if scaling:
        res["scaling"] = scaling
    ray.shutdown()
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
