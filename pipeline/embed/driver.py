"""The embed driver: plan, find what the cache lacks, compute only that, commit, return it all.

`embed(cfg)` is the stage (`tart embed` calls it); `get_embeddings(dataset, split, backbone,
...)` is the same for library callers (the grid), with EmbedConfig fields as keyword
arguments. Both return an `EmbeddingTable`. The driver writes every entry itself, rows in
the dataset's order, so cache bytes never depend on Ray's scheduling. Progress lines go to
this module's logger (or to `log`, where a caller passes one).
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any, Callable

from ..console import Progress
from ..datasets import context_sets
from . import context, stream
from .cache import EmbeddingCache, dataset_digest, entry_key, key_hash, open_cache
from .config import CONTEXT_PROTOCOLS, EmbedConfig, EmbedError
from .plan import Plan, make_plan
from .table import EmbeddingTable

logger = logging.getLogger(__name__)

Log = Callable[[str], None]


def embed(cfg: EmbedConfig, log: Log | None = None) -> EmbeddingTable:
    """Make sure every requested entry is in the cache (computing only missing ones) and return them all.

    Input problems (unknown backbone/dataset, missing column, protocol/backbone mismatch,
    unwritable cache) raise before any model is loaded. `log`: where progress lines go
    (default: this module's logger).
    """
    say = log or logger.info
    cfg.validate()
    t0 = time.time()
    cache = open_cache(cfg)  # first: a missing driver / credentials fail before any dataset is loaded
    plan = make_plan(cfg)
    if cfg.protocol in CONTEXT_PROTOCOLS:
        table = _embed_context(cfg, plan, cache, say)
    else:
        table = _embed_stream(cfg, plan, cache, say)
    say(f"embed: {len(table.entries)} entr(ies), {table.computed} computed, {table.forward_passes} forward passes, "
        f"{time.time() - t0:.1f}s, cache {cache.uri}")
    return table


def config_for(dataset: str, split: str, backbone: str, protocol: str = "stream", k: int | None = None,
               seed: int | None = None, **fields: Any) -> EmbedConfig:
    """The EmbedConfig of one library request: `split` (and for vanilla/loo `k` and `seed`) unless
    `splits` / `ks` / `seeds` are given; `fields` are any other EmbedConfig fields. The library's
    executor default is `auto` (Ray if it is running), not the CLI's `ray`."""
    if protocol in CONTEXT_PROTOCOLS and (k is None or seed is None):
        raise EmbedError(f"protocol={protocol}: pass k= and seed=")
    fields.setdefault("splits", [split])
    fields.setdefault("ks", [k] if k is not None else [18])
    fields.setdefault("seeds", [seed] if seed is not None else [0])
    fields["dataset_options"] = dict(fields.get("dataset_options") or {})
    fields["cache_uri"] = fields.get("cache_uri") or ""
    fields.setdefault("executor", "auto")
    return EmbedConfig(dataset=dataset, backbone=backbone, protocol=protocol, **fields)


def get_embeddings(dataset: str, split: str, backbone: str, protocol: str = "stream", *, k: int | None = None,
                   seed: int | None = None, log: Log | None = None, **fields: Any) -> EmbeddingTable:
    """Library entry (the grid): `embed(config_for(...))`, computing only what is missing.

    stream: `split` in train | test | all. vanilla/loo: `k` and `seed` required; split
    "train" gives the k context examples in prompt order, "test" the queries. Keyword
    arguments are EmbedConfig fields (layer, pooling, dtype, dataset_options, cache_uri,
    executor, actors, batch_size, limit, ...; `splits`, `ks`, `seeds` widen what is computed,
    e.g. every (k, seed) of a grid at once).
    """
    return embed(config_for(dataset, split, backbone, protocol, k, seed, **fields), log=log)


def _key_for(cfg: EmbedConfig, plan: Plan, split: str, k: int | None = None, seed: int | None = None) -> dict:
    return entry_key(backbone=cfg.backbone, revision=plan.revision, dataset_digest=dataset_digest(plan.examples[split]),
                     split=split, protocol=cfg.protocol, layer=cfg.layer, pooling=plan.pooling, dtype=plan.dtype,
                     max_length=cfg.max_length, k=k, seed=seed)


def _entry(cache: EmbeddingCache, h: str, split: str, k: int | None, seed: int | None, computed: bool,
           rows: int) -> dict:
    return {"split": split, "k": k, "seed": seed, "key_hash": h, "uri": cache.uri_of(h), "computed": computed,
            "rows": rows}


def _read(cache: EmbeddingCache, h: str, manifest: dict, split: str, k: int | None = None,
          seed: int | None = None) -> EmbeddingTable:
    ids, labels, X = cache.read(h, manifest)
    return EmbeddingTable.of_entry(ids, labels, X, split, k, seed, _entry(cache, h, split, k, seed, False, len(ids)))


def _resolve_executor(executor: str) -> str:
    if executor == "auto":
        return "ray" if importlib.import_module("ray").is_initialized() else "local"
    return executor


def _embed_stream(cfg: EmbedConfig, plan: Plan, cache: EmbeddingCache, say: Log) -> EmbeddingTable:
    splits = list(dict.fromkeys(cfg.splits))
    keys = {s: _key_for(cfg, plan, s) for s in splits}
    hashes = {s: key_hash(keys[s]) for s in splits}
    found = {s: (None if cfg.overwrite else cache.complete(hashes[s], keys[s])) for s in splits}
    todo = [s for s in splits if found[s] is None]
    results: dict[str, EmbeddingTable] = {}
    forwards_total = 0
    if todo:
        executor = _resolve_executor(cfg.executor)
        say(f"embed: computing {', '.join(todo)} of {cfg.dataset} with {cfg.backbone} ({executor}, "
            f"{sum(len(plan.examples[s]) for s in todo)} examples)")
        t1 = time.time()
        run = stream.stream_ray if executor == "ray" else stream.stream_local
        outs = run(cfg, plan, [plan.examples[s] for s in todo])
        secs = time.time() - t1
        for s, (X, fw) in zip(todo, outs):
            ex = plan.examples[s]
            man = cache.write(hashes[s], keys[s], ex.ids, ex.labels, X, cfg.rows_per_file, overwrite=cfg.overwrite,
                              extra={"seconds": round(secs, 3), "forward_passes": fw, "executor": executor,
                                     "label_names": list(ex.label_names)})
            forwards_total += fw
            results[s] = EmbeddingTable.of_entry(ex.ids, ex.labels, X, s, None, None,
                                                 _entry(cache, hashes[s], s, None, None, True, man["rows"]))
    out = EmbeddingTable.concat([results[s] if s in results else _read(cache, hashes[s], found[s], s) for s in splits])
    out.forward_passes = forwards_total
    return out


def _embed_context(cfg: EmbedConfig, plan: Plan, cache: EmbeddingCache, say: Log) -> EmbeddingTable:
    train = plan.examples["train"]
    splits = list(dict.fromkeys(cfg.splits))
    sets = {seed: context_sets(train.labels, cfg.ks, seed) for seed in cfg.seeds}  # DatasetError before work
    pairs = [(seed, k) for seed in cfg.seeds for k in cfg.ks]
    keys = {(seed, k): {s: _key_for(cfg, plan, s, k, seed) for s in ("train", "test")} for seed, k in pairs}
    hashes = {p: {s: key_hash(key) for s, key in keys[p].items()} for p in pairs}
    found = {p: {s: (None if cfg.overwrite else cache.complete(hashes[p][s], keys[p][s])) for s in splits}
             for p in pairs}
    todo = [p for p in pairs if any(v is None for v in found[p].values())]
    got, forwards = _compute_context(cfg, plan, cache, todo, sets, keys, hashes, say) if todo else ({}, 0)
    parts = []
    for seed, k in pairs:
        for s in splits:
            computed = got.get((seed, k))
            parts.append(computed[s] if computed else _read(cache, hashes[seed, k][s], found[seed, k][s], s, k, seed))
    out = EmbeddingTable.concat(parts)
    out.forward_passes = forwards
    return out


def _compute_context(cfg: EmbedConfig, plan: Plan, cache: EmbeddingCache, todo: list[tuple], sets: dict,
                     keys: dict, hashes: dict, say: Log) -> tuple[dict, int]:
    """Embed and commit both entries (context rows, queries) of every (seed, k) in `todo`; one
    job group per seed. -> ({(seed, k): {split: table}}, forward passes)."""
    train, test = plan.examples["train"], plan.examples["test"]
    ctxs = {(seed, k): train.subset(sets[seed][k]) for seed, k in todo}
    by_seed: dict[int, list[tuple]] = {}
    for (seed, k), ctx in ctxs.items():
        by_seed.setdefault(seed, []).append((k, seed, list(ctx.texts), [train.label_names[int(y)] for y in ctx.labels],
                                             list(test.texts)))
    executor = _resolve_executor(cfg.executor)
    say(f"embed: computing {cfg.protocol} prompts of {cfg.dataset} with {cfg.backbone} for {len(todo)} (k, seed) "
        f"({executor}, {len(by_seed)} task(s))")
    kw = {**stream.embedder_kwargs(cfg, plan), "fail_once": None}
    got: dict[tuple, dict[str, EmbeddingTable]] = {}
    forwards = 0
    with Progress("embed", len(todo), "prompt sets") as progress:
        for k, seed, Xc, Xq, fw, secs in context.run_context_jobs(cfg, executor, kw, list(by_seed.values())):
            forwards += fw
            extra = {"seconds": secs, "forward_passes": fw, "executor": executor,
                     "label_names": list(train.label_names)}
            got[seed, k] = {}
            for s, ex, X in (("train", ctxs[seed, k], Xc), ("test", test, Xq)):  # both: queries need the context
                h = hashes[seed, k][s]
                man = cache.write(h, keys[seed, k][s], ex.ids, ex.labels, X, cfg.rows_per_file, extra,
                                  overwrite=cfg.overwrite)
                got[seed, k][s] = EmbeddingTable.of_entry(ex.ids, ex.labels, X, s, k, seed,
                                                          _entry(cache, h, s, k, seed, True, man["rows"]))
            progress.advance(1, f"k={k} seed={seed}")
    return got, forwards
