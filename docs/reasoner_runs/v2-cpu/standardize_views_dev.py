"""On dev data (issue 15), no training: what the dims past 16 of the `standardized` reduction hold.
The LR probe on 32 standardized dims, and v1 on 8 random 16-dim views of the top-24 / top-32
standardized directions (answers averaged), against tart_standardized and lr_full. Reads the dev
embeddings views_dev.py keeps (tart_runs/views/); 4 dev newsgroups pairs, k 18/32/64, seeds 0-4.

    python docs/reasoner_runs/v2-cpu/standardize_views_dev.py minilm-l6|smollm2-135m
"""
import os, sys
from collections import defaultdict
import numpy as np
sys.path.insert(0, "."); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_common import KS, PAIRS, SEEDS, report
from pipeline.datasets import context_sets, load_examples
from pipeline.methods import run_method, fit_whitening
from pipeline.reasoner import load_reasoner
BB = sys.argv[1]; R = load_reasoner("v1")
def emb(pos, neg):
    z = np.load(f"tart_runs/views/{BB}-{pos}-{neg}.npz")
    o = dict(positive_class=pos, negative_class=neg)
    pool = load_examples("newsgroups", "train", train_size=256, **o); test = load_examples("newsgroups", "test", test_size=200, **o)
    return z["Ep"].astype(np.float64), pool.labels, z["Et"].astype(np.float64), test.labels
def views(Xc, yc, Xq, seed, D, n=8):
    w = fit_whitening(Xc, d=D, reduction="standardized", allow_small_k=True)
    Zc, Zq = w.transform(Xc)[:, :w.n_informative], w.transform(Xq)[:, :w.n_informative]
    rng = np.random.default_rng(1000 + seed); A, B = [], []
    for _ in range(n):
        Q, _ = np.linalg.qr(rng.standard_normal((Zc.shape[1], 16))); a, b = Zc @ Q, Zq @ Q
        g = np.sqrt(a.var(0, ddof=1).mean()); A.append(a / g); B.append(b / g)
    return R.predict_proba(np.stack(A).astype(np.float32), np.repeat(yc[None], n, 0), np.stack(B).astype(np.float32)).mean(0)
rows = defaultdict(list)
for pos, neg in PAIRS:
    Ep, yp, Et, yt = emb(pos, neg)
    for seed in SEEDS:
        sets = context_sets(yp, KS, seed)
        for k in KS:
            Xc, yc = Ep[sets[k]], yp[sets[k]]
            p = {"lr_full": run_method("lr_full", Xc, yc, Et), "tart_standardized": run_method("tart_standardized", Xc, yc, Et, reasoner=R),
                 "lr_std d=32": run_method("lr_standardized", Xc, yc, Et, d=32, allow_small_k=True),
                 "views top-24": views(Xc, yc, Et, seed, 24), "views top-32": views(Xc, yc, Et, seed, 32)}
            rows[f"{pos} k={k}"].append({m: float(((q > 0.5) == yt).mean()) for m, q in p.items()})
report(rows, BB)
