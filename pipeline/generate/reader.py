"""Reading shards back: only from a complete manifest, every file checked before it is used.

`read_episodes(uri) -> (Episodes, TaskSpec)` and `iter_shards(uri)` validate each shard
(size, sha256, schema, row count, format metadata); `read_manifest`, `shard_records` and
`check_shard_file` are the same checks for a caller that wants them without reading
(`tart train` verifies its data on the driver with them). A corrupt, truncated or foreign
file raises `ShardError` naming the file and what was expected.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..synthetic import Episodes, TaskSpec, task_from_record
from .config import ShardError
from .layout import FORMAT, MANIFEST, episode_schema
from .manifest import load_manifest


def read_manifest(uri: str, storage_options: dict | None = None) -> dict:
    """The complete manifest at `uri`; ShardError if missing, foreign or incomplete."""
    fs, base = storage.resolve(uri, storage_options)
    man = load_manifest(fs, base, uri)
    if man is None:
        raise ShardError(f"no {MANIFEST} at {uri}: not an output of `tart generate` (or it never started)")
    if not man.get("complete"):
        raise ShardError(
            f"{uri}/{MANIFEST} says generation is incomplete ({len(man.get('shards', []))}/"
            f"{man.get('num_shards')} shards); re-run `tart generate` with the same config to finish it"
        )
    return man


def shard_records(man: dict, uri: str) -> list[dict]:
    """The manifest's shard records in shard order; ShardError unless they cover 0..S-1."""
    recs = sorted(man.get("shards", []), key=lambda r: r["index"])
    if [r["index"] for r in recs] != list(range(man["num_shards"])):
        raise ShardError(f"{uri}/{MANIFEST}: shard list does not cover 0..{man['num_shards'] - 1}")
    return recs


def check_shard_file(fs, base: str, uri: str, rec: dict, verify: bool, data: bytes | None = None) -> bytes | None:
    """Check one shard file against its manifest record: present, same size, and (verify) same sha256.

    Reads the file only when it must (verify, or `data` given); returns the bytes it read.
    ShardError names the file and what differs.
    """
    where = f"{uri}/{rec['name']}"
    path = storage.join(base, rec["name"])
    try:
        if data is None and verify:
            data = storage.read_bytes(fs, path)
        size = len(data) if data is not None else fs.size(path)
    except FileNotFoundError:
        raise ShardError(f"{where}: missing (listed in the manifest with {rec['rows']} rows)") from None
    if size != rec["bytes"]:
        raise ShardError(f"{where}: {size} bytes, the manifest expects {rec['bytes']} (truncated or replaced)")
    if verify and storage.sha256_bytes(data) != rec["sha256"]:
        raise ShardError(f"{where}: sha256 differs from the manifest's {rec['sha256'][:16]}... (corrupt or replaced)")
    return data


def _read_shard(fs, base: str, uri: str, rec: dict, man: dict, verify: bool) -> pa.Table:
    where = f"{uri}/{rec['name']}"
    try:
        data = storage.read_bytes(fs, storage.join(base, rec["name"]))
    except FileNotFoundError:
        raise ShardError(f"{where}: missing (listed in the manifest with {rec['rows']} rows)") from None
    check_shard_file(fs, base, uri, rec, verify, data)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise ShardError(f"{where}: not a readable Parquet file ({e})") from None
    task = man["task"]
    expected = episode_schema(task["d"], task["points"])
    if not table.schema.remove_metadata().equals(expected):
        raise ShardError(
            f"{where}: foreign schema; expected [{expected.to_string(show_schema_metadata=False)}], "
            f"found [{table.schema.to_string(show_schema_metadata=False)}]".replace("\n", "; ")
        )
    meta = table.schema.metadata or {}
    if meta.get(b"tart.format") != FORMAT.encode() or meta.get(b"tart.digest") != man["digest"].encode():
        raise ShardError(
            f"{where}: metadata says format={meta.get(b'tart.format')!r} digest={meta.get(b'tart.digest')!r}, "
            f"expected {FORMAT!r} digest {man['digest']!r} (a shard of another generation)"
        )
    if table.num_rows != rec["rows"]:
        raise ShardError(f"{where}: {table.num_rows} rows, the manifest expects {rec['rows']}")
    return table


def _table_to_episodes(table: pa.Table, spec: TaskSpec) -> Episodes:
    n, d, p = table.num_rows, spec.d, spec.points

    def flat(col: str, dtype) -> np.ndarray:
        arr = table.column(col).combine_chunks()
        return arr.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=True)

    return Episodes(
        w=flat("w", np.float32).reshape(n, d),
        x=flat("x", np.float32).reshape(n, p, d),
        u=flat("u", np.float32).reshape(n, p),
        scale=table.column("scale").to_numpy().astype(np.float32, copy=True),
    )


def iter_shards(uri: str, verify: bool = True, storage_options: dict | None = None) -> Iterator[tuple[dict, Episodes]]:
    """Yield (manifest shard record, Episodes) per shard, in shard order, validating each."""
    man = read_manifest(uri, storage_options)
    fs, base = storage.resolve(uri, storage_options)
    spec = task_from_record(man["task"])
    for rec in shard_records(man, uri):
        yield rec, _table_to_episodes(_read_shard(fs, base, uri, rec, man, verify), spec)


def read_episodes(uri: str, verify: bool = True, storage_options: dict | None = None) -> tuple[Episodes, TaskSpec]:
    """All episodes at `uri` (in episode_id order) and their TaskSpec. Arrays are writable copies."""
    man = read_manifest(uri, storage_options)
    parts = [ep for _, ep in iter_shards(uri, verify, storage_options)]
    cat = lambda a: np.concatenate([getattr(e, a) for e in parts])  # noqa: E731
    return Episodes(w=cat("w"), x=cat("x"), u=cat("u"), scale=cat("scale")), task_from_record(man["task"])
