"""The variance profile of the 16 `standardized`-reduction directions on k = 32 contexts, real (the dev pairs'
kept embeddings, `dev_common`) against synthetic episodes of run J's prior, axis-aligned and rotated
(`task.prior.rotate`); why run L trained on the rotated prior (BENCHMARKS.md, "Run L"). Prints, per source,
the median over episodes of each direction's variance over their mean ("var") and of |class-mean
difference| / std per direction ("sig").

    python docs/reasoner_runs/v2-cpu/spectrum_match.py
"""
import os, sys, numpy as np, torch
sys.path.insert(0, "."); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_common import PAIRS, embeddings
from pipeline.datasets import context_sets
from pipeline.synthetic import TaskSpec, EmbeddingPrior, sample_embedding_episodes_torch, random_rotation, whiten_context_torch
def profile(zc):  # zc (n,k,16) -> median over episodes of var_j / mean var, plus LR-separability proxy
    v = zc.var(1)  # (n,16)
    return np.median((v / v.mean(1, keepdims=True)), 0)
for bb in ("minilm-l6", "smollm2-135m"):
    for k in (32,):
        Z=[]; S=[]
        for pos, neg in PAIRS:
            Ep, yp, Et, yt = embeddings(bb, pos, neg)
            for seed in range(5):
                idx = context_sets(yp, (k,), seed)[k]
                zc, zq = whiten_context_torch(torch.tensor(Ep[idx])[None].float(), torch.tensor(Et)[None].float(), 16, reduction="standardized")
                Z.append(zc[0].numpy())
                # class signal: |mean diff| per dim / std
                y = yp[idx]; d = zc[0].numpy(); S.append(np.abs(d[y==1].mean(0)-d[y==0].mean(0))/d.std(0))
        print(bb, k, "var", np.round(profile(np.stack(Z)),2), "\n   sig", np.round(np.median(np.stack(S),0),2))
g = torch.Generator().manual_seed(0)
for smin, smax in [(0.1,1.0),(0.3,1.2),(0.5,1.5)]:
    for rot in (False, True):
        pr = EmbeddingPrior(raw_dims=384, signal_min=2, signal_max=60, flip_max=0.1, decay_min=0.75, decay_max=2, spectrum_min=smin, spectrum_max=smax, class_conditional=0.7, sep_min=0.75, sep_max=8, reduction="standardized", rotate=rot)
        spec = TaskSpec(d=16, points=96, family="embedding", prior=pr)
        x, y = sample_embedding_episodes_torch(spec, 128, g, points=64, n_context=32)
        if rot: x = x @ random_rotation(384, g)
        zc, _ = whiten_context_torch(x[:, :32], x[:, 32:], 16, reduction="standardized")
        d = zc.numpy(); yy = y[:, :32].numpy()
        sig = [np.abs(d[i][yy[i]==1].mean(0)-d[i][yy[i]==0].mean(0))/d[i].std(0) for i in range(len(d))]
        print("synth", smin, smax, "rot", rot, "var", np.round(profile(d),2), "\n   sig", np.round(np.nanmedian(np.stack(sig),0),2))
