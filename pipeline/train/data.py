"""What the loop trains on, in an order fixed by (seed, step, rank): online episodes or generated shards.

- `OnlineEpisodes`: fresh episodes per (step, rank, micro-batch) from a torch generator
  seeded with a hash of exactly those numbers, on the worker's device;
- `ShardEpisodes`: the episodes of a `tart generate` output, held in memory, visited in a
  seeded permutation per epoch; the batch of (step, rank, micro) is a fixed slice of it.

So a resumed run sees exactly the batches an uninterrupted run would have seen.
`check_data` validates a shard URI on the driver before any worker starts.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Union

import numpy as np
import torch

from .. import storage
from ..config import ConfigError
from ..generate import check_shard_file, read_episodes, read_manifest, shard_records
from ..synthetic import TaskSpec, embedding_batch, sample_episodes_torch
from .config import TrainConfig

logger = logging.getLogger(__name__)


class OnlineEpisodes:
    """Fresh episodes per (step, rank, micro) from a seeded torch generator on the device."""

    def __init__(self, task: TaskSpec, seed: int, device: torch.device):
        self.task, self.seed, self.device = task, seed, device
        self.gen = torch.Generator(device=device)

    def batch(self, step: int, rank: int, micro: int, n: int):
        self.gen.manual_seed(hash((self.seed, step, rank, micro)) & 0x7FFF_FFFF_FFFF_FFFF)
        return sample_episodes_torch(self.task, n, self.gen, self.device)

    def embedding_batch(self, step: int, rank: int, micro: int, n: int, k: int, n_classes: int = 2):
        """The embedding family's batch of (step, rank, micro) at context size k (whitened), n_classes classes."""
        self.gen.manual_seed(hash((self.seed, step, rank, micro)) & 0x7FFF_FFFF_FFFF_FFFF)
        return embedding_batch(self.task, n, k, self.gen, self.device, n_classes=n_classes)


class ShardEpisodes:
    """Episodes from Parquet shards; a seeded permutation per epoch fixes the order."""

    def __init__(self, uri: str, seed: int, device: torch.device):
        episodes, self.task = read_episodes(uri)
        self.w = torch.from_numpy(episodes.w)
        self.x = torch.from_numpy(episodes.x)
        self.u = torch.from_numpy(episodes.u)
        self.n = len(self.w)
        self.seed, self.device = seed, device
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, start: int, n: int) -> np.ndarray:
        out = []
        while n > 0:
            epoch, off = divmod(start, self.n)
            take = min(n, self.n - off)
            out.append(self._order(epoch)[off : off + take])
            start, n = start + take, n - take
        return np.concatenate(out)

    def batch(self, step: int, rank: int, micro: int, n: int, per_step: int, per_worker: int):
        start = step * per_step + rank * per_worker + micro * n
        idx = torch.from_numpy(self.indices(start, n))
        return (t[idx].to(self.device, non_blocking=True) for t in (self.w, self.x, self.u))


def episode_source(cfg: TrainConfig, device: torch.device) -> tuple[Union[OnlineEpisodes, ShardEpisodes], TaskSpec]:
    """The loop's data source for `cfg.data` and the task its episodes follow."""
    if cfg.data == "online":
        return OnlineEpisodes(cfg.task, cfg.seed, device), cfg.task
    source = ShardEpisodes(cfg.data, cfg.seed, device)
    task = source.task
    if task.d > cfg.model.d or task.points > cfg.model.max_points:
        raise ConfigError(
            f"shards at {cfg.data} have d={task.d}, points={task.points}; the model takes "
            f"d<={cfg.model.d}, points<={cfg.model.max_points}"
        )
    return source, task


def check_data(cfg: TrainConfig, log: Optional[Callable[[str], None]] = None) -> Optional[dict]:
    """Validate a shard URI on the driver (manifest, every shard's size and sha256, fit to the model).

    Returns the manifest (None for online data). Raises ShardError/ConfigError/StorageError.
    Progress goes to `log` (default: this module's logger).
    """
    if cfg.data == "online":
        return None
    say = log or logger.info
    man = read_manifest(cfg.data)  # ShardError: missing / foreign / incomplete
    fs, base = storage.resolve(cfg.data)
    task = man["task"]
    if task["d"] > cfg.model.d or task["points"] > cfg.model.max_points:
        raise ConfigError(
            f"shards at {cfg.data} have d={task['d']}, points={task['points']}; the model takes "
            f"d<={cfg.model.d}, points<={cfg.model.max_points} (set model.d / model.max_points)"
        )
    recs = shard_records(man, cfg.data)
    if sum(r["rows"] for r in recs) < cfg.batch_size:
        raise ConfigError(f"shards at {cfg.data} hold {sum(r['rows'] for r in recs)} episodes, fewer than one "
                          f"batch (batch_size={cfg.batch_size})")
    t0 = time.time()
    for rec in recs:
        check_shard_file(fs, base, cfg.data, rec, cfg.verify_data)
    say(f"[train] data {cfg.data}: {man['episodes']} episodes in {len(recs)} shards, d={task['d']}, "
        f"points={task['points']} ({'verified' if cfg.verify_data else 'sizes checked'} in {time.time() - t0:.1f}s)")
    return man
