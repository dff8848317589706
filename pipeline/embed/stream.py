"""The stream protocol: every example embedded alone, on a Ray Data actor pool or in-process.

Each example's vector is the mean/last of one layer's hidden states over its own tokens (or
the backbone's pooling of its image or clip). Context-free, so one cache entry per (dataset
split, backbone, layer, pooling) serves every k and seed.

- Ray Data (`stream_ray`): rows (id, text | image | audio; `pipeline.modality` builds the
  columns, texts and clips longest first) -> `map_batches(BackboneEmbedder,
  compute=ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)`,
  the model loaded once per actor; every split of one call through one pipeline.
- in-process (`stream_local`, `executor=local`): the same embedder class on the same rows.

Fault tolerance on Ray: the actor pool runs with `max_restarts` / `max_task_retries`
(config keys; default -1 = Ray Data's default, unlimited): an actor whose process dies (OOM,
node loss, the `fail_once` injection) is restarted and its batch retried. An exception raised
by the embedder code itself is a user error in Ray Data and is not retried: the job fails
with it and nothing is committed (re-run to resume; complete entries are kept).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import console
from ..console import Progress
from ..modality import adapter
from ..runtime import init_ray
from .config import EmbedConfig, EmbedError
from .plan import Plan


class BackboneEmbedder:
    """Ray Data callable class: loads the backbone once in `__init__`, embeds batches.

    Input batch (numpy format): `id` and the column of the backbone's modality (`text`,
    `image` or `audio`). Output: `id`, `embedding` (n, dim) float32, `forwards` (backbone
    passes spent, on the first row).
    """

    def __init__(self, backbone: str, layer: int = -1, pooling: str = "mean", dtype: str = "float32",
                 device: str = "cpu", max_length: int | None = None, batch_size: int = 32,
                 expected_revision: str | None = None, torch_threads: int | None = None,
                 fail_once: str | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        from ..backbones import load_backbone

        self.backbone = load_backbone(backbone, device=device, dtype=dtype, layer=layer, pooling=pooling,
                                      max_length=max_length)
        if expected_revision is not None and self.backbone.revision != expected_revision:
            raise EmbedError(
                f"backbone {backbone!r} on this worker has revision {self.backbone.revision!r}, the driver "
                f"resolved {expected_revision!r}; refusing to mix weights in one cache entry"
            )
        self.inputs = adapter(self.backbone.modality)
        self.batch_size = batch_size
        self.fail_once = fail_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fail_once and not os.path.exists(self.fail_once):
            with open(self.fail_once, "w") as f:
                f.write(str(os.getpid()))
            os._exit(17)  # simulate a crashed worker process (not a Python exception)
        column = self.inputs.column
        if column not in batch:
            raise EmbedError(f"batch has no {column!r} column for {self.backbone.name!r} (columns: {sorted(batch)})")
        before = self.backbone.forward_count
        X = self.inputs.embed(self.backbone, batch[column], self.batch_size)
        forwards = np.zeros(len(X), dtype=np.int64)
        if len(X):
            forwards[0] = self.backbone.forward_count - before
        return {"id": np.asarray(batch["id"]), "embedding": X.astype(np.float32, copy=False), "forwards": forwards}


def embedder_kwargs(cfg: EmbedConfig, plan: Plan) -> dict:
    """`BackboneEmbedder` constructor arguments: what every actor (or the driver) loads."""
    return dict(backbone=cfg.backbone, layer=cfg.layer, pooling=plan.pooling, dtype=plan.dtype, device=plan.device,
                max_length=cfg.max_length, batch_size=cfg.batch_size, expected_revision=plan.revision,
                torch_threads=cfg.torch_threads, fail_once=cfg.fail_once)


_WARM: dict[str, BackboneEmbedder] = {}  # one warm in-process embedder (the grid embeds many times)


def warm_embedder(kwargs: dict) -> BackboneEmbedder:
    """The in-process embedder for `kwargs`, kept loaded for the next call (at most one model)."""
    key = json.dumps(kwargs, sort_keys=True, default=str)
    if key not in _WARM:
        _WARM.clear()
        _WARM[key] = BackboneEmbedder(**kwargs)
    emb = _WARM[key]
    emb.fail_once = None  # fault injection is for actors only
    return emb


def rows_table(ex: Any):
    """Arrow table of (id, <modality column>) of `ex` (Examples, or several splits joined); texts and clips sorted
    by length (longest first) so batches pad little."""
    import pyarrow as pa

    inputs = adapter(ex.modality)
    lengths = inputs.lengths(ex.inputs)
    order = np.arange(len(ex.ids)) if lengths is None else np.argsort([-n for n in lengths], kind="stable")
    return pa.table({"id": pa.array([ex.ids[i] for i in order], pa.string()),
                     inputs.column: inputs.arrow_column(inputs.select(ex.inputs, order))})


def _collect(batches, ex: Any, progress: Progress | None = None) -> tuple[np.ndarray, int]:
    """(X in the order of `ex.ids`, forward passes) from embedder output batches in any order."""
    pos = {i: n for n, i in enumerate(ex.ids)}
    X = None
    seen = np.zeros(len(ex.ids), dtype=bool)
    forwards = 0
    for b in batches:
        emb = np.asarray(b["embedding"], dtype=np.float32)
        if X is None:
            X = np.zeros((len(ex.ids), emb.shape[1]), dtype=np.float32)
        idx = np.fromiter((pos[str(i)] for i in b["id"]), dtype=np.int64, count=len(b["id"]))
        X[idx] = emb
        seen[idx] = True
        forwards += int(np.asarray(b["forwards"]).sum())
        if progress is not None:
            progress.advance(len(idx))
    if X is None or not seen.all():
        missing = [ex.ids[i] for i in np.flatnonzero(~seen)[:5]]
        raise EmbedError(f"embedding returned no vector for {int((~seen).sum())} example(s), e.g. {missing}")
    return X, forwards


def stream_local(cfg: EmbedConfig, plan: Plan, todo: list[Any]) -> list[tuple[np.ndarray, int]]:
    """Embed each split in `todo` in-process with one `BackboneEmbedder` (same code as the actors)."""
    embedder = warm_embedder(embedder_kwargs(cfg, plan))
    out = []
    with Progress("embed", sum(len(ex) for ex in todo), "rows") as progress:
        for ex in todo:
            rows = rows_table(ex)
            cols = {"id": rows.column("id").to_numpy(zero_copy_only=False),
                    embedder.inputs.column: embedder.inputs.to_numpy(rows.column(embedder.inputs.column))}
            batches = (embedder({c: v[s:s + cfg.batch_size] for c, v in cols.items()})
                       for s in range(0, rows.num_rows, cfg.batch_size))
            out.append(_collect(batches, ex, progress))
    return out


def build_dataset(cfg: EmbedConfig, plan: Plan, ex: Any):
    """The Ray Data pipeline for one split: from_arrow(blocks) -> map_batches(BackboneEmbedder actor pool)."""
    import ray
    import ray.data

    console.route_third_party()  # Ray Data just set up its own logging and progress bars
    rows = rows_table(ex)
    n = rows.num_rows
    # Few, large blocks: each actor task then runs many batches back to back (per-task overhead is
    # paid per block, not per batch); enough blocks that every actor gets work, block edges on
    # batch boundaries so no batch is split in two.
    nblocks = max(1 if cfg.actors == 1 else 2 * cfg.actors, -(-n // (cfg.batch_size * 64)))
    nblocks = max(1, min(nblocks, -(-n // cfg.batch_size)))
    per = -(-(-(-n // nblocks)) // cfg.batch_size) * cfg.batch_size
    blocks = [rows.slice(s, per) for s in range(0, n, per)] or [rows]
    ds = ray.data.from_arrow(blocks)
    # Ray Data's actor pools default to max_restarts=-1 / max_task_retries=-1 (unlimited); passing
    # them is deprecated (removal in Ray 2.64), so only a non-default value is forwarded.
    retry_args = {k: v for k, v in (("max_restarts", cfg.max_restarts), ("max_task_retries", cfg.max_task_retries))
                  if v != -1}
    return ds.map_batches(
        BackboneEmbedder,
        fn_constructor_kwargs=embedder_kwargs(cfg, plan),
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor or None,
        **retry_args,
    )


@dataclass
class _Joined:
    """Several splits as one input for a single Ray Data pipeline: ids tagged with their split's
    position (ids may repeat across splits), inputs concatenated."""

    ids: list[str]
    modality: str
    inputs: Any
    sizes: list[int]

    SEP = "\x1f"

    @classmethod
    def of(cls, parts: list[Any]) -> "_Joined":
        modality = parts[0].modality
        return cls([f"{n}{cls.SEP}{i}" for n, ex in enumerate(parts) for i in ex.ids], modality,
                   adapter(modality).concat([ex.inputs for ex in parts]), [len(ex.ids) for ex in parts])


def stream_ray(cfg: EmbedConfig, plan: Plan, todo: list[Any]) -> list[tuple[np.ndarray, int]]:
    """Every split in `todo` through ONE Ray Data pipeline: one actor pool, so one actor start and
    model load (tens of seconds each on a small CPU box) for all of them. Forward passes are
    counted for the pipeline and attributed to the splits by their share of the rows."""
    init_ray(None, None)
    joined = _Joined.of(todo)
    batches = build_dataset(cfg, plan, joined).iter_batches(batch_size=None, batch_format="numpy")
    with Progress("embed", len(joined.ids), "rows") as progress:
        X, forwards = _collect(batches, joined, progress)
    out, start, given = [], 0, 0
    for n, size in enumerate(joined.sizes):
        fw = forwards - given if n == len(joined.sizes) - 1 else round(forwards * size / max(1, len(joined.ids)))
        out.append((X[start:start + size], fw))
        start, given = start + size, given + fw
    return out
