"""What each composition's reduction costs per cell: tart and lr_probe on the `whiten` (the paper's,
the baseline), `scaled` and `standardized` reductions, one episode at a time as the grid runs them.

    .venv/bin/python bench/bench_reductions.py --threads 2 [--dim 576 --k 64 --queries 300 --repeat 20]

Inputs are random (the cost does not depend on the values), shaped like a causal LM's pooled states
(SmolLM2-135M: 576 dims, a few features with 100x the variance). Prints each method's median time per
cell and its ratio to the same method on the whiten reduction, measured in the same run."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    from pipeline.methods import run_method
    from pipeline.reasoner import load_reasoner

    torch.set_num_threads(a.threads)
    reasoner = load_reasoner("v1")
    rng = np.random.default_rng(0)
    scale = np.ones(a.dim)
    scale[:3] = 100.0
    Xc, Xq = rng.normal(size=(a.k, a.dim)) * scale, rng.normal(size=(a.queries, a.dim)) * scale
    yc = np.tile([0, 1], a.k // 2)
    rows = []
    with threadpool_limits(a.threads):
        for base in ("tart", "lr_probe"):
            times = {}
            for red in ("whiten", "scaled", "standardized"):
                name = base if red == "whiten" else {"tart": "tart", "lr_probe": "lr"}[base] + "_" + red
                run_method(name, Xc, yc, Xq, reasoner=reasoner)  # warm-up
                ts = []
                for _ in range(a.repeat):
                    t = time.perf_counter()
                    run_method(name, Xc, yc, Xq, reasoner=reasoner)
                    ts.append(time.perf_counter() - t)
                times[name] = float(np.median(ts))
            b = times[base]
            for name, t in times.items():
                rows.append({"method": name, "median_ms": round(1000 * t, 2), "vs_whiten": round(t / b, 2)})
    print(json.dumps({"dim": a.dim, "k": a.k, "queries": a.queries, "threads": a.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
