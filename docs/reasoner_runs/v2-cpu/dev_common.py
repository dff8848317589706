"""What the issue-15 dev scripts share: the dev newsgroups pairs, the ks and seeds, their embeddings
(kept under tart_runs/views/), the episodes drawn from them, v1 over random views of a reduction, and
the table they print (mean accuracy per row and over the rows; OUT=file.json keeps it)."""
import json
import os
from pathlib import Path

import numpy as np

PAIRS = [("sci.space", "sci.med"), ("rec.motorcycles", "rec.autos"), ("comp.windows.x", "comp.graphics"),
         ("talk.politics.guns", "talk.politics.misc")]
KS, SEEDS = (18, 32, 64), range(5)


def embeddings(backbone: str, pos: str, neg: str):
    """A dev pair's balanced pool of 256 and test set of 200, embedded by `backbone` (causal LMs: posts cut
    at 128 tokens) once and kept as tart_runs/views/<backbone>-<pos>-<neg>.npz: Ep, yp, Et, yt (float64)."""
    from pipeline.datasets import load_examples
    f = Path(f"tart_runs/views/{backbone}-{pos}-{neg}.npz")
    opts = dict(positive_class=pos, negative_class=neg)
    pool = load_examples("newsgroups", "train", train_size=256, **opts)
    test = load_examples("newsgroups", "test", test_size=200, **opts)
    if not f.exists():
        from pipeline.backbones import load_backbone
        bb = load_backbone(backbone, **({"max_length": 128} if "minilm" not in backbone else {}))
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f, Ep=bb.embed(pool.inputs), Et=bb.embed(test.inputs))
    z = np.load(f)
    return z["Ep"].astype(np.float64), pool.labels, z["Et"].astype(np.float64), test.labels


def episodes(backbone: str):
    """Every dev episode, as the grid draws its contexts: (row name, seed, Xc, yc, Xq, yq) for each pair,
    seed and k (the whole test set as queries)."""
    from pipeline.datasets import context_sets
    for pos, neg in PAIRS:
        Ep, yp, Et, yt = embeddings(backbone, pos, neg)
        for seed in SEEDS:
            sets = context_sets(yp, KS, seed)
            for k in KS:
                yield f"{pos} k={k}", seed, Ep[sets[k]], yp[sets[k]], Et, yt
        print(pos, "done", flush=True)


def accuracies(p: dict, yq) -> dict:
    """method -> accuracy of its P(y=1) answers."""
    return {m: float(((q > 0.5) == yq).mean()) for m, q in p.items()}


def view_probs(reasoner, Xc, yc, Xq, seed: int, D: int, reduction: str, views: int = 8):
    """The random subspace method: the reasoner on `views` random 16-dim subspaces of the context's top
    min(D, k-1) directions of `reduction`, each view rescaled to a mean variance of 1. Returns the
    views' answers, (views, q)."""
    from pipeline.methods import fit_whitening
    w = fit_whitening(Xc, d=D, reduction=reduction, allow_small_k=True)
    Zc, Zq = w.transform(Xc)[:, :w.n_informative], w.transform(Xq)[:, :w.n_informative]
    rng = np.random.default_rng(1000 + seed)
    A, B = [], []
    for _ in range(views):
        R, _ = np.linalg.qr(rng.standard_normal((Zc.shape[1], 16)))
        a, b = Zc @ R, Zq @ R
        g = np.sqrt(a.var(0, ddof=1).mean())
        A.append(a / g)
        B.append(b / g)
    return reasoner.predict_proba(np.stack(A).astype(np.float32), np.repeat(yc[None], views, 0),
                                  np.stack(B).astype(np.float32))


def report(rows: dict, title: str = "") -> dict:
    """rows: row name -> one {method: accuracy} per episode. Prints the markdown table of the means."""
    cols = list(next(iter(rows.values()))[0])
    table = {n: {m: float(np.mean([a[m] for a in accs])) for m in cols} for n, accs in rows.items()}
    print((f"{title}\n" if title else "") + "| row | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for n, mean in table.items():
        print(f"| {n} | " + " | ".join(f"{mean[m]:.3f}" for m in cols) + " |")
    print("| mean | " + " | ".join(f"{np.mean([t[m] for t in table.values()]):.4f}" for m in cols) + " |")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).write_text(json.dumps(table, indent=1) + "\n")
    return table
