"""Per-feature standardisation before the scaled reduction, on dev data (issue 15), no training: how
the `standardized` reduction was chosen, before any default-grid or held-out cell was scored with it.
The dev pairs' embeddings are made once and kept under tart_runs/views/ (`dev_common.embeddings`): the 4
dev newsgroups pairs, pools of 256, tests of 200, k 18/32/64, seeds 0-4. Each feature is centred and
divided by sqrt(var + lam * median var) on the context (lam: the shrinkage), then reduced as `scaled`.

    python docs/reasoner_runs/v2-cpu/standardize_dev.py minilm-l6|smollm2-135m

Shipped as `fit_whitening(..., reduction="standardized")` with lam = 1 (methods tart_standardized,
lr_standardized); OUT=file.json keeps the table."""
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, ".")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_common import accuracies, episodes, report  # noqa: E402
from pipeline.methods import run_method  # noqa: E402
from pipeline.reasoner import load_reasoner  # noqa: E402

BACKBONE = sys.argv[1] if len(sys.argv) > 1 else "minilm-l6"
reasoner = load_reasoner("v1")


def standardise(Xc, Xq, lam):
    m, v = Xc.mean(0), Xc.var(0, ddof=1)
    s = np.sqrt(v + lam * np.median(v))
    return (Xc - m) / s, (Xq - m) / s


rows = defaultdict(list)
for row, _, Xc, yc, Et, yt in episodes(BACKBONE):
    p = {m: run_method(m, Xc, yc, Et, reasoner=reasoner) for m in ("lr_probe", "lr_scaled", "lr_full", "tart", "tart_scaled")}
    for lam in (0.0, 0.3, 1.0, 3.0, 10.0):
        Zc, Zq = standardise(Xc, Et, lam)
        p[f"lam={lam} tart"] = run_method("tart_scaled", Zc, yc, Zq, reasoner=reasoner)
        p[f"lam={lam} lr"] = run_method("lr_scaled", Zc, yc, Zq)
    p["tart_standardized"] = run_method("tart_standardized", Xc, yc, Et, reasoner=reasoner)
    rows[row].append(accuracies(p, yt))
report(rows, BACKBONE)
