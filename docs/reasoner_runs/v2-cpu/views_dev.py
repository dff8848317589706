"""Composition views on dev data (issue 15), no training: does v1 read through two reductions at
once (the paper's whitening and the `scaled` one) beat either alone and the probes? Dev newsgroups
pairs (the dev grid's), MiniLM-L6 (full posts) or a causal LM (posts cut at 128 tokens), balanced
pools of 256 and tests of 200, k = 18 / 32 / 64, seeds 0-4, contexts drawn as the grid draws them.

    python docs/reasoner_runs/v2-cpu/views_dev.py minilm-l6|smollm2-135m

Embeddings are kept under tart_runs/views/ (npz) so a second run reads them; OUT=file.json keeps the table."""
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, ".")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_common import KS, PAIRS, SEEDS, report  # noqa: E402
from pipeline.datasets import context_sets, load_examples  # noqa: E402
from pipeline.methods import run_method  # noqa: E402
from pipeline.reasoner import load_reasoner  # noqa: E402

BACKBONE = sys.argv[1] if len(sys.argv) > 1 else "minilm-l6"
reasoner = load_reasoner("v1")
logit = lambda p: np.log(np.clip(p, 1e-6, 1 - 1e-6)) - np.log(np.clip(1 - p, 1e-6, 1 - 1e-6))
sig = lambda z: 1 / (1 + np.exp(-z))


def embeddings(pos, neg):
    f = Path(f"tart_runs/views/{BACKBONE}-{pos}-{neg}.npz")
    opts = dict(positive_class=pos, negative_class=neg)
    pool = load_examples("newsgroups", "train", train_size=256, **opts)
    test = load_examples("newsgroups", "test", test_size=200, **opts)
    if not f.exists():
        from pipeline.backbones import load_backbone
        bb = load_backbone(BACKBONE, **({"max_length": 128} if "minilm" not in BACKBONE else {}))
        np.savez(f, Ep=bb.embed(pool.inputs), Et=bb.embed(test.inputs))
    z = np.load(f)
    return z["Ep"].astype(np.float64), pool.labels, z["Et"].astype(np.float64), test.labels


def blocks(Xc, yc, Xq, ps):
    """v1 on a second block of context directions (17-32, scaled like the first) and the first
    block's answer combined with it as a product of experts (logits added)."""
    from pipeline.methods import fit_whitening
    w = fit_whitening(Xc, d=32, reduction="scaled", allow_small_k=True)
    Zc, Zq = w.transform(Xc), w.transform(Xq)
    B, Bq = Zc[:, 16:], Zq[:, 16:]
    lr32 = run_method("lr_scaled", Xc, yc, Xq, d=32, allow_small_k=True)
    if not np.any(B):  # k <= 17: no second block (every k here is >= 18, which leaves it one direction)
        return {"PoE blocks 1-16 + 17-32": ps, "PoE, block 2 at half weight": ps, "lr_scaled d=32": lr32}
    g = np.sqrt(B.var(0, ddof=1).mean())
    pb = reasoner.predict_proba((B / g)[None].astype(np.float32), yc[None], (Bq / g)[None].astype(np.float32))[0]
    return {"PoE blocks 1-16 + 17-32": sig(logit(ps) + logit(pb)), "PoE, block 2 at half weight": sig(logit(ps) + 0.5 * logit(pb)),
            "lr_scaled d=32": lr32}


def subspaces(Xc, yc, Xq, seed, views=8):
    """The random subspace method: v1 on `views` random 16-dim subspaces of the context's top
    min(D, k-1) scaled directions (D = 24 or 32), each view rescaled to a mean variance of 1, the
    views' answers averaged (probabilities)."""
    from pipeline.methods import fit_whitening
    out = {}
    for D in (24, 32):
        w = fit_whitening(Xc, d=D, reduction="scaled", allow_small_k=True)
        Zc, Zq = w.transform(Xc)[:, :w.n_informative], w.transform(Xq)[:, :w.n_informative]
        n = Zc.shape[1]
        rng = np.random.default_rng(1000 + seed)
        A, B = [], []
        for _ in range(views):
            R, _ = np.linalg.qr(rng.standard_normal((n, 16)))
            a, b = Zc @ R, Zq @ R
            g = np.sqrt(a.var(0, ddof=1).mean())
            A.append(a / g); B.append(b / g)
        p = reasoner.predict_proba(np.stack(A).astype(np.float32), np.repeat(yc[None], views, 0), np.stack(B).astype(np.float32))
        out[f"subspaces of top-{D}, mean prob"] = p.mean(0)
        out[f"subspaces of top-{D}, mean logit"] = sig(logit(p).mean(0))
    return out


rows = defaultdict(list)
for pos, neg in PAIRS:
    Ep, yp, Et, yt = embeddings(pos, neg)
    for seed in SEEDS:
        sets = context_sets(yp, KS, seed)
        for k in KS:
            Xc, yc = Ep[sets[k]], yp[sets[k]]
            pw = run_method("tart", Xc, yc, Et, reasoner=reasoner)
            ps = run_method("tart_scaled", Xc, yc, Et, reasoner=reasoner)
            p = {"lr_probe": run_method("lr_probe", Xc, yc, Et), "lr_scaled": run_method("lr_scaled", Xc, yc, Et),
                 "lr_full": run_method("lr_full", Xc, yc, Et), "tart (whiten)": pw, "tart (scaled)": ps,
                 "mean prob": (pw + ps) / 2, "mean logit": sig((logit(pw) + logit(ps)) / 2),
                 "lr mean (whiten+scaled)": (run_method("lr_probe", Xc, yc, Et) + run_method("lr_scaled", Xc, yc, Et)) / 2}
            p.update(blocks(Xc, yc, Et, ps))
            p.update(subspaces(Xc, yc, Et, seed))
            rows[f"{pos} k={k}"].append({m: float(((q > 0.5) == yt).mean()) for m, q in p.items()})
    print(pos, "done", flush=True)
report(rows, BACKBONE)
