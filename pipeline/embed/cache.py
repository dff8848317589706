"""The embedding cache: entry keys, the Parquet layout and the commit protocol.

Layout under `cache_uri` (any fsspec URI; default $TART_EMBED_CACHE or
./tart_cache/embeddings)::

    <cache_uri>/<key_hash>/part-00000-<attempt>.parquet   id string, label int8, position int32,
    <cache_uri>/<key_hash>/part-00001-<attempt>.parquet   embedding fixed_size_list<float32>[dim]
    <cache_uri>/<key_hash>/_manifest.json

`key_hash` = sha256 (20 hex) of the entry key: backbone name, backbone revision,
dataset digest (spec digest + sha256 of the split's ids, labels and inputs), split,
protocol, layer, pooling, dtype, max_length (+ k, seed, prompt template for vanilla/
loo). The manifest records the key, revision, pooling, layer, dataset digest, rows,
dim, files (name, rows, bytes, sha256), created time, seconds and backbone forward
passes spent.

Commit protocol (any number of concurrent writers of one entry, e.g. two grids on one
cache): each write attempt (named <host>-<pid>-<random>) writes its own part files through
temp-then-rename, then replaces the manifest (complete=true, naming its parts) atomically:
that is the commit, and the only file two attempts share. An attempt that finds another's
complete manifest for the same key keeps it and removes its own parts. Files no committed
manifest names are removed only when their attempt is provably over (a dead process of this
host, or older than STALE_ATTEMPT_S, six hours). A reader uses an entry only if its manifest
says complete=true for the same key and every file matches its recorded size and row count;
anything else (files without a manifest, complete=false, missing/truncated part) is
recomputed from scratch. Entries written before attempt names (part-00000.parquet) read as
before: the manifest names the files. Files are written by the driver with rows in the
dataset's order, so the bytes do not depend on Ray's scheduling (embeddings are small next
to the model work: 4,862 x 384 floats = 7.5 MB).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np

from .. import storage
from ..modality import adapter
from .config import CONTEXT_PROTOCOLS, EmbedConfig, EmbedError, default_cache_uri

FORMAT = "tart-embeddings"
FORMAT_VERSION = 1
MANIFEST = "_manifest.json"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dataset_digest(ex: Any) -> str:
    """Spec digest + sha256 over the split's ids, labels and inputs (content, not just options)."""
    h = hashlib.sha256()
    h.update(str(ex.metadata.get("spec_digest", "")).encode())
    h.update(json.dumps(list(ex.label_names)).encode())
    for i, y in zip(ex.ids, ex.labels.tolist()):
        h.update(f"{i}\x00{y}\x00".encode())
    adapter(ex.modality).digest_into(h, ex.inputs)
    return h.hexdigest()[:20]


def entry_key(*, backbone: str, revision: str, dataset_digest: str, split: str, protocol: str, layer: int,
              pooling: str, dtype: str, max_length: int | None, k: int | None = None,
              seed: int | None = None) -> dict:
    key = {"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": backbone, "revision": revision,
           "dataset_digest": dataset_digest, "split": split, "protocol": protocol, "layer": int(layer),
           "pooling": pooling, "dtype": dtype, "max_length": max_length}
    if protocol in CONTEXT_PROTOCOLS:
        from ..prompts import TEMPLATE_VERSION

        key.update({"k": int(k), "seed": int(seed), "template": TEMPLATE_VERSION})
    return key


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("label", pa.int8(), nullable=False),
                      pa.field("position", pa.int32(), nullable=False),
                      pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)])


def _part_bytes(ids: Sequence[str], labels: np.ndarray, X: np.ndarray, s: int, e: int, dim: int) -> bytes:
    """Rows s..e of an entry as one zstd Parquet file (id, label, position, embedding)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(X[s:e], dtype=np.float32).reshape(-1), type=pa.float32()), dim)
    table = pa.Table.from_arrays(
        [pa.array(list(ids[s:e]), pa.string()), pa.array(np.asarray(labels[s:e], dtype=np.int8)),
         pa.array(np.arange(s, e, dtype=np.int32)), emb], schema=_schema(dim))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def part_name(i: int, attempt: str) -> str:
    """Part file i of one write attempt: every attempt has its own names (see `EmbeddingCache.write`)."""
    return f"part-{i:05d}-{attempt}.parquet"


STALE_ATTEMPT_S = 6 * 3600  # files of an attempt this old are leftovers, whoever wrote them


def host_tag() -> str:
    """This host, as attempt names carry it (sha256 of the hostname, 6 hex)."""
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _new_attempt() -> str:
    """<host tag>-<pid>-<random>: names one write attempt, so a later writer can tell whether it is dead."""
    import uuid

    return f"{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _attempt_is_dead(name: str) -> bool:
    """True only if the file `name` belongs to an attempt of a process on this host that has exited."""
    parts = name.split("-")
    # part-00000-<host>-<pid>-<rand>.parquet or _tmp-<uuid>-part-00000-<host>-<pid>-<rand>.parquet
    if len(parts) < 4 or not parts[-2].isdigit() or parts[-3] != host_tag():
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


class EmbeddingCache:
    """One cache root; entries are `<root>/<key_hash>/` (layout and commit protocol: module docstring)."""

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
        path = self.path(h)
        self.fs.makedirs(path, exist_ok=True)
        attempt = _new_attempt()
        man = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": key, "key_hash": h, "complete": False,
               "backbone": key["backbone"], "revision": key["revision"], "pooling": key["pooling"],
               "layer": key["layer"], "dataset_digest": key["dataset_digest"], "split": key["split"],
               "protocol": key["protocol"], "k": key.get("k"), "seed": key.get("seed"), "rows": len(ids),
               "dim": int(X.shape[1]) if X.ndim == 2 else 0, "created": _now(), "files": [],
               "attempt": attempt, **extra}
        n = len(ids)
        for f in range(max(1, -(-n // rows_per_file))):
            s, e = f * rows_per_file, min(n, (f + 1) * rows_per_file)
            data = _part_bytes(ids, labels, X, s, e, man["dim"])
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


def open_cache(cfg: EmbedConfig) -> EmbeddingCache:
    """The cache of `cfg`, probed with a write (StorageError: missing driver, credentials, read-only)."""
    cache = EmbeddingCache(cfg.cache_uri or default_cache_uri(), cfg.storage_options)
    storage.check_writable(cache.fs, cache.base, cache.uri)
    return cache
