"""Fine-tuned reasoners on the dev pairs' kept embeddings (issue 15), read through one reduction, beside
v1 and the LR probe on the same features: how a run's checkpoints are judged before any default-grid or
held-out cell sees them (`dev_common`: the 4 dev newsgroups pairs, pools of 256, tests of 200, k 18/32/64,
seeds 0-4).

    python docs/reasoner_runs/v2-cpu/checkpoint_dev.py minilm-l6|smollm2-135m standardized CKPT [CKPT...]

Each CKPT is a reasoner folder or shipped name; OUT=file.json keeps the table. A reasoner wider than
16 dims (run M's d = 32) reads the context's informative directions only where k <= its d (k = 18: 17),
as the d = 32 probes do, and the LR probe on the same 32 dims is added beside it."""
import os
import sys
from collections import defaultdict

sys.path.insert(0, ".")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_common import accuracies, episodes, report  # noqa: E402
from pipeline.methods import run_method  # noqa: E402
from pipeline.reasoner import load_reasoner  # noqa: E402

BACKBONE, REDUCTION, CKPTS = sys.argv[1], sys.argv[2], sys.argv[3:]
reasoners = {c.rstrip("/").split("/")[-1]: load_reasoner(c) for c in ["v1", *CKPTS]}
wide = sorted({r.d for r in reasoners.values() if r.d > 16})

rows = defaultdict(list)
for row, _, Xc, yc, Et, yt in episodes(BACKBONE):
    p = {m: run_method(m, Xc, yc, Et) for m in ("lr_probe", f"lr_{REDUCTION}", "lr_full")}
    for d in wide:
        p[f"lr_{REDUCTION} d={d}"] = run_method(f"lr_{REDUCTION}", Xc, yc, Et, d=d, allow_small_k=True)
    for name, r in reasoners.items():
        p[f"tart_{REDUCTION} {name}"] = run_method(f"tart_{REDUCTION}", Xc, yc, Et, reasoner=r, allow_small_k=r.d > 16)
    rows[row].append(accuracies(p, yt))
report(rows, f"{BACKBONE}, reduction {REDUCTION}")
