"""Where a reasoner reading more than 16 dims could gain (issue 15): logistic regression (C=1) on
the whitened PCA-d features of the dev grid's own episodes (same context sets and test sets as the
grid's cells), d = 8 .. 48, next to lr_full. A d whose LR beats d=16 is signal PCA-16 drops.

    python docs/reasoner_runs/v2-cpu/probe_dims.py configs/grids/reasoner-dev.yaml [key=value ...]

Reads embeddings from the grid's cache (computes them if missing); OUT=file.json keeps the table."""
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
from pipeline.methods import run_method  # noqa: E402

DIMS = (8, 16, 24, 32, 48)
spec = load_config(GridSpec, sys.argv[1], ["methods=[lr_probe]"] + sys.argv[2:])
cells = expand(spec)
groups = defaultdict(list)
for c in cells:
    groups[(c.dataset, c.dataset_options, c.backbone, c.protocol)].append(c)
rows = defaultdict(list)
for key, cs in groups.items():
    episodes, _ = group_episodes(spec, cs)
    for c, ep in episodes.items():
        pos = json.loads(c.dataset_options).get("positive_class")
        name = f"{c.dataset}{'/' + pos if pos else ''} {c.backbone} k={c.k}"
        acc = {}
        for d in DIMS:
            if d < c.k:
                p = run_method("lr_probe", ep.Xc, ep.yc, ep.Xq, d=d)
                acc[f"lr{d}"] = float(((p > 0.5) == ep.yq).mean())
        p = run_method("lr_full", ep.Xc, ep.yc, ep.Xq)
        acc["lr_full"] = float(((p > 0.5) == ep.yq).mean())
        rows[name].append(acc)
out = {}
cols = [f"lr{d}" for d in DIMS] + ["lr_full"]
print("| row | " + " | ".join(cols) + " |")
print("|---|" + "---|" * len(cols))
for name, accs in rows.items():
    mean = {c: float(np.mean([a[c] for a in accs])) for c in cols if all(c in a for a in accs)}
    out[name] = mean
    print(f"| {name} | " + " | ".join(f"{mean[c]:.3f}" if c in mean else "-" for c in cols) + " |")
if os.environ.get("OUT"):
    Path(os.environ["OUT"]).write_text(json.dumps(out, indent=1) + "\n")
