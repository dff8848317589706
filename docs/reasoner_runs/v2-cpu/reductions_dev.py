"""What the reduction alone is worth, without training (issue 15): on the dev grid's own episodes
(same context and test sets as its cells), v1 and logistic regression on the paper's whitened PCA-16
features, on the `scaled` reduction (unit rows, context PCA-16, one global scale), and two
reference points: cosine nearest-centroid on the full embeddings and a transductive whitening
(PCA fitted on the context AND the unlabelled test queries).

    python docs/reasoner_runs/v2-cpu/reductions_dev.py configs/grids/reasoner-dev.yaml [reasoner]

Prints the mean accuracy per (pair, k) row and over the rows; OUT=file.json keeps the table."""
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, ".")
from pipeline.config import load_config  # noqa: E402
from pipeline.grid import GridSpec  # noqa: E402
from pipeline.grid.cells import group_episodes  # noqa: E402
from pipeline.grid.spec import expand  # noqa: E402
from pipeline.methods import fit_whitening, run_method  # noqa: E402
from pipeline.reasoner import load_reasoner  # noqa: E402

spec = load_config(GridSpec, sys.argv[1], ["methods=[lr_probe]"])
reasoner = load_reasoner(sys.argv[2] if len(sys.argv) > 2 else "v1")


def centroid(Xc, yc, Xq):
    """Nearest class mean by cosine: unit rows, the logit along the class-mean difference."""
    unit = lambda X: X / np.linalg.norm(X, axis=1, keepdims=True)
    Nc, Nq = unit(Xc), unit(Xq)
    m1, m0 = Nc[yc == 1].mean(0), Nc[yc == 0].mean(0)
    s = Nq @ (m1 - m0) - 0.5 * (m1 @ m1 - m0 @ m0)
    return 1 / (1 + np.exp(-s / (np.std(Nc @ (m1 - m0)) + 1e-12)))


def transductive(Xc, yc, Xq):
    from sklearn.linear_model import LogisticRegression

    w = fit_whitening(np.vstack([Xc, Xq]), d=16)
    return LogisticRegression(C=1.0, max_iter=1000).fit(w.transform(Xc), yc).predict_proba(w.transform(Xq))[:, 1]


groups = defaultdict(list)
for c in expand(spec):
    groups[(c.dataset, c.dataset_options, c.backbone, c.protocol)].append(c)
rows = defaultdict(list)
for cs in groups.values():
    episodes, _ = group_episodes(spec, cs)
    for c, ep in episodes.items():
        Xc, yc, Xq = ep.Xc.astype(np.float64), ep.yc, ep.Xq.astype(np.float64)
        pos = json.loads(c.dataset_options).get("positive_class", "sci.space")
        p = {"lr_probe (whiten)": run_method("lr_probe", Xc, yc, Xq),
             "tart (whiten)": run_method("tart", Xc, yc, Xq, reasoner=reasoner, reduction="whiten"),
             "tart (scaled)": run_method("tart", Xc, yc, Xq, reasoner=reasoner, reduction="scaled"),
             "lr_scaled C=1": run_method("lr_scaled", Xc, yc, Xq),
             "lr_scaled C=0.1": run_method("lr_scaled", Xc, yc, Xq, C=0.1),
             "lr_full": run_method("lr_full", Xc, yc, Xq),
             "centroid (cosine, all dims)": centroid(Xc, yc, Xq),
             "LR, transductive whitening": transductive(Xc, yc, Xq)}
        rows[f"{pos} {c.backbone} k={c.k}"].append({m: float(((q > 0.5) == ep.yq).mean()) for m, q in p.items()})
cols = list(next(iter(rows.values()))[0])
table = {name: {m: float(np.mean([a[m] for a in accs])) for m in cols} for name, accs in rows.items()}
print("| row | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
for name, mean in table.items():
    print(f"| {name} | " + " | ".join(f"{mean[m]:.3f}" for m in cols) + " |")
print("| mean | " + " | ".join(f"{np.mean([t[m] for t in table.values()]):.4f}" for m in cols) + " |")
if os.environ.get("OUT"):
    Path(os.environ["OUT"]).write_text(json.dumps(table, indent=1) + "\n")
