"""Held-out synthetic evaluation of a reasoner next to its two yardsticks.

On fresh episodes of the full task (all d dims active) we score, for each k, the
reasoner, logistic regression fit on the same k context points, and the Bayes
classifier that knows w (predicts 1 iff x . w > 0). Accuracy is against the sampled
(noisy) labels, so Bayes is the ceiling.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .config import ConfigError, defaults_epilog, load_config, stage_parser
from .reasoner import Reasoner, ReasonerError, load_reasoner, read_checkpoint_config, shipped_dir
from .synthetic import TaskSpec, sample_episodes_np, trained_task


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


# Named slices of the embedding family (its prior narrowed one knob at a time): the oracle LR's
# C is chosen in hindsight per slice and k, the best any fixed-C probe could do on it.
FAMILY_SLICES = {
    "family": {},  # the whole prior, as trained
    "weak signal": {"signal_min": 0.5, "signal_max": 2.0},
    "strong signal": {"signal_min": 8.0, "signal_max": 20.0},
    "noisy labels": {"flip_max": 0.2, "signal_min": 3.0},
    "heavy tails": {"heavy_tail": 1.0, "clusters": 0.0},
    "clusters": {"clusters": 1.0, "heavy_tail": 0.0},
}
ORACLE_CS = (0.01, 0.1, 1.0, 10.0, 100.0)


def evaluate_family(reasoner: Reasoner, task: TaskSpec, ks=(18, 32, 64), episodes: int = 200,
                    seed: int = 12345, slices: dict | None = None) -> dict:
    """Accuracy on held-out episodes of the embedding family (whitened on each context as the
    composition does), per slice and k: the reasoner, LR at C=1 (what lr_probe does) and the
    oracle LR (the best C of ORACLE_CS for that slice and k, chosen in hindsight)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from .synthetic import embedding_batch

    out = {}
    for name, knobs in (slices or FAMILY_SLICES).items():
        spec = dataclasses.replace(task, prior=dataclasses.replace(task.prior, **knobs))
        for k in ks:
            gen = torch.Generator().manual_seed(seed + k)
            xc, yc, xq, yq = (t.numpy() for t in embedding_batch(spec, episodes, k, gen))
            p = reasoner.predict_proba(xc, yc, xq)
            row = {"reasoner": float(((p >= 0.5) == yq).mean())}
            for C in ORACLE_CS:
                correct = 0
                for i in range(episodes):
                    if yc[i].min() == yc[i].max():
                        pred = np.full(yq.shape[1], yc[i, 0])
                    else:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            pred = LogisticRegression(C=C, max_iter=1000).fit(xc[i], yc[i]).predict(xq[i])
                    correct += int((pred == yq[i]).sum())
                row[f"lr_C{C:g}"] = correct / yq.size
            row["oracle_lr"] = max(row[f"lr_C{C:g}"] for C in ORACLE_CS)
            out[f"{name} k={k}"] = {"reasoner": row["reasoner"], "lr_C1": row["lr_C1"], "oracle_lr": row["oracle_lr"],
                                    "oracle_C": max(ORACLE_CS, key=lambda C: row[f"lr_C{C:g}"])}
    return out


def format_table(results: dict) -> str:
    cols = list(next(iter(results.values())).keys())
    lines = ["| k | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for k, row in results.items():
        lines.append(f"| {k} | " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else f"{row[c]}"
                                              for c in cols) + " |")
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
    family: str = "gaussian"  # gaussian (v1's task) | embedding (v2's, per slice, with an oracle LR)
    prior_of: Optional[str] = None  # embedding: the reasoner whose recorded training prior the episodes follow

    def validate(self) -> None:
        if not self.ks or any(k < 2 for k in self.ks):
            raise ConfigError(f"ks={self.ks}: expected a non-empty list of k >= 2")
        if self.family not in ("gaussian", "embedding"):
            raise ConfigError(f"family={self.family!r}: expected gaussian or embedding")
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
    "family": "gaussian (v1's task, next to LR and Bayes) | embedding (v2's family, per slice, next to LR at C=1 "
              "and an oracle LR with the best C in hindsight)",
    "prior_of": "family=embedding: draw episodes from the prior this reasoner (name or folder) was trained on, "
                "without its paper-task replay (null: the scored reasoner's own; the family's defaults if it "
                "was not trained on the embedding family)",
}


def recorded_task(meta: dict) -> Optional[TaskSpec]:
    """The embedding-family task a reasoner was trained on, from its checkpoint config (`meta`), with
    the paper-task replay off (the replay is a training device; the v1 task is scored on its own):
    None for a reasoner not trained on the family (v1)."""
    task = trained_task(meta)
    if task is None:
        return None
    return dataclasses.replace(task, prior=dataclasses.replace(task.prior, paper_share=0.0))


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
    if cfg.family == "embedding":
        try:
            meta = read_checkpoint_config(shipped_dir(cfg.prior_of)) if cfg.prior_of else r.meta
        except (ReasonerError, OSError) as e:
            print(f"tart eval-synthetic: error: prior_of={cfg.prior_of!r}: {e}", file=sys.stderr)
            return 2
        task = recorded_task(meta) or TaskSpec(d=r.d, family="embedding")
        task = dataclasses.replace(task, d=r.d, points=max(cfg.ks) + task.prior.queries)
        print(f"[eval-synthetic] embedding family prior: {dataclasses.asdict(task.prior)}", flush=True)
        res = evaluate_family(r, task, cfg.ks, cfg.episodes, cfg.seed)
    else:
        res = evaluate(r, cfg.ks, cfg.episodes, cfg.queries, cfg.seed)
    print(format_table(res))
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({str(k): v for k, v in res.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
