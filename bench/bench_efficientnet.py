"""Benchmark: EfficientNet-Lite0's input size and dtype, speed against few-shot quality.

For each input size (--sizes) and dtype (--dtypes) the same `ConvBackbone` the registry
builds (only its `image_size` differs) embeds a dataset's context pool and balanced test
set (--dataset, default mnist 3 vs 8: 28x28 grayscale, upsampled); printed per setting:
ms per image, wall and CPU time of the process (median of --repeats timed passes over
--n-time images after a warm-up, at --threads torch threads; on a box shared with other work
the CPU time / threads is the steadier figure), then the accuracy of lr_full, lr_probe and tart (shipped reasoner)
at each k over --seeds seeds, on the pipeline's own class-balanced context sets.

Usage (2-core box):
    .venv/bin/python bench/bench_efficientnet.py --sizes 64 96 128 224 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 224])
    ap.add_argument("--dtypes", nargs="+", default=["float32"])
    ap.add_argument("--ks", type=int, nargs="+", default=[18, 32, 64])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--test-size", type=int, default=200)
    ap.add_argument("--n-time", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--methods", nargs="+", default=["lr_full", "lr_probe", "tart"])
    ap.add_argument("--time-only", action="store_true", help="timings only, no embedding of pool/test")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pipeline.backbones import load_backbone
    from pipeline.datasets import load_examples
    from pipeline.datasets.context import context_sets
    from pipeline.methods import run_method
    from pipeline.reasoner import load_reasoner

    opts = {"train_size": args.train_size, "test_size": args.test_size}
    pool, test = load_examples(args.dataset, "train", **opts), load_examples(args.dataset, "test", **opts)
    reasoner = load_reasoner()
    base = load_backbone("efficientnet-lite0")
    rows = []
    for dtype in args.dtypes:
        for size in args.sizes:
            b = load_backbone("efficientnet-lite0", dtype=dtype)
            b.image_size = size
            timed = np.asarray(test.inputs)[: args.n_time]
            b.embed_images(timed[: args.batch_size], batch_size=args.batch_size)  # warm-up
            runs, cpu = [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                b.embed_images(timed, batch_size=args.batch_size)
                runs.append((time.perf_counter() - t0) / len(timed) * 1000)
                cpu.append((time.process_time() - c0) / len(timed) * 1000)
            if args.time_only:
                print(json.dumps({"size": size, "dtype": dtype, "ms_per_image": [round(r, 1) for r in runs],
                                  "cpu_ms_per_image": [round(r, 1) for r in cpu]}), flush=True)
                continue
            Xp = b.embed_images(pool.inputs, batch_size=args.batch_size)
            Xt = b.embed_images(test.inputs, batch_size=args.batch_size)
            acc = {}
            for m in args.methods:
                for k in args.ks:
                    vals = []
                    for seed in range(args.seeds):
                        idx = context_sets(pool.labels, [k], seed)[k]
                        p = run_method(m, Xp[idx], pool.labels[idx], Xt, reasoner=reasoner)
                        vals.append(float(((p > 0.5).astype(int) == test.labels).mean()))
                    acc[f"{m}@{k}"] = round(float(np.mean(vals)), 3)
            row = {"size": size, "dtype": dtype, "ms_per_image": round(statistics.median(runs), 1),
                   "cpu_ms_per_image": round(statistics.median(cpu), 1), **acc}
            rows.append(row)
            print(json.dumps(row), flush=True)
    del base


if __name__ == "__main__":
    main()
