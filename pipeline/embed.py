"""Stage 3 (`tart embed`): frozen-backbone embeddings of a dataset, cached as Parquet.

Protocols (docs/method.md):

- stream (the main path): every example embedded alone (mean/last of one layer's
  hidden states over its own tokens). Context-free, so one cache entry per (dataset
  split, backbone, layer, pooling) serves every k and seed. Runs on Ray Data:
  rows (id, text) -> `map_batches(BackboneEmbedder, compute=ActorPoolStrategy(size=
  actors), num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)`, the model loaded once
  per actor; or `executor=local`: the same embedder class in this process.
- vanilla / loo (causal LMs only): prompts "Sentence: <text>\\nLabel: <word>\\n" of
  the k context examples of `datasets.context_sets(train labels, ks, seed)`; each
  example's vector pools its own token span (from tokenizer offsets, `prompts.py`).
  vanilla: one pass over the k-example prompt gives the k context vectors; each query
  is embedded after the full prompt (the prompt's KV cache is computed once and reused
  by every query, 8 queries per pass). loo: context example i is embedded in a prompt with the other k-1
  first and i last (k passes); queries as in vanilla. `executor=ray`: one Ray task per
  seed (its (k) prompts in order; `cpus_per_actor` / `gpus_per_actor` each, the model
  loaded once per worker process), entries written as each task ends; `local`: the same
  code in this process. Rows of a "train" entry are the k context examples in
  prompt order; rows of a "test" entry are the queries.

Cache layout under `cache_uri` (any fsspec URI; default $TART_EMBED_CACHE or
./tart_cache/embeddings)::

    <cache_uri>/<key_hash>/part-00000-<attempt>.parquet   id string, label int8, position int32,
    <cache_uri>/<key_hash>/part-00001-<attempt>.parquet   embedding fixed_size_list<float32>[dim]
    <cache_uri>/<key_hash>/_manifest.json

`key_hash` = sha256 (20 hex) of the entry key: backbone name, backbone revision,
dataset digest (spec digest + sha256 of the split's ids, labels and inputs), split,
protocol, layer, pooling, dtype, max_length (+ k, seed, prompt template for vanilla/
loo). The manifest records the key, revision, pooling, layer, dataset digest, rows,
dim, files (name, rows, bytes, sha256), created time, seconds and backbone forward
passes spent. Commit protocol (any number of concurrent writers of one entry, e.g. two
grids on one cache): each write attempt (named <host>-<pid>-<random>) writes its own part
files through temp-then-rename, then replaces the manifest (complete=true, naming its parts)
atomically: that is the commit, and the only file two attempts share. An attempt that finds
another's complete manifest for the same key keeps it and removes its own parts. Files no
committed manifest names are removed only when their attempt is provably over (a dead
process of this host, or older than six hours). A reader uses an entry only if its manifest
says complete=true for the same key and every file matches its recorded size and row
count; anything else (files without a manifest, complete=false, missing/truncated part) is
recomputed from scratch. Entries written before attempt names (part-00000.parquet) read
as before: the manifest names the files. Files are written by the driver with rows in the
dataset's order, so the bytes do not depend on Ray's scheduling
(embeddings are small next to the model work: 4,862 x 384 floats = 7.5 MB).

Fault tolerance on Ray: the actor pool runs with `max_restarts` / `max_task_retries`
(config keys; default -1 = Ray Data's default, unlimited): an actor whose process dies (OOM, node loss, the
`fail_once` injection) is restarted and its batch retried. An exception raised by the
embedder code itself is a user error in Ray Data and is not retried: the job fails
with it and nothing is committed (re-run to resume; complete entries are kept).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import storage
from .config import ConfigError, defaults_epilog, load_config, stage_parser
from .modality import modality_of
from .runtime import DTYPES, device_for, init_ray, resolve_dtype

FORMAT = "tart-embeddings"
FORMAT_VERSION = 1
MANIFEST = "_manifest.json"
PROTOCOLS = ("stream", "vanilla", "loo")
CONTEXT_PROTOCOLS = ("vanilla", "loo")
EXECUTORS = ("ray", "local", "auto")
SPLITS = ("train", "test", "all")
DEFAULT_CACHE = "./tart_cache/embeddings"


class EmbedError(RuntimeError):
    """Embedding could not complete, or a cache entry is unusable; the message says which."""


def default_cache_uri() -> str:
    return os.environ.get("TART_EMBED_CACHE") or DEFAULT_CACHE


# ----------------------------------------------------------------------------- config


@dataclass
class EmbedConfig:
    dataset: str = "sms_spam"  # built-in name, HF id or local file (see pipeline.datasets)
    dataset_options: dict[str, Any] = field(default_factory=dict)  # DatasetSpec fields, e.g. test_size
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    backbone: str = "minilm-l6"  # registry name, HF id or local folder (see pipeline.backbones)
    layer: int = -1
    pooling: str = "mean"  # mean | last
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
        if self.pooling not in ("mean", "last"):
            raise ConfigError(f"pooling={self.pooling!r}: expected mean or last")
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
    "pooling": "mean over the example's own tokens | last (last real token)",
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the embedder


class BackboneEmbedder:
    """Ray Data callable class: loads the backbone once in `__init__`, embeds batches.

    Input batch (numpy format): `id` and `text` (or `image`, or `audio`) columns. Output: `id`,
    `embedding` (n, dim) float32, `forwards` (backbone passes spent, on the first row).
    """

    def __init__(self, backbone: str, layer: int = -1, pooling: str = "mean", dtype: str = "float32",
                 device: str = "cpu", max_length: int | None = None, batch_size: int = 32,
                 expected_revision: str | None = None, torch_threads: int | None = None,
                 fail_once: str | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        from .backbones import load_backbone

        self.backbone = load_backbone(backbone, device=device, dtype=dtype, layer=layer, pooling=pooling,
                                      max_length=max_length)
        if expected_revision is not None and self.backbone.revision != expected_revision:
            raise EmbedError(
                f"backbone {backbone!r} on this worker has revision {self.backbone.revision!r}, the driver "
                f"resolved {expected_revision!r}; refusing to mix weights in one cache entry"
            )
        self.batch_size = batch_size
        self.fail_once = fail_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fail_once and not os.path.exists(self.fail_once):
            with open(self.fail_once, "w") as f:
                f.write(str(os.getpid()))
            os._exit(17)  # simulate a crashed worker process (not a Python exception)
        before = self.backbone.forward_count
        if "text" in batch:
            X = self.backbone.embed_texts([str(t) for t in batch["text"]], batch_size=self.batch_size)
        elif "image" in batch:
            X = self.backbone.embed_images(np.asarray(batch["image"]), batch_size=self.batch_size)
        elif "audio" in batch:
            X = self.backbone.embed_audio([np.asarray(a, dtype=np.float32) for a in batch["audio"]],
                                          batch_size=self.batch_size)
        else:
            raise EmbedError(f"batch has no 'text', 'image' or 'audio' column (columns: {sorted(batch)})")
        forwards = np.zeros(len(X), dtype=np.int64)
        if len(X):
            forwards[0] = self.backbone.forward_count - before
        return {"id": np.asarray(batch["id"]), "embedding": X.astype(np.float32, copy=False), "forwards": forwards}


# ----------------------------------------------------------------------------- keys and tables


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


def dataset_digest(ex: Any) -> str:
    """Spec digest + sha256 over the split's ids, labels and inputs (content, not just options)."""
    h = hashlib.sha256()
    h.update(str(ex.metadata.get("spec_digest", "")).encode())
    h.update(json.dumps(list(ex.label_names)).encode())
    for i, y in zip(ex.ids, ex.labels.tolist()):
        h.update(f"{i}\x00{y}\x00".encode())
    if ex.texts is not None:
        for t in ex.texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x01")
    elif getattr(ex, "audios", None) is not None:
        for a in ex.audios:
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
            h.update(f"\x01{len(a)}".encode())
    else:
        h.update(np.ascontiguousarray(ex.images).tobytes())
    return h.hexdigest()[:20]


def entry_key(*, backbone: str, revision: str, dataset_digest: str, split: str, protocol: str, layer: int,
              pooling: str, dtype: str, max_length: int | None, k: int | None = None,
              seed: int | None = None) -> dict:
    key = {"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": backbone, "revision": revision,
           "dataset_digest": dataset_digest, "split": split, "protocol": protocol, "layer": int(layer),
           "pooling": pooling, "dtype": dtype, "max_length": max_length}
    if protocol in CONTEXT_PROTOCOLS:
        from .prompts import TEMPLATE_VERSION

        key.update({"k": int(k), "seed": int(seed), "template": TEMPLATE_VERSION})
    return key


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("label", pa.int8(), nullable=False),
                      pa.field("position", pa.int32(), nullable=False),
                      pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)])


def part_name(i: int, attempt: str) -> str:
    """Part file i of one write attempt: every attempt has its own names (see `_Cache.write`)."""
    return f"part-{i:05d}-{attempt}.parquet"


STALE_ATTEMPT_S = 6 * 3600  # files of an attempt this old are leftovers, whoever wrote them


def _host_tag() -> str:
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _new_attempt() -> str:
    """<host tag>-<pid>-<random>: names one write attempt, so a later writer can tell whether it is dead."""
    import uuid

    return f"{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _attempt_is_dead(name: str) -> bool:
    """True only if the file `name` belongs to an attempt of a process on this host that has exited."""
    parts = name.split("-")
    # part-00000-<host>-<pid>-<rand>.parquet or _tmp-<uuid>-part-00000-<host>-<pid>-<rand>.parquet
    if len(parts) < 4 or not parts[-2].isdigit() or parts[-3] != _host_tag():
        return False
    pid = int(parts[-2])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _Cache:
    """One cache root; entries are `<root>/<key_hash>/`."""

    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = uri
        self.fs, self.base = storage.resolve(uri, storage_options)

    def path(self, h: str) -> str:
        return storage.join(self.base, h)

    def uri_of(self, h: str) -> str:
        return storage.join(self.uri, h)

    def manifest(self, h: str) -> dict | None:
        p = storage.join(self.path(h), MANIFEST)
        try:
            return storage.read_json(self.fs, p)
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return None  # a corrupt manifest is as good as none: recompute

    def complete(self, h: str, key: dict) -> dict | None:
        """The manifest if entry `h` is complete, for exactly `key`, with every file intact; else None."""
        man = self.manifest(h)
        if not man or man.get("complete") is not True or man.get("key") != key:
            return None
        for rec in man.get("files", []):
            p = storage.join(self.path(h), rec["name"])
            try:
                if self.fs.size(p) != rec["bytes"]:
                    return None
            except FileNotFoundError:
                return None
        return man

    def read(self, h: str, man: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for rec in man["files"]:
            data = storage.read_bytes(self.fs, storage.join(self.path(h), rec["name"]))
            t = pq.read_table(pa.BufferReader(data))
            if t.num_rows != rec["rows"]:
                raise EmbedError(f"{self.uri_of(h)}/{rec['name']}: {t.num_rows} rows, manifest says {rec['rows']}")
            tables.append(t)
        t = pa.concat_tables(tables) if tables else _schema(man["dim"]).empty_table()
        if t.num_rows != man["rows"]:
            raise EmbedError(f"{self.uri_of(h)}: {t.num_rows} rows, manifest says {man['rows']}")
        dim = man["dim"]
        X = t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        X = np.asarray(X, dtype=np.float32).reshape(t.num_rows, dim).copy()
        return t.column("id").to_pylist(), t.column("label").to_numpy().astype(np.int64), X

    def write(self, h: str, key: dict, ids: Sequence[str], labels: np.ndarray, X: np.ndarray,
              rows_per_file: int, extra: dict, overwrite: bool = False) -> dict:
        """Commit an entry; safe with any number of concurrent writers of the same entry.

        Each attempt writes part files under its own names (temp, then rename), so no writer
        ever touches another's files. The manifest (complete=true, naming this attempt's parts
        with their sizes and sha256) is the only shared file and is replaced atomically, last:
        it is the commit. A writer that finds a complete manifest for the same key already
        committed by another (and is not `overwrite`) keeps that one and removes its own parts,
        which no manifest ever named. Then leftovers are removed: files no committed manifest
        names that belong to a dead process of this host or are older than STALE_ATTEMPT_S;
        a live concurrent attempt's files are never touched.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.path(h)
        self.fs.makedirs(path, exist_ok=True)
        attempt = _new_attempt()
        man = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": key, "key_hash": h, "complete": False,
               "backbone": key["backbone"], "revision": key["revision"], "pooling": key["pooling"],
               "layer": key["layer"], "dataset_digest": key["dataset_digest"], "split": key["split"],
               "protocol": key["protocol"], "k": key.get("k"), "seed": key.get("seed"), "rows": len(ids),
               "dim": int(X.shape[1]) if X.ndim == 2 else 0, "created": _now(), "files": [],
               "attempt": attempt, **extra}
        schema = _schema(man["dim"])
        n = len(ids)
        nfiles = max(1, -(-n // rows_per_file))
        for f in range(nfiles):
            s, e = f * rows_per_file, min(n, (f + 1) * rows_per_file)
            emb = pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(X[s:e], dtype=np.float32).reshape(-1), type=pa.float32()), man["dim"])
            table = pa.Table.from_arrays(
                [pa.array(list(ids[s:e]), pa.string()), pa.array(np.asarray(labels[s:e], dtype=np.int8)),
                 pa.array(np.arange(s, e, dtype=np.int32)), emb], schema=schema)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            data = sink.getvalue().to_pybytes()
            storage.atomic_write_bytes(self.fs, storage.join(path, part_name(f, attempt)), data)
            man["files"].append({"name": part_name(f, attempt), "rows": e - s, "bytes": len(data),
                                 "sha256": storage.sha256_bytes(data)})
        man["complete"] = True
        man["completed"] = _now()
        theirs = None if overwrite else self.complete(h, key)
        if theirs is not None:  # a concurrent writer committed first: keep its entry, drop ours
            for rec in man["files"]:
                self._remove(storage.join(path, rec["name"]))
            man = theirs
        else:
            storage.write_json_atomic(self.fs, storage.join(path, MANIFEST), man)  # the commit
        self._remove_leftovers(h)
        return man

    def _remove(self, p: str) -> None:
        try:
            self.fs.rm_file(p)
        except FileNotFoundError:
            pass

    def _remove_leftovers(self, h: str) -> None:
        """Remove part/temp files of entry `h` that the committed manifest does not name and whose
        attempt is provably over (a dead process of this host, or older than STALE_ATTEMPT_S)."""
        path = self.path(h)
        committed = self.manifest(h) or {}
        keep = {rec["name"] for rec in committed.get("files", [])}
        for name in storage.list_names(self.fs, path):
            if name in keep or not name.startswith(("part-", storage.TMP_PREFIX)):
                continue
            p = storage.join(path, name)
            if not _attempt_is_dead(name) and not self._older_than(p, STALE_ATTEMPT_S):
                continue
            self._remove(p)

    def _older_than(self, p: str, seconds: float) -> bool:
        try:
            modified = self.fs.modified(p)
        except Exception:  # noqa: BLE001 - gone, or a filesystem without mtimes: leave it
            return False
        if modified.tzinfo is None:  # fsspec's backends give UTC times; some without a zone
            modified = modified.replace(tzinfo=_dt.timezone.utc)
        now = _dt.datetime.now(_dt.timezone.utc)
        return (now - modified).total_seconds() > seconds


# ----------------------------------------------------------------------------- validation before work


def backbone_info(name: str, trust_remote_code: bool = False) -> tuple[str, str]:
    """(kind, revision) of a backbone without loading its weights; BackboneError if unknown."""
    from .backbones import _infer_kind, _raw_config, _resolve

    res = _resolve(name)
    if res.kind == "audio":
        return "audio", res.revision
    cfg, revision = _raw_config(res)
    return res.kind or _infer_kind(cfg), revision or res.revision


@dataclass
class _Plan:
    examples: dict[str, Any]  # split -> Examples
    kind: str
    revision: str
    dtype: str
    device: str


def _plan(cfg: EmbedConfig) -> _Plan:
    from .datasets import load_examples

    kind, revision = backbone_info(cfg.backbone)
    device = device_for(cfg.gpus_per_actor)
    dtype = resolve_dtype(cfg.dtype, device)
    splits = list(dict.fromkeys(cfg.splits))
    if cfg.protocol in CONTEXT_PROTOCOLS:
        if kind != "causal":
            raise EmbedError(f"protocol={cfg.protocol} needs a causal LM backbone; {cfg.backbone!r} is {kind}")
        splits = ["train", "test"]  # both are needed to build prompts for either
    examples = {}
    for s in splits:
        ex = load_examples(cfg.dataset, s, **cfg.dataset_options)
        if cfg.limit is not None and len(ex) > cfg.limit:
            ex = ex.subset(range(cfg.limit))
        want = modality_of(kind)
        if ex.modality != want:
            raise EmbedError(f"dataset {cfg.dataset!r} is {ex.modality} but backbone {cfg.backbone!r} ({kind}) needs {want}")
        examples[s] = ex
    return _Plan(examples, kind, revision, dtype, device)


# ----------------------------------------------------------------------------- stream


def _rows_table(ex: Any):
    """Arrow table of (id, text|image|audio); texts and clips sorted by length (longest first) so
    batches pad little."""
    import pyarrow as pa

    if ex.texts is not None:
        order = np.argsort([-len(t) for t in ex.texts], kind="stable")
        return pa.table({"id": pa.array([ex.ids[i] for i in order], pa.string()),
                         "text": pa.array([ex.texts[i] for i in order], pa.string())})
    if getattr(ex, "audios", None) is not None:
        order = np.argsort([-len(a) for a in ex.audios], kind="stable")
        return pa.table({"id": pa.array([ex.ids[i] for i in order], pa.string()),
                         "audio": pa.array([np.asarray(ex.audios[i], np.float32) for i in order],
                                           pa.list_(pa.float32()))})
    from ray.data.extensions import ArrowTensorArray  # images: a tensor column

    return pa.table({"id": pa.array(ex.ids, pa.string()), "image": ArrowTensorArray.from_numpy(np.asarray(ex.images))})


def _embedder_kwargs(cfg: EmbedConfig, plan: _Plan) -> dict:
    return dict(backbone=cfg.backbone, layer=cfg.layer, pooling=cfg.pooling, dtype=plan.dtype, device=plan.device,
                max_length=cfg.max_length, batch_size=cfg.batch_size, expected_revision=plan.revision,
                torch_threads=cfg.torch_threads, fail_once=cfg.fail_once)


def _collect(batches, ex: Any) -> tuple[np.ndarray, int]:
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
    if X is None or not seen.all():
        missing = [ex.ids[i] for i in np.flatnonzero(~seen)[:5]]
        raise EmbedError(f"embedding returned no vector for {int((~seen).sum())} example(s), e.g. {missing}")
    return X, forwards


_LOCAL: dict[str, Any] = {}  # one warm in-process embedder/backbone (the grid calls get_embeddings many times)


def _local_embedder(kwargs: dict) -> "BackboneEmbedder":
    key = "embedder:" + json.dumps(kwargs, sort_keys=True, default=str)
    if key not in _LOCAL:
        _LOCAL.clear()  # keep at most one model in memory
        _LOCAL[key] = BackboneEmbedder(**kwargs)
    emb = _LOCAL[key]
    emb.fail_once = None  # fault injection is for actors only
    return emb


def stream_local(cfg: EmbedConfig, plan: _Plan, todo: list[Any], log: Callable) -> list[tuple[np.ndarray, int]]:
    """Embed each split in `todo` in-process with one `BackboneEmbedder` (same code as the actors)."""
    embedder = _local_embedder(_embedder_kwargs(cfg, plan))
    out = []
    for ex in todo:
        rows = _rows_table(ex)
        cols = {c: rows.column(c).to_numpy(zero_copy_only=False) for c in rows.column_names}
        batches = (embedder({c: v[s:s + cfg.batch_size] for c, v in cols.items()})
                   for s in range(0, rows.num_rows, cfg.batch_size))
        out.append(_collect(batches, ex))
    return out


def build_dataset(cfg: EmbedConfig, plan: _Plan, ex: Any):
    """The Ray Data pipeline for one split: from_arrow(blocks) -> map_batches(BackboneEmbedder actor pool)."""
    import ray

    rows = _rows_table(ex)
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
        fn_constructor_kwargs=_embedder_kwargs(cfg, plan),
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
    position (ids may repeat across splits), texts or images concatenated."""

    ids: list[str]
    texts: Optional[list[str]]
    images: Any
    sizes: list[int]
    audios: Optional[list[np.ndarray]] = None

    SEP = "\x1f"

    @classmethod
    def of(cls, parts: list[Any]) -> "_Joined":
        ids = [f"{n}{cls.SEP}{i}" for n, ex in enumerate(parts) for i in ex.ids]
        sizes = [len(ex.ids) for ex in parts]
        if all(ex.texts is not None for ex in parts):
            return cls(ids, [t for ex in parts for t in ex.texts], None, sizes)
        if all(getattr(ex, "audios", None) is not None for ex in parts):
            return cls(ids, None, None, sizes, [a for ex in parts for a in ex.audios])
        return cls(ids, None, np.concatenate([np.asarray(ex.images) for ex in parts]), sizes)


def stream_ray(cfg: EmbedConfig, plan: _Plan, todo: list[Any], log: Callable) -> list[tuple[np.ndarray, int]]:
    """Every split in `todo` through ONE Ray Data pipeline: one actor pool, so one actor start and
    model load (tens of seconds each on a small CPU box) for all of them. Forward passes are
    counted for the pipeline and attributed to the splits by their share of the rows."""
    init_ray(None, None)
    joined = _Joined.of(todo)
    X, forwards = _collect(build_dataset(cfg, plan, joined).iter_batches(batch_size=None, batch_format="numpy"),
                           joined)
    out, start, given = [], 0, 0
    for n, size in enumerate(joined.sizes):
        fw = forwards - given if n == len(joined.sizes) - 1 else round(forwards * size / max(1, len(joined.ids)))
        out.append((X[start:start + size], fw))
        start, given = start + size, given + fw
    return out


# ----------------------------------------------------------------------------- vanilla / loo


def _hidden(bb: Any, ids: Sequence[int], past: Any = None) -> tuple[Any, Any]:
    """(L, dim) float hidden states at the backbone's layer for `ids` (after `past`), and the new cache."""
    import torch

    x = torch.tensor([list(ids)], dtype=torch.long, device=bb.device)
    kw = {_cache_arg(bb.model): past} if past is not None else {}
    with torch.inference_mode():
        out = bb.model(input_ids=x, use_cache=True, output_hidden_states=bb.layer != -1, return_dict=True, **kw)
    bb.forward_count += 1
    h = out.last_hidden_state if bb.layer == -1 else out.hidden_states[bb.layer]
    new = getattr(out, "cache", None)
    return h[0].float(), new if new is not None else getattr(out, "past_key_values", None)


def _cache_arg(model: Any) -> str:
    """transformers >= 5.2x names the KV-cache argument `cache` (`past_key_values` is deprecated)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _hidden_batch(bb: Any, suffixes: list[list[int]], past: Any, past_len: int) -> Any:
    """(B, L, dim) float hidden states of right-padded `suffixes`, each continuing the batch-1 KV
    cache `past` (`past_len` tokens), in one forward pass. Padding sits after every real token,
    so under the causal mask no real position sees it; positions continue after the prompt."""
    import torch

    from .prompts import continuation_batch

    n = len(suffixes)
    ids, mask, pos = continuation_batch(suffixes, past_len, bb.tokenizer.pad_token_id)
    with torch.inference_mode():
        cache = copy.deepcopy(past)  # the forward appends to it; the prompt's own cache stays intact
        if n > 1:
            cache.batch_repeat_interleave(n)
        out = bb.model(input_ids=ids.to(bb.device), attention_mask=mask.to(bb.device), position_ids=pos.to(bb.device),
                       use_cache=True, output_hidden_states=bb.layer != -1, return_dict=True,
                       **{_cache_arg(bb.model): cache})
    bb.forward_count += 1
    h = out.last_hidden_state if bb.layer == -1 else out.hidden_states[bb.layer]
    return h.float()


def _pool(bb: Any, h: Any, span: tuple[int, int]) -> np.ndarray:
    s, e = span
    v = h[s:e].mean(0) if bb.pooling == "mean" else h[e - 1]
    return v.cpu().numpy().astype(np.float32)


def context_embeddings(bb: Any, ctx_texts: Sequence[str], ctx_words: Sequence[str], query_texts: Sequence[str],
                       protocol: str, what: str = "", use_kv_cache: bool = True,
                       query_batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(context vectors (k, dim), query vectors (n, dim)) under `protocol` (vanilla | loo).

    Every prompt is tokenised (and length-checked) before the first forward pass, so an
    over-long prompt fails fast. Queries reuse the context prompt's KV cache when the
    full prompt's tokens start with the context prompt's tokens (checked per query), in
    batches of `query_batch` on a copy of that cache (one pass per batch, not per query;
    the copy holds `query_batch` x the prompt's keys and values, hence a small default).
    """
    from .prompts import build_prompt, tokenize_prompt

    if protocol not in CONTEXT_PROTOCOLS:
        raise EmbedError(f"protocol {protocol!r}: expected vanilla or loo")
    tok, limit = bb.tokenizer, bb.max_length
    k = len(ctx_texts)
    ctx = tokenize_prompt(tok, build_prompt(ctx_texts, ctx_words), limit, f"{protocol} context prompt{what}")
    queries = [tokenize_prompt(tok, build_prompt(list(ctx_texts) + [q], list(ctx_words) + [None]), limit,
                               f"{protocol} prompt for query {j}{what}") for j, q in enumerate(query_texts)]
    loo = []
    if protocol == "loo":
        for i in range(k):
            order = [j for j in range(k) if j != i] + [i]
            loo.append(tokenize_prompt(tok, build_prompt([ctx_texts[j] for j in order], [ctx_words[j] for j in order]),
                                       limit, f"loo prompt for context example {i}{what}"))
    dim = bb.dim
    Xc = np.zeros((k, dim), np.float32)
    Xq = np.zeros((len(queries), dim), np.float32)
    h, cache = _hidden(bb, ctx.input_ids)
    if protocol == "vanilla":
        for i, span in enumerate(ctx.spans):
            Xc[i] = _pool(bb, h, span)
    else:
        for i, tp in enumerate(loo):
            hi, _ = _hidden(bb, tp.input_ids)
            Xc[i] = _pool(bb, hi, tp.spans[-1])
    n_ctx = len(ctx.input_ids)
    on_cache = [j for j, tq in enumerate(queries)
                if use_kv_cache and tq.input_ids[:n_ctx] == ctx.input_ids and tq.spans[-1][0] >= n_ctx]
    on_cache.sort(key=lambda j: len(queries[j].input_ids))  # similar lengths together: less padding
    for b in range(0, len(on_cache), query_batch):
        rows = on_cache[b:b + query_batch]
        h = _hidden_batch(bb, [queries[j].input_ids[n_ctx:] for j in rows], cache, n_ctx)
        for r, j in enumerate(rows):
            s, e = queries[j].spans[-1]
            Xq[j] = _pool(bb, h[r], (s - n_ctx, e - n_ctx))
    for j in sorted(set(range(len(queries))) - set(on_cache)):  # the naive path: the whole prompt
        hq, _ = _hidden(bb, queries[j].input_ids)
        Xq[j] = _pool(bb, hq, queries[j].spans[-1])
    return Xc, Xq


# ----------------------------------------------------------------------------- driver


def _key_for(cfg: EmbedConfig, plan: _Plan, split: str, k: int | None = None, seed: int | None = None) -> dict:
    return entry_key(backbone=cfg.backbone, revision=plan.revision, dataset_digest=dataset_digest(plan.examples[split]),
                     split=split, protocol=cfg.protocol, layer=cfg.layer, pooling=cfg.pooling, dtype=plan.dtype,
                     max_length=cfg.max_length, k=k, seed=seed)


def open_cache(cfg: EmbedConfig) -> _Cache:
    """The cache of `cfg`, probed with a write (StorageError: missing driver, credentials, read-only)."""
    cache = _Cache(cfg.cache_uri or default_cache_uri(), cfg.storage_options)
    storage.check_writable(cache.fs, cache.base, cache.uri)
    return cache


def embed(cfg: EmbedConfig, log: Callable[[str], None] = print) -> EmbeddingTable:
    """Make sure every requested entry is in the cache (computing only missing ones) and return them all.

    Input problems (unknown backbone/dataset, missing column, protocol/backbone mismatch,
    unwritable cache) raise before any model is loaded.
    """
    cfg.validate()
    t0 = time.time()
    cache = open_cache(cfg)  # first: a missing driver / credentials fail before any dataset is loaded
    plan = _plan(cfg)
    if cfg.protocol in CONTEXT_PROTOCOLS:
        table = _embed_context(cfg, plan, cache, log)
    else:
        table = _embed_stream(cfg, plan, cache, log)
    log(f"embed: {len(table.entries)} entr(ies), {table.computed} computed, {table.forward_passes} forward passes, "
        f"{time.time() - t0:.1f}s, cache {cache.uri}")
    return table


def _table(ex_ids, labels, X, split, k, seed, entry) -> EmbeddingTable:
    n = len(ex_ids)
    return EmbeddingTable(list(ex_ids), np.asarray(labels, np.int64), X, np.array([split] * n, dtype=object),
                          np.full(n, -1 if k is None else k, np.int64), np.full(n, -1 if seed is None else seed, np.int64),
                          [entry])


def _resolve_executor(executor: str) -> str:
    if executor == "auto":
        import importlib

        return "ray" if importlib.import_module("ray").is_initialized() else "local"
    return executor


def _embed_stream(cfg: EmbedConfig, plan: _Plan, cache: _Cache, log: Callable) -> EmbeddingTable:
    splits = list(dict.fromkeys(cfg.splits))
    keys = {s: _key_for(cfg, plan, s) for s in splits}
    hashes = {s: key_hash(keys[s]) for s in splits}
    found = {s: (None if cfg.overwrite else cache.complete(hashes[s], keys[s])) for s in splits}
    todo = [s for s in splits if found[s] is None]
    results: dict[str, EmbeddingTable] = {}
    forwards_total = 0
    if todo:
        executor = _resolve_executor(cfg.executor)
        log(f"embed: computing {', '.join(todo)} of {cfg.dataset} with {cfg.backbone} ({executor}, "
            f"{sum(len(plan.examples[s]) for s in todo)} examples)")
        t1 = time.time()
        run = stream_ray if executor == "ray" else stream_local
        outs = run(cfg, plan, [plan.examples[s] for s in todo], log)
        secs = time.time() - t1
        for s, (X, fw) in zip(todo, outs):
            ex = plan.examples[s]
            man = cache.write(hashes[s], keys[s], ex.ids, ex.labels, X, cfg.rows_per_file, overwrite=cfg.overwrite,
                              extra={"seconds": round(secs, 3), "forward_passes": fw, "executor": executor,
                               "label_names": list(ex.label_names)})
            forwards_total += fw
            entry = {"split": s, "k": None, "seed": None, "key_hash": hashes[s], "uri": cache.uri_of(hashes[s]),
                     "computed": True, "rows": man["rows"]}
            results[s] = _table(ex.ids, ex.labels, X, s, None, None, entry)
    for s in splits:
        if s in results:
            continue
        ids, labels, X = cache.read(hashes[s], found[s])
        entry = {"split": s, "k": None, "seed": None, "key_hash": hashes[s], "uri": cache.uri_of(hashes[s]),
                 "computed": False, "rows": len(ids)}
        results[s] = _table(ids, labels, X, s, None, None, entry)
    out = EmbeddingTable.concat([results[s] for s in splits])
    out.forward_passes = forwards_total
    return out


def _context_job(kwargs: dict, protocol: str, jobs: list[tuple]) -> list[tuple]:
    """Context prompts of one seed on one backbone: [(k, seed, Xc, Xq, forward passes, seconds)].

    A Ray task body (or called in-process): the backbone is loaded once per process.
    """
    bb = _local_embedder(kwargs).backbone
    out = []
    for k, seed, ctx_texts, words, queries in jobs:
        before, t = bb.forward_count, time.time()
        Xc, Xq = context_embeddings(bb, ctx_texts, words, queries, protocol, f" (k={k}, seed={seed})")
        out.append((k, seed, Xc, Xq, bb.forward_count - before, round(time.time() - t, 3)))
    return out


def _run_context_jobs(cfg: EmbedConfig, executor: str, kwargs: dict, groups: list[list[tuple]]):
    """Yield _context_job results; on Ray one task per seed (GPU: `gpus_per_actor`), in finish order."""
    if executor != "ray":
        for jobs in groups:
            yield from _context_job(kwargs, cfg.protocol, jobs)
        return
    import ray

    init_ray(None, None)
    task = ray.remote(_context_job).options(num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor,
                                            max_retries=cfg.max_task_retries)
    pending = [task.remote(kwargs, cfg.protocol, jobs) for jobs in groups]
    while pending:  # write each seed's entries as soon as its task ends: a dead driver loses only the rest
        done, pending = ray.wait(pending, num_returns=1)
        yield from ray.get(done[0])


def _embed_context(cfg: EmbedConfig, plan: _Plan, cache: _Cache, log: Callable) -> EmbeddingTable:
    from .datasets import context_sets

    train, test = plan.examples["train"], plan.examples["test"]
    splits = list(dict.fromkeys(cfg.splits))
    sets = {seed: context_sets(train.labels, cfg.ks, seed) for seed in cfg.seeds}  # DatasetError before work
    keys, hashes, found = {}, {}, {}
    for seed in cfg.seeds:
        for k in cfg.ks:
            keys[seed, k] = {s: _key_for(cfg, plan, s, k, seed) for s in ("train", "test")}
            hashes[seed, k] = {s: key_hash(keys[seed, k][s]) for s in ("train", "test")}
            found[seed, k] = {s: (None if cfg.overwrite else cache.complete(hashes[seed, k][s], keys[seed, k][s]))
                              for s in splits}
    todo = [(seed, k) for seed in cfg.seeds for k in cfg.ks if any(v is None for v in found[seed, k].values())]
    got: dict[tuple, dict[str, EmbeddingTable]] = {}
    forwards_total = 0
    if todo:
        ctxs = {(seed, k): train.subset(sets[seed][k]) for seed, k in todo}
        by_seed: dict[int, list[tuple]] = {}
        for (seed, k), ctx in ctxs.items():
            by_seed.setdefault(seed, []).append((k, seed, list(ctx.texts), [train.label_names[int(y)] for y in ctx.labels],
                                                 list(test.texts)))
        executor = _resolve_executor(cfg.executor)
        log(f"embed: computing {cfg.protocol} prompts of {cfg.dataset} with {cfg.backbone} for {len(todo)} (k, seed) "
            f"({executor}, {len(by_seed)} task(s))")
        kw = _embedder_kwargs(cfg, plan)
        kw["fail_once"] = None
        for k, seed, Xc, Xq, fw, secs in _run_context_jobs(cfg, executor, kw, list(by_seed.values())):
            forwards_total += fw
            ctx = ctxs[seed, k]
            extra = {"seconds": secs, "forward_passes": fw, "executor": executor, "label_names": list(train.label_names)}
            got[seed, k] = {}
            for s, ex, X in (("train", ctx, Xc), ("test", test, Xq)):  # both: queries need the context anyway
                h = hashes[seed, k][s]
                man = cache.write(h, keys[seed, k][s], ex.ids, ex.labels, X, cfg.rows_per_file, extra,
                                  overwrite=cfg.overwrite)
                got[seed, k][s] = _table(ex.ids, ex.labels, X, s, k, seed,
                                         {"split": s, "k": k, "seed": seed, "key_hash": h, "uri": cache.uri_of(h),
                                          "computed": True, "rows": man["rows"]})
    parts: list[EmbeddingTable] = []
    for seed in cfg.seeds:
        for k in cfg.ks:
            for s in splits:
                if (seed, k) in got:
                    parts.append(got[seed, k][s])
                    continue
                h = hashes[seed, k][s]
                ids, labels, X = cache.read(h, found[seed, k][s])
                parts.append(_table(ids, labels, X, s, k, seed, {"split": s, "k": k, "seed": seed, "key_hash": h,
                                                                 "uri": cache.uri_of(h), "computed": False,
                                                                 "rows": len(ids)}))
    out = EmbeddingTable.concat(parts)
    out.forward_passes = forwards_total
    return out


def get_embeddings(dataset: str, split: str, backbone: str, protocol: str = "stream", *, k: int | None = None,
                   seed: int | None = None, layer: int = -1, pooling: str = "mean",
                   dataset_options: dict | None = None, cache_uri: str | None = None, executor: str = "auto",
                   dtype: str = "auto", log: Callable[[str], None] = lambda _m: None,
                   **config: Any) -> EmbeddingTable:
    """Library entry for the grid: (ids, labels, float32 X) of one split, computing only what is missing.

    stream: `split` in train | test | all. vanilla/loo: `k` and `seed` required; split
    "train" gives the k context examples in prompt order, "test" the queries. Extra
    keyword arguments are EmbedConfig fields (actors, batch_size, limit, ...; `splits`, `ks`,
    `seeds` widen what is computed, e.g. every (k, seed) of a grid at once).
    """
    if protocol in CONTEXT_PROTOCOLS and (k is None or seed is None):
        raise EmbedError(f"protocol={protocol}: pass k= and seed=")
    config.setdefault("splits", [split])
    config.setdefault("ks", [k] if k is not None else [18])
    config.setdefault("seeds", [seed] if seed is not None else [0])
    cfg = EmbedConfig(dataset=dataset, dataset_options=dict(dataset_options or {}), backbone=backbone, layer=layer,
                      pooling=pooling, protocol=protocol, cache_uri=cache_uri or "", executor=executor, dtype=dtype,
                      **config)
    return embed(cfg, log=log)


# ----------------------------------------------------------------------------- CLI


def _defaults_epilog() -> str:
    return defaults_epilog(EmbedConfig(), FIELD_HELP, [
        "  tart embed --config configs/embed/default.yaml",
        "  tart embed dataset=sms_spam backbone=minilm-l6 actors=2 cpus_per_actor=0.5 batch_size=64",
        "  tart embed backbone=smollm2-135m protocol=loo ks=[18,32] seeds=[0,1,2] dataset_options.test_size=200",
        "  tart embed backbone=smollm2-135m gpus_per_actor=1 dtype=bfloat16 actors=4 --address auto",
        "A second run with the same key computes nothing; partial entries are recomputed.",
    ])


def build_parser() -> argparse.ArgumentParser:
    return stage_parser(
        "tart embed",
        "Embed a dataset with a frozen backbone (Ray Data actor pool, model loaded once per actor) "
        "into a content-keyed Parquet cache; protocols stream | vanilla | loo.",
        _defaults_epilog(),
        "configs/embed/default.yaml",
        "backbone=smollm2-135m",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(EmbedConfig, args.config, args.overrides)
        open_cache(cfg)  # an unusable cache fails before Ray starts (embed() probes it again: cheap)
        if cfg.executor == "ray" and cfg.protocol == "stream":
            init_ray(args.address, args.num_cpus)
        table = embed(cfg, log=lambda m: print(m, file=sys.stderr))
    except (ValueError, OSError, EmbedError) as e:  # ConfigError, DatasetError, BackboneError, StorageError
        print(f"tart embed: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"rows": len(table), "dim": int(table.X.shape[1]) if table.X.ndim == 2 else 0,
                      "computed": table.computed, "cached": len(table.entries) - table.computed,
                      "forward_passes": table.forward_passes, "entries": table.entries}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
