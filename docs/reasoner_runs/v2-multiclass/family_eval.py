"""Held-out multi-class episodes of the training family: native vs one-vs-rest vs LR / oracle LR."""
import sys, json, warnings, time
import numpy as np, torch
warnings.filterwarnings("ignore")
sys.path.insert(0, "/work/main")
from pipeline.config import load_config
from pipeline.train.config import TrainConfig
from pipeline.synthetic import embedding_batch
from pipeline.reasoner import load_reasoner
from pipeline.methods import classify_classes
from sklearn.linear_model import LogisticRegression
torch.set_num_threads(1)
ckpt = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
cfg = load_config(TrainConfig, "/work/main/configs/train/v2-multiclass-cpu.yaml", [])
r, v1 = load_reasoner(ckpt), load_reasoner("v1")
out = {}
for C in (2, 4, 6, 10):
    for k in (20, 32, 64):
        g = torch.Generator().manual_seed(777 + 31 * C + k)
        xc, yc, xq, yq = (t.numpy() for t in embedding_batch(cfg.task, n, k, g, n_classes=C))
        acc = {m: [] for m in ("native", "ovr", "v1_ovr", "lr", "oracle_lr")}
        for i in range(n):
            y = yc[i].astype(int); t = yq[i].astype(int)
            if len(set(y)) < 2:
                continue
            acc["native"].append((classify_classes(r, xc[i], y, xq[i], C, mode="native").argmax(1) == t).mean() if C > 2
                                 else ((r.predict_proba(xc[i][None], y[None], xq[i][None])[0] > .5) == t).mean())
            acc["ovr"].append((classify_classes(r, xc[i], y, xq[i], C, mode="ovr").argmax(1) == t).mean() if C > 2 else acc["native"][-1])
            acc["v1_ovr"].append((classify_classes(v1, xc[i], y, xq[i], C, mode="ovr").argmax(1) == t).mean() if C > 2
                                 else ((v1.predict_proba(xc[i][None], y[None], xq[i][None])[0] > .5) == t).mean())
            per_c = {c: (LogisticRegression(C=c, max_iter=500).fit(xc[i], y).predict(xq[i]) == t).mean()
                     for c in (0.01, 0.1, 1.0, 10.0, 100.0)}
            acc["lr"].append(per_c[1.0]); acc.setdefault("_perc", []).append(per_c)
        best_c = max((0.01, 0.1, 1.0, 10.0, 100.0), key=lambda c: np.mean([p[c] for p in acc["_perc"]]))
        acc["oracle_lr"] = [p[best_c] for p in acc.pop("_perc")]
        out[f"C{C}_k{k}"] = {m: round(float(np.mean(v)), 3) for m, v in acc.items()}
        print(f"C={C} k={k}", out[f"C{C}_k{k}"], flush=True)
json.dump(out, open(sys.argv[3] if len(sys.argv) > 3 else "/tmp/mc_eval.json", "w"), indent=1)
