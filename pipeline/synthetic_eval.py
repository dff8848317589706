"""Held-out synthetic evaluation of a reasoner next to its two yardsticks.

On fresh episodes of the full task (all d dims active) we score, for each k, the
reasoner, logistic regression fit on the same k context points, and the Bayes
classifier that knows w (predicts 1 iff x . w > 0). Accuracy is against the sampled
(noisy) labels, so Bayes is the ceiling.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np

from .reasoner import Reasoner, load_reasoner
from .synthetic import TaskSpec, sample_episodes_np


def evaluate(
    reasoner: Reasoner,
    ks=(18, 32, 64, 128),
    episodes: int = 500,
    queries: int = 32,
    seed: int = 12345,
    task: TaskSpec | None = None,
    with_lr: bool = True,
) -> dict:
    from sklearn.linear_model import LogisticRegression

    task = task or TaskSpec(d=reasoner.d)
    spec = TaskSpec(task.d, max(ks) + queries, task.weight_multiplier, task.variable_multiplier)
    ep = sample_episodes_np(spec, episodes, np.random.default_rng(seed))
    y = ep.y
    results = {}
    for k in ks:
        xc, yc = ep.x[:, :k], y[:, :k]
        xq, yq = ep.x[:, k : k + queries], y[:, k : k + queries]
        p = reasoner.predict_proba(xc, yc, xq)
        row = {"reasoner": float(((p >= 0.5) == yq).mean())}
        bayes = np.einsum("nqd,nd->nq", xq, ep.w) > 0
        row["bayes"] = float((bayes == yq).mean())
        if with_lr:
            correct = 0
            for i in range(episodes):
                if yc[i].min() == yc[i].max():  # one class only: LR predicts it
                    pred = np.full(queries, yc[i, 0])
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        pred = LogisticRegression(max_iter=1000).fit(xc[i], yc[i]).predict(xq[i])
                correct += int((pred == yq[i]).sum())
            row["logistic_regression"] = correct / (episodes * queries)
        results[k] = row
    return results


def format_table(results: dict) -> str:
    cols = list(next(iter(results.values())).keys())
    lines = ["| k | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for k, row in results.items():
        lines.append(f"| {k} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate a reasoner on held-out synthetic episodes.")
    ap.add_argument("--checkpoint", default=None, help="checkpoint dir (default: the shipped reasoner)")
    ap.add_argument("--ks", default="18,32,64,128")
    ap.add_argument("--episodes", type=int, default=500)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write results here too")
    a = ap.parse_args(argv)
    r = load_reasoner(a.checkpoint, device=a.device)
    res = evaluate(r, [int(k) for k in a.ks.split(",")], a.episodes, a.queries, a.seed)
    print(format_table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({str(k): v for k, v in res.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
