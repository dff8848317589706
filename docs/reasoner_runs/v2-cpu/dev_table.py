"""Mean dev-grid accuracy per reasoner (and the probes) per (pair, k), from a grid's results table:
    python docs/reasoner_runs/v2-cpu/dev_table.py reasoner-dev-v1   (the grid's name; storage tart_runs/grids)"""
import json
import sys

sys.path.insert(0, ".")
from pipeline.config import load_config  # noqa: E402
from pipeline.grid import GridSpec, read_results  # noqa: E402

t = read_results(load_config(GridSpec, "configs/grids/reasoner-dev.yaml", [f"name={sys.argv[1]}"]))
t["pair"] = [json.loads(o).get("positive_class", "sci.space") for o in t["dataset_options"]]
t["who"] = [m if not m.startswith("tart") else f"{m}:{r.split('/')[-1]}" for m, r in zip(t["method"], t["reasoner"])]
piv = t.pivot_table(index=["pair", "k"], columns="who", values="accuracy", aggfunc="mean")
print(piv.round(4).to_string())
print("mean", piv.mean().round(4).to_dict())
