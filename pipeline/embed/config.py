"""What `tart embed` is asked to do: `EmbedConfig`, its validation and its `--help` text.

Every field is a config key of the stage (YAML and/or `key=value`); `FIELD_HELP` documents
each one. `validate()` rejects a bad config before any dataset or model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ..backbones.pooling import pooling_problem
from ..config import ConfigError
from ..runtime import DTYPES

PROTOCOLS = ("stream", "vanilla", "loo")
CONTEXT_PROTOCOLS = ("vanilla", "loo")
EXECUTORS = ("ray", "local", "auto")
SPLITS = ("train", "test", "all")
DEFAULT_CACHE = "./tart_cache/embeddings"


class EmbedError(RuntimeError):
    """Embedding could not complete, or a cache entry is unusable; the message says which."""


def default_cache_uri() -> str:
    return os.environ.get("TART_EMBED_CACHE") or DEFAULT_CACHE


@dataclass
class EmbedConfig:
    """What to embed (dataset, splits, backbone, layer, pooling, protocol) and how (executor, actors,
    resources, dtype, cache). Every field is a `tart embed` key; FIELD_HELP says what each does."""

    dataset: str = "sms_spam"  # built-in name, HF id or local file (see pipeline.datasets)
    dataset_options: dict[str, Any] = field(default_factory=dict)  # DatasetSpec fields, e.g. test_size
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    backbone: str = "minilm-l6"  # registry name, HF id or local folder (see pipeline.backbones)
    layer: int = -1
    pooling: str = "mean"  # mean | last | cls | max | mean_sqrt_len [+normalize] | auto (pipeline.backbones.pooling)
    protocol: str = "stream"  # stream | vanilla | loo
    ks: list[int] = field(default_factory=lambda: [18, 32])  # vanilla/loo only
    seeds: list[int] = field(default_factory=lambda: [0])  # vanilla/loo only
    cache_uri: str = ""  # "" -> $TART_EMBED_CACHE or ./tart_cache/embeddings
    executor: str = "ray"  # ray | local | auto (ray if already initialised)
    actors: int = 1
    batch_size: int = 32
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0.0
    dtype: str = "auto"  # auto (bfloat16 on GPU and on CPUs with native bf16, else float32) | float32 | float16 | bfloat16
    max_length: Optional[int] = None  # token limit; None: the backbone's own
    torch_threads: Optional[int] = None  # torch intra-op threads inside each embedder
    rows_per_file: int = 8192
    limit: Optional[int] = None  # embed only the first N examples of each split (smoke runs)
    overwrite: bool = False  # recompute even complete entries
    max_restarts: int = -1  # Ray actor restarts after a crash (-1: Ray Data's default, unlimited)
    max_task_retries: int = -1  # retries of a batch whose actor died (-1: unlimited)
    storage_options: dict[str, Any] = field(default_factory=dict)
    fail_once: Optional[str] = None  # fault injection: marker file; the actor process exits on its first batch

    def validate(self) -> None:
        if not self.dataset:
            raise ConfigError("dataset: expected a dataset name")
        if not self.backbone:
            raise ConfigError("backbone: expected a backbone name")
        if not self.splits:
            raise ConfigError("splits: expected at least one of " + ", ".join(SPLITS))
        for s in self.splits:
            if s not in SPLITS:
                raise ConfigError(f"splits: {s!r} is not one of {', '.join(SPLITS)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol={self.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if self.protocol in CONTEXT_PROTOCOLS:
            if "all" in self.splits:
                raise ConfigError(f"protocol={self.protocol}: splits must be train (context) and/or test (queries)")
            if not self.ks or not self.seeds:
                raise ConfigError(f"protocol={self.protocol}: ks and seeds must be non-empty")
            for k in self.ks:
                if k < 2 or k % 2:
                    raise ConfigError(f"ks: k={k}: expected an even number >= 2")
        problem = pooling_problem(self.pooling)
        if problem:
            raise ConfigError(problem)
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor={self.executor!r}: expected one of {', '.join(EXECUTORS)}")
        if self.actors < 1:
            raise ConfigError(f"actors={self.actors}: expected >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: expected >= 1")
        if not self.cpus_per_actor > 0:
            raise ConfigError(f"cpus_per_actor={self.cpus_per_actor}: expected > 0 (fractional is fine, e.g. 0.5)")
        if self.gpus_per_actor < 0:
            raise ConfigError(f"gpus_per_actor={self.gpus_per_actor}: expected >= 0")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.rows_per_file < 1:
            raise ConfigError(f"rows_per_file={self.rows_per_file}: expected >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit={self.limit}: expected >= 1 or null")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length}: expected >= 2 or null")


FIELD_HELP = {
    "dataset": "built-in (sms_spam, tweet_sentiment, digits, mnist, spoken_digits[_clean]), HF id owner/name, or a local file",
    "dataset_options": "DatasetSpec fields, e.g. dataset_options.test_size=200 dataset_options.text_field=body",
    "splits": "which splits to embed: train (context pool) | test | all  (vanilla/loo: train=context, test=queries)",
    "backbone": "registry name (minilm-l6, smollm2-135m, ...), HF model id, or a local model folder",
    "layer": "hidden-state index: -1 last, 0 embeddings, i output of block i",
    "pooling": "mean over the example's own tokens | last (last real token) | cls | max | mean_sqrt_len, each "
               "optionally +normalize | auto (the folder's sentence-transformers pooling, e.g. mean+normalize; else mean)",
    "protocol": "stream (each example alone) | vanilla (k-example prompt) | loo (leave-one-out prompts)",
    "ks": "context sizes for vanilla/loo, e.g. ks=[18,32]",
    "seeds": "context-set seeds for vanilla/loo, e.g. seeds=[0,1,2]",
    "cache_uri": "cache root (any fsspec URI); empty: $TART_EMBED_CACHE or ./tart_cache/embeddings",
    "executor": "ray (stream: Ray Data actor pool; vanilla/loo: one Ray task per seed) | local (in-process) | auto (ray if initialised)",
    "actors": "size of the Ray Data actor pool (each loads the model once)",
    "batch_size": "examples per batch (per forward pass); rows are pre-sorted by length to limit padding",
    "cpus_per_actor": "Ray num_cpus per actor; fractional (0.5) so reads/other work still get scheduled",
    "gpus_per_actor": "Ray num_gpus per actor (>0 puts the model on cuda)",
    "dtype": "auto (bfloat16 on GPU and on CPUs with AVX512-BF16/AMX, else float32) | float32 | float16 | bfloat16",
    "max_length": "token limit (stream truncates at it, vanilla/loo refuse longer prompts); null: the backbone's",
    "torch_threads": "torch intra-op threads in each embedder (null: leave as Ray/torch set it)",
    "rows_per_file": "rows per Parquet part file of a cache entry",
    "limit": "embed only the first N examples of each split (smoke runs; part of the dataset digest)",
    "overwrite": "recompute entries even when a complete one exists",
    "max_restarts": "Ray actor restarts after an actor process dies (-1: Ray Data default, unlimited)",
    "max_task_retries": "retries of a batch whose actor died (-1: unlimited)",
    "storage_options": "mapping passed to fsspec (e.g. storage_options.anon=true)",
    "fail_once": "fault injection for tests: marker file path; the first actor batch kills its process",
}
