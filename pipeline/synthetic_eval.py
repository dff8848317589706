"""Held-out synthetic evaluation of a reasoner next to its two yardsticks.

On fresh episodes of the full task (all d dims active) we score, for each k, the
reasoner, logistic regression fit on the same k context points, and the Bayes
classifier that knows w (predicts 1 iff x . w > 0). Accuracy is against the sampled
(noisy) labels, so Bayes is the ceiling.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .config import ConfigError, defaults_epilog, load_config, stage_parser
from .reasoner import Reasoner, ReasonerError, load_reasoner
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


@dataclass
class SyntheticEvalConfig:
    checkpoint: Optional[str] = None  # checkpoint dir; null: the shipped reasoner
    ks: list[int] = field(default_factory=lambda: [18, 32, 64, 128])
    episodes: int = 500
    queries: int = 32
    seed: int = 12345
    device: str = "cpu"
    json: Optional[str] = None  # also write the results here

    def validate(self) -> None:
        if not self.ks or any(k < 2 for k in self.ks):
            raise ConfigError(f"ks={self.ks}: expected a non-empty list of k >= 2")
        if self.episodes < 1 or self.queries < 1:
            raise ConfigError(f"episodes={self.episodes}, queries={self.queries}: expected >= 1")


FIELD_HELP = {
    "checkpoint": "reasoner checkpoint dir (null: the shipped reasoner)",
    "ks": "context sizes, e.g. ks=[18,32,64]",
    "episodes": "fresh episodes per k",
    "queries": "queries per episode",
    "seed": "episodes are drawn from this seed",
    "device": "cpu | cuda",
    "json": "also write the results to this JSON file",
}


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("tart eval-synthetic", "Score a reasoner on held-out synthetic episodes next to logistic "
                     "regression and the Bayes classifier.",
                     defaults_epilog(SyntheticEvalConfig(), FIELD_HELP,
                                     ["  tart eval-synthetic episodes=500 queries=32",
                                      "  tart eval-synthetic checkpoint=tart_runs/train/default/final ks=[18,64]"]),
                     "eval.yaml", "episodes=500 ks=[18,32]", ray=False)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(SyntheticEvalConfig, a.config, a.overrides)
        r = load_reasoner(cfg.checkpoint, device=cfg.device)
    except (ConfigError, ReasonerError, OSError) as e:
        print(f"tart eval-synthetic: error: {e}", file=sys.stderr)
        return 2
    res = evaluate(r, cfg.ks, cfg.episodes, cfg.queries, cfg.seed)
    print(format_table(res))
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({str(k): v for k, v in res.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
