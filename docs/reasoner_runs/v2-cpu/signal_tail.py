"""What directions 17-32 of the `standardized` reduction are worth, real against synthetic: the gain of logistic
regression (C = 1) on the top 32 directions over the top 16, at k = 32 and 64. Real: the dev pairs
(`checkpoint_dev_M_*.json`, columns lr_standardized d=32 and lr_standardized). Synthetic: 256 episodes of run
L/M's rotated prior as training draws them (`synthetic.embedding_batch`, 400 queries each; the prior read from
configs/train/v2-d32-gpu.yaml, which is that prior but for its decay, without the paper's episodes), for a few
ranges of the task's decay exponent a (w_j ~ N(0, (j+1)^-2a) over the raw coordinates). A d = 32 reasoner can learn to
read directions 17-32 only if its training episodes put signal there (BENCHMARKS.md, "Runs O and P").

    python docs/reasoner_runs/v2-cpu/signal_tail.py
"""
import json
import os
import sys
from dataclasses import replace

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, ".")
from pipeline.config import load_config  # noqa: E402
from pipeline.synthetic import TaskSpec, embedding_batch  # noqa: E402
from pipeline.train.config import TrainConfig  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KS, D, EPISODES, QUERIES = (32, 64), 32, 256, 400
RECIPE = load_config(TrainConfig, "configs/train/v2-d32-gpu.yaml").task.prior


def lr_acc(zc, yc, zq, yq) -> float:
    if len(set(yc)) < 2:
        return float((yq == yc[0]).mean())
    return float((LogisticRegression(C=1.0, max_iter=1000).fit(zc, yc).predict(zq) == yq).mean())


for bb in ("smollm2-135m", "minilm-l6"):
    rows = json.load(open(os.path.join(HERE, f"checkpoint_dev_M_{bb}.json")))
    gains = [np.mean([r["lr_standardized d=32"] - r["lr_standardized"] for n, r in rows.items() if n.endswith(f"k={k}")])
             for k in KS]
    print(f"{bb:24s}", "  ".join(f"k={k} LR32-LR16 {g:+.4f}" for k, g in zip(KS, gains)), flush=True)

for dmin, dmax in [(0.75, 2.0), (0.25, 1.25), (0.0, 1.0), (0.0, 0.5)]:
    prior = replace(RECIPE, decay_min=dmin, decay_max=dmax, paper_share=0.0, queries=QUERIES)
    out = []
    for k in KS:
        gen = torch.Generator().manual_seed(k)
        zc, yc, zq, yq = (t.numpy() for t in embedding_batch(TaskSpec(d=D, points=96, family="embedding", prior=prior), EPISODES, k, gen))
        g = [lr_acc(zc[i, :, :D], yc[i], zq[i, :, :D], yq[i]) - lr_acc(zc[i, :, :16], yc[i], zq[i, :, :16], yq[i])
             for i in range(EPISODES)]
        out.append(f"k={k} LR32-LR16 {np.mean(g):+.4f} (se {np.std(g) / np.sqrt(EPISODES):.4f})")
    print(f"synth decay {dmin}-{dmax:<12}", "  ".join(out), flush=True)
