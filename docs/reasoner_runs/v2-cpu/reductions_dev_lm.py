"""The reduction question on a causal LM, on dev data (issue 15): newsgroups pairs of the dev grid
embedded with SmolLM2-135M (stream protocol, each post cut at 128 tokens so it fits this CPU), balanced
pools of 256 and test sets of 200, k = 18 / 32 / 64, seeds 0-4, contexts drawn as the grid draws them.
Compares v1 through the paper's whitening, the scaled reduction and a partial whitening (each
coordinate divided by its variance^(1/4), then one global scale), next to the LR probes, and the
probes on 32 PCA dims (k=18 keeps its 17 informative directions), where a wider reasoner could gain.

    python docs/reasoner_runs/v2-cpu/reductions_dev_lm.py [backbone]      (default smollm2-135m)

The embeddings are made once and kept under tart_runs/views/ (`dev_common.embeddings`);
OUT=file.json keeps the table; WIDE=checkpoint adds that reasoner (e.g. run K's d=32 one) through the
reduction it was trained on, k=18 keeping its 17 informative directions as the d=32 probes do."""
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, ".")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_common import accuracies, episodes, report  # noqa: E402
from pipeline.methods import fit_whitening, run_method  # noqa: E402
from pipeline.reasoner import load_reasoner  # noqa: E402

BACKBONE = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
reasoner = load_reasoner("v1")
wide = load_reasoner(os.environ["WIDE"]) if os.environ.get("WIDE") else None


def partial(Xc, yc, Xq):
    """v1 on the scaled features with each coordinate divided by its context variance^(1/4) (its
    variance becomes the square root of the scaled one), then one scale to a mean variance of 1."""
    w = fit_whitening(Xc, d=16, reduction="scaled")
    Zc, Zq = w.transform(Xc), w.transform(Xq)
    v = Zc.var(0, ddof=1)
    f = np.where(v > 0, v ** 0.25, 1.0)
    Zc, Zq = Zc / f, Zq / f
    g = np.sqrt(Zc.var(0, ddof=1).mean())
    return reasoner.predict_proba((Zc / g)[None].astype(np.float32), yc[None], (Zq / g)[None].astype(np.float32))[0]


rows = defaultdict(list)
for row, _, Xc, yc, Xq, yq in episodes(BACKBONE):
    p = {"lr_probe": run_method("lr_probe", Xc, yc, Xq), "lr_scaled": run_method("lr_scaled", Xc, yc, Xq),
         "lr_full": run_method("lr_full", Xc, yc, Xq),
         "tart (whiten)": run_method("tart", Xc, yc, Xq, reasoner=reasoner),
         "tart (scaled)": run_method("tart_scaled", Xc, yc, Xq, reasoner=reasoner),
         "tart (partial)": partial(Xc, yc, Xq),
         # where a wider reasoner could gain: the probes on 32 PCA dims
         "lr_probe d=32": run_method("lr_probe", Xc, yc, Xq, d=32, allow_small_k=True),
         "lr_scaled d=32": run_method("lr_scaled", Xc, yc, Xq, d=32, allow_small_k=True)}
    if wide is not None:
        p[f"tart d={wide.d} ({wide.reduction})"] = run_method("tart", Xc, yc, Xq, reasoner=wide, allow_small_k=True)
    rows[row].append(accuracies(p, yq))
report(rows, BACKBONE)
