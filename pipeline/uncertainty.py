"""Bootstrap intervals for grid results: how sure a mean accuracy, or a difference of two methods, is.

A grid cell is one (context set, test set) pair: its seed draws the k context examples, and
every seed of a (dataset, backbone, k) scores the same test examples. Both are sources of
variance, so an interval resamples both: seeds with replacement, and test examples with
replacement (the same examples for every seed of a replicate), two-level. Where per-example
predictions are not at hand (runs read back from MLflow hold one accuracy per cell), only
seeds are resampled and the table says so. NLL and the Brier score are means over the test
examples too (`example_matrix`), resampled the same way; AUC, macro-F1 and ECE are not, so their
intervals resample seeds only.

A difference between two methods is paired: the methods share each seed's context set and the
test set, so the bootstrap resamples the per-example differences (method A correct minus
method B correct), not the two means independently. The interval of an average over several
groups (datasets, backbones) resamples each group on its own and averages the replicates with
the groups' weights (a stratified bootstrap).

Percentile intervals, B = 1000 replicates by default, from a fixed seed: the same results give
the same intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

LEVEL = 0.95
REPLICATES = 1000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    level: str  # what was resampled: "seeds x examples" or "seeds"

    def text(self, signed: bool = False) -> str:
        f = "{:+.3f}" if signed else "{:.3f}"
        return f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}]"


PER_EXAMPLE = ("accuracy", "nll", "brier")  # metrics that are a mean over the test examples


def correct_matrix(probs: Sequence, labels: Sequence, n_classes: Optional[Sequence] = None) -> Optional[np.ndarray]:
    """(S, n) 0/1 correctness of S cells on one test set, or None when the cells' test sets differ
    in size (then only seed-level intervals are possible). Binary: P(1) >= 0.5 is class 1; a cell
    of C > 2 classes holds its (n, C) probabilities flat (n_classes says C) and predicts the argmax."""
    return example_matrix(probs, labels, n_classes, "accuracy")


def example_matrix(probs: Sequence, labels: Sequence, n_classes: Optional[Sequence] = None,
                   metric: str = "accuracy") -> Optional[np.ndarray]:
    """(S, n) per-example values of a metric that is a mean over the test examples (PER_EXAMPLE):
    correctness, -log P(true class) (clipped at 1e-12) or the Brier score (summed over the classes
    for C > 2), computed as `pipeline.grid.results.cell_metrics` does, so each row's mean is the
    cell's value. None when the cells' test sets differ in size, or for another metric."""
    ys = [np.asarray(y) for y in labels]
    if metric not in PER_EXAMPLE or not ys or len({len(y) for y in ys}) != 1:
        return None
    out = []
    for i, (p, y) in enumerate(zip(probs, ys)):
        p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
        C = int(n_classes[i]) if n_classes is not None and n_classes[i] == n_classes[i] else 2
        if C > 2:
            p = p.reshape(len(y), C)
            if metric == "accuracy":
                out.append((p.argmax(axis=1) == y).astype(np.float64))
            elif metric == "nll":
                out.append(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)))
            else:
                out.append(((p - np.eye(C)[y]) ** 2).sum(axis=1))
        elif metric == "accuracy":
            out.append(((p >= 0.5).astype(np.int64) == y).astype(np.float64))
        elif metric == "nll":
            out.append(-np.log(np.clip(np.where(y == 1, p, 1 - p), 1e-12, None)))
        else:
            out.append((p - y) ** 2)
    return np.stack(out)


def replicates(values: np.ndarray, rng: np.random.Generator, n_boot: int = REPLICATES) -> np.ndarray:
    """Bootstrap replicates (n_boot,) of the mean of `values`: (S,) per-seed values (seeds resampled)
    or (S, n) / (K, S, n) per-example values (seeds and examples resampled, the same draw for each
    of the K slices, e.g. the k of a dataset).

    A replicate's mean is sum_s sum_i (seed count s)(example count i) v[s, i] / (S n): resampling
    as multinomial counts, so nothing of size n_boot x S x n is ever gathered.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    elif v.ndim == 3:
        v = v.mean(axis=0)  # the K slices share every draw, so their mean can be taken first
    S, n = v.shape
    seed_w = _counts(rng, n_boot, S) / S  # (B, S)
    if n == 1:
        return seed_w @ v[:, 0]
    ex_w = _counts(rng, n_boot, n) / n  # (B, n)
    return np.einsum("bs,sn,bn->b", seed_w, v, ex_w, optimize=True)


def _counts(rng: np.random.Generator, n_boot: int, m: int) -> np.ndarray:
    """(n_boot, m): how often each of m items is drawn in each of n_boot resamples of size m."""
    draws = rng.integers(0, m, size=(n_boot, m)) + (np.arange(n_boot) * m)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * m).reshape(n_boot, m).astype(np.float64)


def interval(values: np.ndarray, seed: int = 0, n_boot: int = REPLICATES) -> Interval:
    v = np.asarray(values, dtype=np.float64)
    reps = replicates(v, np.random.default_rng(seed), n_boot)
    return _interval(float(v.mean()), reps, "seeds" if v.ndim == 1 else "seeds x examples")


def pooled(groups: list[tuple[np.ndarray, float]], seed: int = 0, n_boot: int = REPLICATES) -> Interval:
    """Interval of the weighted average of several groups' means (stratified: each group resampled on
    its own). groups: (values as for `replicates`, weight)."""
    rng = np.random.default_rng(seed)
    w = np.array([g[1] for g in groups], dtype=np.float64)
    w = w / w.sum()
    means = np.array([np.asarray(v, dtype=np.float64).mean() for v, _ in groups])
    reps = np.stack([replicates(v, rng, n_boot) for v, _ in groups])  # (G, n_boot)
    level = "seeds" if any(np.asarray(v).ndim == 1 for v, _ in groups) else "seeds x examples"
    return _interval(float(w @ means), w @ reps, level)


def _interval(mean: float, reps: np.ndarray, level: str) -> Interval:
    a = (1 - LEVEL) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return Interval(mean, float(lo), float(hi), level)
