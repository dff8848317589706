"""What one unit of grid work computes: the episodes of a group, then its cells' results.

- `group_episodes(spec, cells)`: the cells of one (dataset, backbone, protocol) group share
  embeddings, computed (or read from the embed stage's cache) once; each cell gets its
  episode (context embeddings and labels, query embeddings, labels and ids).
- `run_embedding_cells(cells, episodes)` and `run_text_cells(cells, batch_size)`: the two
  kinds of unit the executor runs (locally or as Ray tasks), each yielding per cell
  {probs, runtime_s, labels, ids}. Which kind a cell is comes from the method registry.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np

from ..datasets import context_sets
from ..embed import get_embeddings
from ..methods import get_method, run_method
from .spec import NO_REASONER, Cell, GridSpec, reasoner_folder


class Episode(NamedTuple):
    Xc: np.ndarray  # (k, D) context embeddings
    yc: np.ndarray  # (k,) context labels
    Xq: np.ndarray  # (q, D) query (test) embeddings
    yq: np.ndarray  # (q,) query labels
    ids: list  # (q,) query example ids
    # the cell's reasoner checkpoint folder as the driver found it (a registry reasoner's local copy):
    # a worker does not depend on its own environment to find it
    reasoner_dir: Optional[str] = None


def _with_reasoner_dirs(episodes: dict[Cell, Episode]) -> dict[Cell, Episode]:
    """Each reasoner cell's episode with the folder of its reasoner (looked up once per reasoner)."""
    folders: dict[tuple, str] = {}
    out = {}
    for c, ep in episodes.items():
        if c.reasoner != NO_REASONER:
            key = (c.reasoner, c.reasoner_digest)
            if key not in folders:
                folders[key] = str(reasoner_folder(c.reasoner, c.reasoner_digest))
            ep = ep._replace(reasoner_dir=folders[key])
        out[c] = ep
    return out


def group_episodes(spec: GridSpec, cells: list[Cell]) -> tuple[dict[Cell, Episode], int]:
    """The episode of every cell of one (dataset, backbone, protocol) group, and the forward passes spent."""
    c0 = cells[0]
    common = dict(dataset_options=c0.options, cache_uri=spec.cache_uri, executor=spec.executor,
                  actors=spec.embed_actors, batch_size=spec.embed_batch_size, gpus_per_actor=spec.gpus_per_actor,
                  torch_threads=spec.embed_torch_threads, dtype=c0.backbone_dtype, splits=["train", "test"])
    if c0.protocol == "stream":
        # both splits in one call: on Ray, one actor pool (one model load) for the two
        both = get_embeddings(c0.dataset, "train", c0.backbone, "stream", **common)
        train, test = both.select("train"), both.select("test")
        episodes = {}
        for c in cells:
            ctx = context_sets(train.labels, [c.k], c.seed, n_classes=c.n_classes)[c.k]
            episodes[c] = Episode(train.X[ctx], train.labels[ctx], test.X, test.labels, test.ids)
        return _with_reasoner_dirs(episodes), both.forward_passes
    # vanilla / loo: context-dependent, per (k, seed); all of them computed (or read from the
    # cache) in one call, one Ray task per seed in parallel, then picked per cell
    every = get_embeddings(c0.dataset, "train", c0.backbone, c0.protocol, k=c0.k, seed=c0.seed,
                           ks=sorted({c.k for c in cells}), seeds=sorted({c.seed for c in cells}), **common)
    episodes = {}
    for c in cells:
        tr, te = every.select("train", c.k, c.seed), every.select("test", c.k, c.seed)
        episodes[c] = Episode(tr.X, tr.labels, te.X, te.labels, te.ids)
    return _with_reasoner_dirs(episodes), every.forward_passes


# per process (a Ray worker runs many cells): each checkpoint loaded once, by (reference, weights digest)
_REASONERS: dict[tuple, Any] = {}


def _reasoner(cell: Cell, folder: Optional[str]) -> Any:
    from ..reasoner import load_reasoner  # imports torch (~3 s): only processes that run tart cells

    key = (cell.reasoner, cell.reasoner_digest)
    if key not in _REASONERS:
        _REASONERS[key] = load_reasoner(reasoner_folder(cell.reasoner, cell.reasoner_digest, hint=folder))
    return _REASONERS[key]


def run_embedding_cells(cells: list[Cell], episodes: list[Episode],
                        skip: Optional[Callable[[Cell], bool]] = None) -> Iterator[Optional[dict]]:
    """Unit body: each cell's method on its episode (None where `skip(cell)`: finished elsewhere).

    BLAS runs single-threaded here, as in a Ray worker: a cell's matrices are tiny (k x D), and a
    multi-threaded OpenBLAS spends more on waking its threads than on the SVD (64 x 384: 8 ms on one
    thread, 300 ms on two on a busy 2-core box)."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(limits=1, user_api="blas"):
        for cell, ep in zip(cells, episodes):
            if skip is not None and skip(cell):
                yield None
                continue
            t0 = time.time()
            reasoner = _reasoner(cell, ep.reasoner_dir) if get_method(cell.method).needs_reasoner else None
            extra = {"n_classes": cell.n_classes} if cell.n_classes > 2 else {}
            p = run_method(cell.method, ep.Xc, ep.yc, ep.Xq, reasoner=reasoner, **extra)
            yield {"probs": np.asarray(p, dtype=np.float32), "runtime_s": time.time() - t0, "labels": ep.yq,
                   "ids": ep.ids}


def run_text_cells(cells: list[Cell], batch_size: int,
                   skip: Optional[Callable[[Cell], bool]] = None) -> Iterator[Optional[dict]]:
    """Unit body: cells of one dataset and backbone whose methods share a runner (icl and
    icl_calibrated; setfit), through that runner (which loads the backbone once for all of them)."""
    c0 = cells[0]
    runner = get_method(c0.method).load_runner()
    extra = {"max_chars": c0.prompt_max_chars} if c0.prompt_max_chars is not None else {}
    episodes = [(c.k, c.seed, c.method) for c in cells]
    yield from runner(c0.dataset, c0.options, c0.backbone, c0.backbone_dtype, episodes,
                      batch_size, skip=(lambda i: skip(cells[i])) if skip is not None else None, **extra)
