"""Context sets: class-balanced, nested draws of k context examples per seed."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .spec import DatasetError


def context_sets(
    labels: Sequence[int] | np.ndarray,
    ks: Sequence[int],
    seed: int,
    pool_ids: Sequence[int] | None = None,
    exclude: Sequence[int] | None = None,
    n_classes: int | None = None,
) -> dict[int, np.ndarray]:
    """Class-balanced, nested context index sets for one seed: {k: positions into `labels`}.

    Labels are 0..C-1 (C = n_classes, default the largest label + 1, at least 2). Each set
    holds k/C examples of each class. Sets are nested as sequences: the set for
    a smaller k is a prefix of the one for a larger k (k=18 is the first 9+9 of k=32).
    Within each step the order is shuffled with the seed. `pool_ids` restricts the draw
    to those positions (the context pool); `exclude` (e.g. the test positions) must not
    meet the pool.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DatasetError(f"labels must be one-dimensional, got shape {y.shape}")
    C = n_classes or max(2, int(y.max()) + 1 if len(y) else 2)
    if not np.isin(y, np.arange(C)).all():
        raise DatasetError(f"labels must be class indices 0..{C - 1} for class-balanced context sets")
    pool = np.arange(len(y)) if pool_ids is None else np.asarray(pool_ids, dtype=np.int64)
    if pool.size and (pool.min() < 0 or pool.max() >= len(y)):
        raise DatasetError(f"pool_ids must be positions in [0, {len(y)}); got range [{pool.min()}, {pool.max()}]")
    if len(np.unique(pool)) != len(pool):
        raise DatasetError("pool_ids has repeated positions")
    if exclude is not None:
        clash = np.intersect1d(pool, np.asarray(exclude, dtype=np.int64))
        if clash.size:
            raise DatasetError(f"context pool overlaps the excluded (test) positions, e.g. {clash[:5].tolist()}")
    ks_sorted = sorted(set(int(k) for k in ks))
    if not ks_sorted:
        raise DatasetError("ks is empty")
    for k in ks_sorted:
        if k < C or k % C:
            raise DatasetError(f"k={k}: expected a multiple of the {C} classes >= {C} (k/{C} examples per class)")
    per_class = {c: pool[y[pool] == c] for c in range(C)}
    k_max = ks_sorted[-1]
    avail = min(len(v) for v in per_class.values())
    if k_max // C > avail:
        have = " and ".join(f"{len(per_class[c])} of class {c}" for c in range(C))
        raise DatasetError(f"k={k_max} needs {k_max // C} context examples per class, but the pool has {have} "
                           f"(largest possible k={C * avail})")
    rng = np.random.default_rng([seed, 0xC0FFEE])
    draws = {c: rng.permutation(np.sort(per_class[c]))[: k_max // C] for c in range(C)}
    order: list[int] = []
    prev = 0
    out: dict[int, np.ndarray] = {}
    for k in ks_sorted:
        block = np.concatenate([draws[c][prev // C : k // C] for c in range(C)])
        order.extend(rng.permutation(block).tolist())
        out[k] = np.asarray(order, dtype=np.int64)
        prev = k
    return {int(k): out[int(k)] for k in ks}
