"""On dev data (issue 15), no training: what the dims past 16 of the `standardized` reduction hold.
The LR probe on 32 standardized dims, and v1 on 8 random 16-dim views of the top-24 / top-32
standardized directions (answers averaged), against tart_standardized and lr_full. Embeds the dev
pairs once, as views_dev.py does (tart_runs/views/); 4 dev newsgroups pairs, k 18/32/64, seeds 0-4.

    python docs/reasoner_runs/v2-cpu/standardize_views_dev.py minilm-l6|smollm2-135m
"""
import os
import sys
from collections import defaultdict

sys.path.insert(0, ".")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_common import accuracies, episodes, report, view_probs  # noqa: E402
from pipeline.methods import run_method  # noqa: E402
from pipeline.reasoner import load_reasoner  # noqa: E402

BACKBONE = sys.argv[1] if len(sys.argv) > 1 else "minilm-l6"
reasoner = load_reasoner("v1")
rows = defaultdict(list)
for row, seed, Xc, yc, Et, yt in episodes(BACKBONE):
    p = {"lr_full": run_method("lr_full", Xc, yc, Et),
         "tart_standardized": run_method("tart_standardized", Xc, yc, Et, reasoner=reasoner),
         "lr_std d=32": run_method("lr_standardized", Xc, yc, Et, d=32, allow_small_k=True),
         "views top-24": view_probs(reasoner, Xc, yc, Et, seed, 24, "standardized").mean(0),
         "views top-32": view_probs(reasoner, Xc, yc, Et, seed, 32, "standardized").mean(0)}
    rows[row].append(accuracies(p, yt))
report(rows, BACKBONE)
