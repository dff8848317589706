"""What a multi-class tart cell costs against a binary one, and a training step on this CPU.

1. Inference: tart on C classes is the binary reasoner composed one-vs-rest, the C episodes in
   ONE batched reasoner call (`methods.run_method(..., n_classes=C)`). Timed against the binary
   cell (C=2) on the same context size and queries, and against C separate binary calls (what a
   loop over classes would cost). Synthetic Gaussian classes; the outputs of the batched and the
   looped compositions are checked equal.
2. Training: optimizer steps/s of the shipped reasoner's shape (8 x 8 x 256) on embedding-family
   episodes (`task.family=embedding`, k in 17..64, 32 queries, batch 64), the recipe v2 runs
   used, against the paper's gaussian task at the same batch and 96 points.

    .venv/bin/python bench/bench_multiclass.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_inference(args) -> list[dict]:
    from pipeline.methods import run_method
    from pipeline.reasoner import load_reasoner

    reasoner = load_reasoner()
    rng = np.random.default_rng(0)
    rows = []
    for C in args.classes:
        k = args.per_class * C
        centres = rng.normal(size=(C, 64)) * 2
        yc = np.repeat(np.arange(C), args.per_class)
        yq = rng.integers(0, C, size=args.queries)
        Xc, Xq = centres[yc] + rng.normal(size=(k, 64)), centres[yq] + rng.normal(size=(args.queries, 64))
        yb = (yc % 2).astype(int)  # the binary cell of the same k and queries: the baseline
        t_bin = _best(lambda: run_method("tart", Xc, yb, Xq, reasoner=reasoner), args.repeat)
        if C == 2:
            rows.append({"classes": 2, "k": k, "binary_s": round(t_bin, 4)})
            continue
        batched = run_method("tart", Xc, yc, Xq, reasoner=reasoner, n_classes=C)

        def looped():
            p = np.stack([run_method("tart", Xc, (yc == c).astype(int), Xq, reasoner=reasoner) for c in range(C)], 1)
            return p / p.sum(1, keepdims=True)

        assert np.abs(looped() - batched).max() < 1e-4
        t_b = _best(lambda: run_method("tart", Xc, yc, Xq, reasoner=reasoner, n_classes=C), args.repeat)
        t_l = _best(looped, args.repeat)
        rows.append({"classes": C, "k": k, "binary_s": round(t_bin, 4), "batched_s": round(t_b, 4),
                     "looped_s": round(t_l, 4), "batched_over_binary": round(t_b / t_bin, 2),
                     "loop_over_batched": round(t_l / t_b, 2),
                     "accuracy": round(float((batched.argmax(1) == yq).mean()), 3)})
    return rows


def bench_training(args) -> dict:
    import torch
    import torch.nn.functional as F

    from pipeline.reasoner import ReasonerConfig, ReasonerModel
    from pipeline.synthetic import (EmbeddingPrior, TaskSpec, apply_curriculum, context_size, embedding_batch,
                                    sample_episodes_torch)

    model = ReasonerModel(ReasonerConfig.of_size("medium", d=16, max_points=258))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    fam = TaskSpec(d=16, points=96, family="embedding", prior=EmbeddingPrior(raw_dims=256))
    gauss = TaskSpec(d=16, points=96)
    g = torch.Generator().manual_seed(0)

    def step_family(s):
        k = context_size(fam, 0, s)
        xc, yc, xq, yq = embedding_batch(fam, args.batch, k, g)
        loss = F.binary_cross_entropy_with_logits(model(torch.cat([xc, xq], 1), torch.cat([yc, yq], 1), k), yq)
        loss.backward(), opt.step(), opt.zero_grad()

    def step_gauss(s):
        w, x, u = sample_episodes_torch(gauss, args.batch, g)
        xb, yb = apply_curriculum(w, x, u, 16, 96)
        loss = F.binary_cross_entropy_with_logits(model(xb, yb), yb)
        loss.backward(), opt.step(), opt.zero_grad()

    out = {}
    for name, fn in (("embedding_family", step_family), ("gaussian_96_points", step_gauss)):
        fn(0)
        t = time.perf_counter()
        for s in range(args.steps):
            fn(s + 1)
        out[f"{name}_steps_per_s"] = round(args.steps / (time.perf_counter() - t), 3)
    out["family_over_gaussian"] = round(out["embedding_family_steps_per_s"] / out["gaussian_96_points_steps_per_s"], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--classes", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--per-class", type=int, default=9)  # k = 9 C > d = 16 for every C >= 2
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    print(json.dumps({"inference": bench_inference(a), "training": bench_training(a), "threads": a.threads},
                     indent=2))


if __name__ == "__main__":
    main()
