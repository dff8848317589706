"""The variance profile of the 16 `standardized`-reduction directions on k = 32 contexts, real (the dev pairs'
kept embeddings, `dev_common`) against synthetic episodes of run J's prior as training draws them
(`synthetic.embedding_batch`), axis-aligned and rotated (`task.prior.rotate`); why run L trained on the
rotated prior (BENCHMARKS.md, "Run L"). Prints, per source, the median over episodes of each direction's
variance over their mean ("var") and of |class-mean difference| / std per direction ("sig").

    python docs/reasoner_runs/v2-cpu/spectrum_match.py
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, ".")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_common import PAIRS, SEEDS, embeddings  # noqa: E402
from pipeline.datasets import context_sets  # noqa: E402
from pipeline.synthetic import EmbeddingPrior, TaskSpec, embedding_batch, whiten_context_torch  # noqa: E402

K = 32


def summary(zc: np.ndarray, yc: np.ndarray) -> tuple:
    """zc (n, k, 16) reduced contexts, yc (n, k) labels -> (var, sig) medians over the n episodes."""
    v = zc.var(1)
    sig = [np.abs(z[y == 1].mean(0) - z[y == 0].mean(0)) / z.std(0) for z, y in zip(zc, yc)]
    return np.median(v / v.mean(1, keepdims=True), 0), np.nanmedian(np.stack(sig), 0)


def show(name: str, var, sig):
    print(name, "var", np.round(var, 2), "\n   sig", np.round(sig, 2))


for bb in ("minilm-l6", "smollm2-135m"):
    Z, Y = [], []
    for pos, neg in PAIRS:
        Ep, yp, Et, _ = embeddings(bb, pos, neg)
        for seed in SEEDS:
            idx = context_sets(yp, (K,), seed)[K]
            zc, _ = whiten_context_torch(torch.tensor(Ep[idx])[None].float(), torch.tensor(Et)[None].float(), 16,
                                         reduction="standardized")
            Z.append(zc[0].numpy())
            Y.append(yp[idx])
    show(f"{bb} k={K}", *summary(np.stack(Z), np.stack(Y)))

gen = torch.Generator().manual_seed(0)
for smin, smax in [(0.1, 1.0), (0.3, 1.2), (0.5, 1.5)]:
    for rotate in (False, True):
        prior = EmbeddingPrior(raw_dims=384, signal_min=2, signal_max=60, flip_max=0.1, decay_min=0.75, decay_max=2,
                               spectrum_min=smin, spectrum_max=smax, class_conditional=0.7, sep_min=0.75, sep_max=8,
                               reduction="standardized", rotate=rotate)
        zc, yc, _, _ = embedding_batch(TaskSpec(d=16, points=96, family="embedding", prior=prior), 128, K, gen)
        show(f"synth spectrum {smin}-{smax} rotate={rotate}", *summary(zc.numpy(), yc.numpy()))
