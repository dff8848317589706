"""`EmbeddingTable`: what `embed()` returns, the rows of one or more cache entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class EmbeddingTable:
    """Embeddings of one or more cache entries, row-aligned.

    `ids`, `labels` (int64), `X` (n, dim) float32, and per row its `split`, `k`, `seed`
    (k = seed = -1 for stream). `entries` lists each entry's key hash, uri and whether
    it was computed in this call; `forward_passes` counts backbone passes spent here.
    """

    ids: list[str]
    labels: np.ndarray
    X: np.ndarray
    split: np.ndarray
    k: np.ndarray
    seed: np.ndarray
    entries: list[dict] = field(default_factory=list)
    forward_passes: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def computed(self) -> int:
        return sum(1 for e in self.entries if e["computed"])

    def select(self, split: str | None = None, k: int | None = None, seed: int | None = None) -> "EmbeddingTable":
        m = np.ones(len(self.ids), dtype=bool)
        if split is not None:
            m &= self.split == split
        if k is not None:
            m &= self.k == k
        if seed is not None:
            m &= self.seed == seed
        idx = np.flatnonzero(m)
        keep = [e for e in self.entries if (split is None or e["split"] == split) and (k is None or e["k"] == k)
                and (seed is None or e["seed"] == seed)]
        return EmbeddingTable([self.ids[i] for i in idx], self.labels[idx], self.X[idx], self.split[idx],
                              self.k[idx], self.seed[idx], keep, self.forward_passes)

    @classmethod
    def of_entry(cls, ids: Sequence[str], labels: Any, X: np.ndarray, split: str, k: int | None, seed: int | None,
                 entry: dict) -> "EmbeddingTable":
        """The rows of one cache entry (k = seed = None for stream: stored as -1)."""
        n = len(ids)
        return cls(list(ids), np.asarray(labels, np.int64), X, np.array([split] * n, dtype=object),
                   np.full(n, -1 if k is None else k, np.int64), np.full(n, -1 if seed is None else seed, np.int64),
                   [entry])

    @staticmethod
    def concat(parts: Sequence["EmbeddingTable"]) -> "EmbeddingTable":
        parts = list(parts)
        if not parts:
            return EmbeddingTable([], np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.array([], dtype=object),
                                  np.zeros(0, np.int64), np.zeros(0, np.int64))
        return EmbeddingTable(
            [i for p in parts for i in p.ids], np.concatenate([p.labels for p in parts]),
            np.concatenate([p.X for p in parts]), np.concatenate([p.split for p in parts]),
            np.concatenate([p.k for p in parts]), np.concatenate([p.seed for p in parts]),
            [e for p in parts for e in p.entries], sum(p.forward_passes for p in parts))
