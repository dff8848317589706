"""The shard format: file names, the episode split, the Parquet schema and metadata, shard bytes.

Everything here is a pure function of the data config (`config.data_config`): the
format itself is specified in the package docstring (`pipeline.generate`).
`shard_bytes(dcfg, i)` is the one place shard i's bytes are made.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import config_digest
from ..synthetic import Episodes, TaskSpec, sample_episodes_np, task_from_record

FORMAT = "tart-episodes"
FORMAT_VERSION = 1
MANIFEST = "_manifest.json"


def shard_name(i: int, s: int) -> str:
    return f"part-{i:05d}-of-{s:05d}.parquet"


def shard_bounds(n: int, s: int, i: int) -> tuple[int, int]:
    """(first episode id, episode count) of shard i when n episodes go into s shards."""
    base, extra = divmod(n, s)
    return i * base + min(i, extra), base + (1 if i < extra else 0)


def episode_schema(d: int, points: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("episode_id", pa.int64(), nullable=False),
            pa.field("w", pa.list_(pa.float32(), d), nullable=False),
            pa.field("x", pa.list_(pa.float32(), points * d), nullable=False),
            pa.field("u", pa.list_(pa.float32(), points), nullable=False),
            pa.field("y", pa.list_(pa.int8(), points), nullable=False),
            pa.field("scale", pa.float32(), nullable=False),
        ]
    )


def _fixed(values: np.ndarray, size: int, tp: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1), type=tp), size)


def episodes_table(ep: Episodes, start: int, spec: TaskSpec, meta: dict[str, str]) -> pa.Table:
    n, d, p = len(ep.w), spec.d, spec.points
    schema = episode_schema(d, p).with_metadata({k.encode(): v.encode() for k, v in meta.items()})
    arrays = [
        pa.array(np.arange(start, start + n, dtype=np.int64)),
        _fixed(ep.w.astype(np.float32, copy=False), d, pa.float32()),
        _fixed(ep.x.astype(np.float32, copy=False), p * d, pa.float32()),
        _fixed(ep.u.astype(np.float32, copy=False), p, pa.float32()),
        _fixed(ep.y, p, pa.int8()),
        pa.array(ep.scale.astype(np.float32, copy=False)),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def shard_meta(dcfg: dict, i: int, s: int) -> dict[str, str]:
    """The Parquet schema metadata of shard i of s (`tart.*` keys)."""
    return {
        "tart.format": FORMAT,
        "tart.format_version": str(FORMAT_VERSION),
        "tart.config": json.dumps(dcfg, sort_keys=True),
        "tart.digest": config_digest(dcfg),
        "tart.shard": f"{i}/{s}",
    }


def shard_bytes(dcfg: dict, i: int) -> tuple[bytes, int]:
    """Serialise shard i of the data config `dcfg` -> (Parquet bytes, rows). Pure function."""
    spec = task_from_record(dcfg["task"])
    start, n = shard_bounds(dcfg["episodes"], dcfg["shards"], i)
    ep = sample_episodes_np(spec, n, np.random.default_rng([dcfg["seed"], i]))
    table = episodes_table(ep, start, spec, shard_meta(dcfg, i, dcfg["shards"]))
    sink = pa.BufferOutputStream()
    comp = dcfg["compression"]
    pq.write_table(
        table,
        sink,
        compression=None if comp == "none" else comp,
        compression_level=dcfg["compression_level"],
        row_group_size=dcfg["row_group_size"],
        use_dictionary=False,
        write_statistics=["episode_id"],
    )
    return sink.getvalue().to_pybytes(), n
