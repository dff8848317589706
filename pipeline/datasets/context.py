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
) -> dict[int, np.ndarray]:
    """Class-balanced, nested context index sets for one seed: {k: positions into `labels`}.

    Each set holds k/2 examples of each class. Sets are nested as sequences: the set for
    a smaller k is a prefix of the one for a larger k (k=18 is the first 9+9 of k=32).
    Within each step the order is shuffled with the seed. `pool_ids` restricts the draw
    to those positions (the context pool); `exclude` (e.g. the test positions) must not
    meet the pool.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DatasetError(f"labels must be one-dimensional, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise DatasetError("labels must be binary 0/1 for class-balanced context sets")
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
        if k < 2 or k % 2:
            raise DatasetError(f"k={k}: expected an even number >= 2 (k/2 examples per class)")
    per_class = {c: pool[y[pool] == c] for c in (0, 1)}
    k_max = ks_sorted[-1]
    avail = min(len(per_class[0]), len(per_class[1]))
    if k_max // 2 > avail:
        raise DatasetError(
            f"k={k_max} needs {k_max // 2} context examples per class, but the pool has "
            f"{len(per_class[0])} of class 0 and {len(per_class[1])} of class 1 (largest possible k={2 * avail})"
        )
    rng = np.random.default_rng([seed, 0xC0FFEE])
    draws = {c: rng.permutation(np.sort(per_class[c]))[: k_max // 2] for c in (0, 1)}
    order: list[int] = []
    prev = 0
    out: dict[int, np.ndarray] = {}
    for k in ks_sorted:
        block = np.concatenate([draws[0][prev // 2 : k // 2], draws[1][prev // 2 : k // 2]])
        order.extend(rng.permutation(block).tolist())
        out[k] = np.asarray(order, dtype=np.int64)
        prev = k
    return {int(k): out[int(k)] for k in ks}
