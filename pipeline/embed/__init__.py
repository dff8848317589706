"""Stage 3 (`tart embed`): frozen-backbone embeddings of a dataset, cached as Parquet.

Protocols:

- stream (the main path): every example embedded alone, on a Ray Data actor pool or
  in-process (`stream`);
- vanilla / loo (causal LMs only): examples embedded inside k-example prompts, the
  prompt's KV cache reused by the queries; one Ray task per seed (`context`).

One module per idea:

    config.py   EmbedConfig (every `tart embed` key), FIELD_HELP, validation
    plan.py     checks before work: backbone kind and revision, dtype, splits, modality
    cache.py    entry keys (dataset digest, key hash), Parquet layout, the commit protocol
    stream.py   BackboneEmbedder (the Ray Data callable class), local and Ray Data runs
    context.py  vanilla / loo prompts, the KV-cache query path, one Ray task per seed
    table.py    EmbeddingTable, what `embed()` returns
    driver.py   embed(cfg) and get_embeddings(...): compute only what the cache lacks
    cli.py      `tart embed` / `python -m jobs.embed`

How each modality's inputs are digested and carried through Ray Data is `pipeline.modality`.
"""

from ..backbones import backbone_info
from .cache import (FORMAT, FORMAT_VERSION, MANIFEST, STALE_ATTEMPT_S, EmbeddingCache, dataset_digest, entry_key,
                    key_hash, open_cache, part_name)
from .cli import build_parser, main
from .config import (CONTEXT_PROTOCOLS, EXECUTORS, FIELD_HELP, PROTOCOLS, SPLITS, EmbedConfig, EmbedError,
                     default_cache_uri)
from .context import context_embeddings
from .driver import config_for, embed, get_embeddings
from .plan import Plan, make_plan
from .stream import BackboneEmbedder, build_dataset, rows_table, stream_local, stream_ray
from .table import EmbeddingTable

__all__ = [
    "CONTEXT_PROTOCOLS", "EXECUTORS", "FIELD_HELP", "FORMAT", "FORMAT_VERSION", "MANIFEST", "PROTOCOLS", "SPLITS",
    "STALE_ATTEMPT_S", "BackboneEmbedder", "EmbedConfig", "EmbedError", "EmbeddingCache", "EmbeddingTable", "Plan",
    "backbone_info", "build_dataset", "build_parser", "config_for", "context_embeddings", "dataset_digest",
    "default_cache_uri", "embed", "entry_key", "get_embeddings", "key_hash", "main", "make_plan", "open_cache",
    "part_name", "rows_table", "stream_local", "stream_ray",
]
