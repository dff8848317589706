"""Composition views on dev data (issue 15), no training: does v1 read through two reductions at
once (the paper's whitening and the `scaled` one) beat either alone and the probes? Dev newsgroups
pairs (the dev grid's), MiniLM-L6 (full posts) or a causal LM (posts cut at 128 tokens), balanced
pools of 256 and tests of 200, k = 18 / 32 / 64, seeds 0-4, contexts drawn as the grid draws them.

    python docs/reasoner_runs/v2-cpu/views_dev.py minilm-l6|smollm2-135m

Embeddings are kept under tart_runs/views/ (npz) so a second run reads them; OUT=file.json keeps the table."""
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, ".")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_common import accuracies, episodes, report, view_probs  # noqa: E402
from pipeline.methods import run_method  # noqa: E402
from pipeline.reasoner import load_reasoner  # noqa: E402

BACKBONE = sys.argv[1] if len(sys.argv) > 1 else "minilm-l6"
reasoner = load_reasoner("v1")
logit = lambda p: np.log(np.clip(p, 1e-6, 1 - 1e-6)) - np.log(np.clip(1 - p, 1e-6, 1 - 1e-6))
sig = lambda z: 1 / (1 + np.exp(-z))


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
    """v1 on `views` random 16-dim subspaces of the top-24 / top-32 scaled directions (`view_probs`),
    the views' answers averaged as probabilities and as logits."""
    out = {}
    for D in (24, 32):
        p = view_probs(reasoner, Xc, yc, Xq, seed, D, "scaled", views)
        out[f"subspaces of top-{D}, mean prob"] = p.mean(0)
        out[f"subspaces of top-{D}, mean logit"] = sig(logit(p).mean(0))
    return out


rows = defaultdict(list)
for row, seed, Xc, yc, Et, yt in episodes(BACKBONE):
    pw = run_method("tart", Xc, yc, Et, reasoner=reasoner)
    ps = run_method("tart_scaled", Xc, yc, Et, reasoner=reasoner)
    p = {"lr_probe": run_method("lr_probe", Xc, yc, Et), "lr_scaled": run_method("lr_scaled", Xc, yc, Et),
         "lr_full": run_method("lr_full", Xc, yc, Et), "tart (whiten)": pw, "tart (scaled)": ps,
         "mean prob": (pw + ps) / 2, "mean logit": sig((logit(pw) + logit(ps)) / 2),
         "lr mean (whiten+scaled)": (run_method("lr_probe", Xc, yc, Et) + run_method("lr_scaled", Xc, yc, Et)) / 2}
    p.update(blocks(Xc, yc, Et, ps))
    p.update(subspaces(Xc, yc, Et, seed))
    rows[row].append(accuracies(p, yt))
report(rows, BACKBONE)
