"""Mean accuracy per (dataset, backbone, k) row for every method and reasoner of a grid, and the mean
over rows, from its results table (issue 15's default-set and held-out checks):
    python docs/reasoner_runs/v2-cpu/grid_table.py configs/grids/reasoner-v2.yaml [overrides...]"""
import json
import sys

sys.path.insert(0, ".")
from pipeline.config import load_config  # noqa: E402
from pipeline.grid import GridSpec, read_results  # noqa: E402

t = read_results(load_config(GridSpec, sys.argv[1], sys.argv[2:]))
t["set"] = [d + ("/" + str(json.loads(o)["positive_class"]) if "positive_class" in json.loads(o) else "")
            for d, o in zip(t["dataset"], t["dataset_options"])]
t["who"] = [m if not m.startswith("tart") else f"{m}:{r.split('/')[-1]}" for m, r in zip(t["method"], t["reasoner"])]
piv = t.pivot_table(index=["set", "backbone", "k"], columns="who", values="accuracy", aggfunc="mean")
print(piv.round(4).to_string())
print("mean", piv.mean().round(4).to_dict())
