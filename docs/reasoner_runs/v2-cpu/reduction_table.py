"""Mean accuracy per (dataset, backbone, k) row and per method of a reasoner grid (v1 in every tart
method), the means over the rows, and the rows where a method falls more than a point below tart:
    python docs/reasoner_runs/v2-cpu/reduction_table.py configs/grids/reasoner-v2.yaml [method]"""
import json
import sys

sys.path.insert(0, ".")
from pipeline.config import load_config  # noqa: E402
from pipeline.grid import GridSpec, read_results  # noqa: E402

t = read_results(load_config(GridSpec, sys.argv[1], []))
cand = sys.argv[2] if len(sys.argv) > 2 else "tart_standardized"
t["pair"] = [json.loads(o).get("positive_class", "") for o in t["dataset_options"]]
piv = t.pivot_table(index=["dataset", "pair", "backbone", "k"], columns="method", values="accuracy", aggfunc="mean")
order = [m for m in ("tart", "tart_scaled", "tart_standardized", "lr_probe", "lr_scaled", "lr_standardized", "lr_full")
         if m in piv.columns]
piv = piv[order]
print(piv.round(3).to_string())
print("mean over the rows:", piv.mean().round(4).to_dict())
print("mean by backbone:\n" + piv.groupby(level="backbone").mean().round(4).to_string())
d = piv[cand] - piv["tart"]
print(f"rows where {cand} is more than a point below tart:", d[d < -0.01].round(3).to_dict())
print(f"{cand} - lr_probe: {(piv[cand] - piv['lr_probe']).mean():+.4f}; - lr_full: {(piv[cand] - piv['lr_full']).mean():+.4f}")
