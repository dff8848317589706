"""Stage 1 (`tart generate`): synthetic logistic-regression episodes as Parquet shards.

Layout of an output URI (local path, s3://, gs://, memory://, any fsspec URI)::

    <output>/part-00000-of-00008.parquet
    <output>/part-00001-of-00008.parquet
    ...
    <output>/_manifest.json

Parquet schema (format version 1; one row per episode; all columns non-null)::

    episode_id  int64                               global index 0..N-1
    w           fixed_size_list<float32>[d]         task weights (already scaled)
    x           fixed_size_list<float32>[points*d]  points, row-major (points, d)
    u           fixed_size_list<float32>[points]    uniform noise: y = u < sigmoid(x.w)
    y           fixed_size_list<int8>[points]       full-dimension labels (derived from u)
    scale       float32                             the weight multiplier of this episode

Schema metadata: `tart.format` = "tart-episodes", `tart.format_version` = "1",
`tart.config` = JSON of the *data-defining* config (seed, episodes, shards, task,
compression, compression_level, row_group_size; not the output URI or runtime
knobs, so identical data written to two places is byte-identical), `tart.digest` =
its short sha256, `tart.shard` = "i/S".

Determinism: shard i holds episodes [start_i, start_i + n_i) where n_i =
N // S (+1 for the first N % S shards), drawn by `sample_episodes_np(task, n_i,
np.random.default_rng([seed, i]))`. Shard bytes therefore depend only on the data
config (and the numpy/pyarrow versions recorded in the manifest), never on how many
Ray workers ran or in which order. Changing S changes the data.

Idempotence and atomicity: every shard is serialised in memory, hashed (sha256), and
written under a `_tmp-...` name, then moved to its final name, so a half-written shard
is never visible under its final name. `_manifest.json` is rewritten atomically as
shards finish (`"complete": false`) and a last time with `"complete": true`. A re-run
skips shard i only if its final file exists and matches the manifest's row count,
size and (with verify=true) sha256; anything else is regenerated, and leftover
`_tmp-*` files are removed. A fully complete output is not touched at all (not even
the manifest). One writer per output URI at a time.

Ray: one task per shard (`cpus_per_task`, fractional by default). Tasks write their
shard straight to the output URI. For `memory://` (a per-process filesystem) the
tasks return the bytes and the driver writes them instead; `executor=local` runs
the same shard function sequentially in this process without Ray.

Reading: `read_episodes(uri) -> (Episodes, TaskSpec)` and `iter_shards(uri)` read the
shards listed in a complete manifest and validate each (size, sha256, schema, row
count, format metadata); a corrupt, truncated or foreign file raises `ShardError`
naming the file and what was expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .config import ConfigError, config_digest, defaults_epilog, load_config, stage_parser, to_dict
from .runtime import init_ray
from .synthetic import Episodes, TaskSpec, sample_episodes_np

FORMAT = "tart-episodes"
FORMAT_VERSION = 1
MANIFEST = "_manifest.json"
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "brotli", "none")
EXECUTORS = ("ray", "local")
# Fields of GenerateConfig that do not change a single byte of the shards.
RUNTIME_FIELDS = ("output", "overwrite", "executor", "cpus_per_task", "verify", "storage_options", "fail_at_shard")


class GenerateError(RuntimeError):
    """Generation could not complete (existing output conflicts, a shard task failed)."""


class ShardError(ValueError):
    """A shard or manifest is missing, corrupt, truncated or foreign; names the file."""


@dataclass
class GenerateConfig:
    output: str = "tart_runs/episodes/default"  # output URI: local dir, s3://, gs://, memory://
    seed: int = 0  # shard i draws from np.random.default_rng([seed, i])
    episodes: int = 32768  # N: total episodes
    shards: int = 32  # S: Parquet files; shard i gets N//S (+1 for i < N%S) episodes
    task: TaskSpec = field(default_factory=TaskSpec)
    compression: str = "zstd"  # zstd | snappy | gzip | lz4 | brotli | none
    compression_level: Optional[int] = None  # codec level; null = codec default
    row_group_size: int = 1024  # episodes per Parquet row group
    overwrite: bool = False  # replace an existing output written with a different config
    executor: str = "ray"  # ray (one task per shard) | local (sequential, this process)
    cpus_per_task: float = 0.5  # Ray num_cpus per shard task (fractional avoids starving others)
    verify: bool = True  # re-hash existing shards (sha256) before skipping them
    storage_options: dict[str, Any] = field(default_factory=dict)  # passed to fsspec (e.g. anon, endpoint_url)
    fail_at_shard: Optional[int] = None  # fault injection for tests: that shard's task dies mid-write

    def validate(self) -> None:
        if not self.output or not str(self.output).strip():
            raise ConfigError(f"output={self.output!r}: expected a non-empty URI")
        try:
            self.task.validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"task.{e}") from None
        if self.episodes < 1:
            raise ConfigError(f"episodes={self.episodes}: expected at least 1 episode")
        if self.shards < 1:
            raise ConfigError(f"shards={self.shards}: expected at least 1 shard")
        if self.shards > self.episodes:
            raise ConfigError(
                f"shards={self.shards} exceeds episodes={self.episodes}: every shard needs at least one episode"
            )
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression={self.compression!r}: expected one of {', '.join(COMPRESSIONS)}")
        if self.row_group_size < 1:
            raise ConfigError(f"row_group_size={self.row_group_size}: expected >= 1")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor={self.executor!r}: expected one of {', '.join(EXECUTORS)}")
        if not self.cpus_per_task > 0:
            raise ConfigError(f"cpus_per_task={self.cpus_per_task}: expected > 0")
        if self.fail_at_shard is not None and not 0 <= self.fail_at_shard < self.shards:
            raise ConfigError(f"fail_at_shard={self.fail_at_shard}: expected 0 <= i < shards={self.shards}")


FIELD_HELP = {
    "output": "output URI: local dir, s3://bucket/prefix, gs://..., memory://name",
    "seed": "shard i draws from np.random.default_rng([seed, i])",
    "episodes": "N, total episodes",
    "shards": "S, Parquet files (and Ray tasks); shard i gets N//S (+1 if i < N%S) episodes",
    "task.d": "dimension of x and w",
    "task.points": "(x, y) pairs per episode (>= 2)",
    "task.weight_multiplier": "w ~ N(0, I) * multiplier",
    "task.variable_multiplier": "per-episode multiplier drawn from {1..weight_multiplier}",
    "compression": "Parquet codec: " + " | ".join(COMPRESSIONS),
    "compression_level": "codec level (null = codec default)",
    "row_group_size": "episodes per Parquet row group",
    "overwrite": "replace an existing output that was written with a different config",
    "executor": "ray (one task per shard) | local (sequential in this process, no Ray)",
    "cpus_per_task": "Ray num_cpus per shard task (fractional: tasks share cores with other work)",
    "verify": "sha256 existing shards before skipping them on a re-run (false: size + row count only)",
    "storage_options": "mapping passed to fsspec (e.g. storage_options.anon=true)",
    "fail_at_shard": "fault injection for tests: that shard's task dies after writing its temp file",
}


# ---------------------------------------------------------------- layout and schema


def data_config(cfg: GenerateConfig) -> dict:
    """The config fields that determine the shard bytes."""
    return {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_FIELDS}


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


def _shard_meta(dcfg: dict, i: int, s: int) -> dict[str, str]:
    return {
        "tart.format": FORMAT,
        "tart.format_version": str(FORMAT_VERSION),
        "tart.config": json.dumps(dcfg, sort_keys=True),
        "tart.digest": config_digest(dcfg),
        "tart.shard": f"{i}/{s}",
    }


def shard_bytes(dcfg: dict, i: int) -> tuple[bytes, int]:
    """Serialise shard i of the data config `dcfg` -> (Parquet bytes, rows). Pure function."""
    spec = TaskSpec(**dcfg["task"])
    start, n = shard_bounds(dcfg["episodes"], dcfg["shards"], i)
    ep = sample_episodes_np(spec, n, np.random.default_rng([dcfg["seed"], i]))
    table = episodes_table(ep, start, spec, _shard_meta(dcfg, i, dcfg["shards"]))
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


# ---------------------------------------------------------------- writing one shard


class _InjectedFailure(RuntimeError):
    pass


def write_shard(dcfg: dict, i: int, uri: str | None, storage_options: dict | None = None,
                fail: bool = False, return_bytes: bool = False) -> dict:
    """Generate shard i and write it under `uri` (temp name, then move). Runs in a Ray task.

    With `return_bytes=True` nothing is written; the bytes come back in the result
    (used for memory://, whose filesystem is private to each process).
    """
    data, rows = shard_bytes(dcfg, i)
    name = shard_name(i, dcfg["shards"])
    rec = {"index": i, "name": name, "rows": rows, "episode_start": shard_bounds(dcfg["episodes"], dcfg["shards"], i)[0],
           "bytes": len(data), "sha256": storage.sha256_bytes(data)}
    if return_bytes:
        if fail:
            raise _InjectedFailure(f"injected failure while generating shard {i} ({name})")
        rec["data"] = data
        return rec
    fs, base = storage.resolve(uri, storage_options)
    if fail:  # simulate a crash after part of the shard reached storage
        fs.pipe_file(storage.join(base, f"{storage.TMP_PREFIX}crash-{name}"), data[: len(data) // 2])
        raise _InjectedFailure(f"injected failure while writing shard {i} ({name})")
    storage.atomic_write_bytes(fs, storage.join(base, name), data)
    return rec


# ---------------------------------------------------------------- manifest helpers


def code_version() -> dict:
    from importlib import metadata

    try:
        pkg = metadata.version("tart-pipeline")
    except metadata.PackageNotFoundError:
        pkg = "unknown"
    return {"tart-pipeline": pkg, "numpy": np.__version__, "pyarrow": pa.__version__,
            "python": sys.version.split()[0]}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _load_manifest(fs, base: str, uri: str) -> dict | None:
    path = storage.join(base, MANIFEST)
    if not fs.exists(path):
        return None
    try:
        man = storage.read_json(fs, path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ShardError(f"{uri}/{MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise ShardError(f"{uri}/{MANIFEST} is not a {FORMAT} manifest (format={man.get('format') if isinstance(man, dict) else None!r})")
    if man.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{uri}/{MANIFEST}: format_version={man.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    return man


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: existing {va!r} vs requested {vb!r}")
    return out


def _shard_ok(fs, base: str, rec: dict, verify: bool) -> bool:
    path = storage.join(base, rec["name"])
    try:
        if fs.size(path) != rec["bytes"]:
            return False
        if verify:
            return storage.sha256_bytes(storage.read_bytes(fs, path)) == rec["sha256"]
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows == rec["rows"]
    except (FileNotFoundError, OSError, pa.ArrowException):
        return False


# ---------------------------------------------------------------- the stage


def _ray_remote(cpus: float):
    import ray

    return ray.remote(num_cpus=cpus, max_retries=0)(write_shard)


def generate(cfg: GenerateConfig, log=print) -> dict:
    """Write (or complete) the shards of `cfg`; returns a report.

    Report keys: output, digest, written (shard names written now), skipped (already
    complete), seconds, episodes_written, manifest (the final manifest dict).
    Raises ConfigError / storage.StorageError / GenerateError before writing anything
    when the config or the output location is unusable.
    """
    t0 = time.time()
    cfg.validate()
    dcfg = data_config(cfg)
    digest = config_digest(dcfg)
    fs, base = storage.resolve(cfg.output, cfg.storage_options)
    memory = storage.is_memory(cfg.output)
    # 1. existing output: same data config, or refuse (unless overwrite) -- before any write
    try:
        exists = fs.isdir(base)
        old = _load_manifest(fs, base, cfg.output) if exists else None
    except ShardError as e:
        if not cfg.overwrite:
            raise GenerateError(f"{e}; refusing to write into it (set overwrite=true to replace)") from None
        old = None
    except Exception as e:  # noqa: BLE001 - unreachable store, missing credentials, ...
        raise storage.as_storage_error(cfg.output, e, f"output {cfg.output!r} is not reachable",
                                       not storage.is_local(fs)) from None
    if exists and old is None and not cfg.overwrite:
        foreign = [n for n in storage.list_names(fs, base)
                   if not (n.startswith(("part-", storage.TMP_PREFIX, storage.PROBE_PREFIX)) or n == MANIFEST)]
        if foreign:
            raise GenerateError(
                f"output {cfg.output!r} is a non-empty directory without a {MANIFEST} (holds e.g. "
                f"{', '.join(foreign[:3])}); refusing to write into it (set overwrite=true to write anyway)"
            )
    if old is not None and old.get("digest") != digest:
        if not cfg.overwrite:
            diffs = _diff(old.get("data_config", {}), dcfg)
            raise GenerateError(
                f"output {cfg.output!r} already holds episodes with a different config "
                f"(digest {old.get('digest')} vs requested {digest}: {'; '.join(diffs) or 'unknown difference'}); "
                "refusing to overwrite (set overwrite=true to replace it)"
            )
    # 2. probe writability before launching any task
    storage.check_writable(fs, base, cfg.output)

    names = [shard_name(i, cfg.shards) for i in range(cfg.shards)]
    if cfg.overwrite and exists and (old is None or old.get("digest") != digest):
        # retire the old output: manifest first (so it can never vouch for a mix), then its shards
        log(f"overwrite=true: replacing the output at {cfg.output} (old digest {old and old.get('digest')})")
        if fs.exists(storage.join(base, MANIFEST)):
            fs.rm_file(storage.join(base, MANIFEST))
        for name in storage.list_names(fs, base):
            if name.startswith("part-") and name.endswith(".parquet"):
                fs.rm_file(storage.join(base, name))
        old = None
    storage.clean_tmp(fs, base)

    done: dict[int, dict] = {}
    if old is not None:
        for rec in old.get("shards", []):
            if rec.get("name") in names and _shard_ok(fs, base, rec, cfg.verify):
                done[rec["index"]] = {k: rec[k] for k in ("index", "name", "rows", "episode_start", "bytes", "sha256")}
    skipped = [names[i] for i in sorted(done)]
    todo = [i for i in range(cfg.shards) if i not in done]
    if not todo and old is not None and old.get("complete"):
        log(f"all {cfg.shards} shards at {cfg.output} are complete (digest {digest}); nothing to do")
        return {"output": cfg.output, "digest": digest, "written": [], "skipped": skipped,
                "seconds": time.time() - t0, "episodes_written": 0, "manifest": old}

    created = old.get("created") if old else _now()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
        "config": to_dict(cfg), "data_config": dcfg, "digest": digest,
        "task": dataclasses.asdict(cfg.task), "episodes": cfg.episodes, "num_shards": cfg.shards,
        "schema": episode_schema(cfg.task.d, cfg.task.points).to_string(show_schema_metadata=False),
        "created": created, "code_version": code_version(), "shards": [],
    }

    def save(final: bool) -> None:
        manifest["shards"] = [done[i] for i in sorted(done)]
        manifest["complete"] = final
        manifest["updated"] = _now()
        storage.write_json_atomic(fs, storage.join(base, MANIFEST), manifest)

    save(False)  # marks the output as ours (and incomplete) before any shard appears
    task_uri = base if storage.is_local(fs) else cfg.output  # workers may have another cwd
    written, errors = [], []

    def record(rec: dict) -> None:
        if "data" in rec:  # memory://: the driver writes
            storage.atomic_write_bytes(fs, storage.join(base, rec["name"]), rec.pop("data"))
        done[rec["index"]] = rec
        written.append(rec["name"])

    last_save = time.time()
    if cfg.executor == "local":
        for i in todo:
            try:
                record(write_shard(dcfg, i, task_uri, cfg.storage_options, fail=i == cfg.fail_at_shard,
                                   return_bytes=memory))
            except Exception as e:  # noqa: BLE001 - keep the other shards' progress
                errors.append(f"shard {i}: {type(e).__name__}: {e}")
            if time.time() - last_save > 2.0:
                save(False)
                last_save = time.time()
    else:
        import ray  # only the Ray executor needs it

        init_ray()
        remote = _ray_remote(cfg.cpus_per_task)
        refs = {remote.remote(dcfg, i, task_uri, cfg.storage_options, i == cfg.fail_at_shard, memory): i
                for i in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    record(ray.get(ref))
                except Exception as e:  # noqa: BLE001 - a task failed; keep the others' progress
                    cause = getattr(e, "cause", None) or e  # RayTaskError wraps the task's exception
                    errors.append(f"shard {refs[ref]}: {type(cause).__name__}: {cause}")
            if time.time() - last_save > 2.0:
                save(False)
                last_save = time.time()

    if errors:
        save(False)
        raise GenerateError(
            f"{len(errors)} of {len(todo)} shard task(s) failed for {cfg.output}; "
            f"{len(done)}/{cfg.shards} shards complete, re-run to finish: " + "; ".join(errors)
        )
    missing = [names[i] for i in range(cfg.shards) if not fs.exists(storage.join(base, names[i]))]
    if missing:
        save(False)
        raise GenerateError(f"shards missing at {cfg.output} after writing: {', '.join(missing)}")
    storage.clean_tmp(fs, base)
    save(True)
    secs = time.time() - t0
    n_written = sum(done[i]["rows"] for i in todo)
    log(f"wrote {len(written)} shard(s) ({n_written} episodes), skipped {len(skipped)}, "
        f"to {cfg.output} in {secs:.2f}s (digest {digest})")
    return {"output": cfg.output, "digest": digest, "written": sorted(written), "skipped": skipped,
            "seconds": secs, "episodes_written": n_written, "manifest": manifest}


# ---------------------------------------------------------------- reading


def read_manifest(uri: str, storage_options: dict | None = None) -> dict:
    """The complete manifest at `uri`; ShardError if missing, foreign or incomplete."""
    fs, base = storage.resolve(uri, storage_options)
    man = _load_manifest(fs, base, uri)
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
    spec = TaskSpec(**man["task"])
    for rec in shard_records(man, uri):
        yield rec, _table_to_episodes(_read_shard(fs, base, uri, rec, man, verify), spec)


def read_episodes(uri: str, verify: bool = True, storage_options: dict | None = None) -> tuple[Episodes, TaskSpec]:
    """All episodes at `uri` (in episode_id order) and their TaskSpec. Arrays are writable copies."""
    man = read_manifest(uri, storage_options)
    parts = [ep for _, ep in iter_shards(uri, verify, storage_options)]
    cat = lambda a: np.concatenate([getattr(e, a) for e in parts])  # noqa: E731
    return Episodes(w=cat("w"), x=cat("x"), u=cat("u"), scale=cat("scale")), TaskSpec(**man["task"])


# ---------------------------------------------------------------- CLI


def _defaults_epilog() -> str:
    return defaults_epilog(GenerateConfig(), FIELD_HELP, [
        "  tart generate --config configs/generate/small.yaml output=/data/ep seed=1",
        "  tart generate episodes=100000 shards=100 output=s3://bucket/tart/ep --address auto",
        "Re-running with the same config skips complete shards; a different config at an",
        "existing output is refused unless overwrite=true.",
    ])


def build_parser() -> argparse.ArgumentParser:
    return stage_parser(
        "tart generate",
        "Write N synthetic logistic-regression episodes as S Parquet shards (one Ray task per "
        "shard) plus _manifest.json, to any fsspec URI. Deterministic, resumable, atomic per shard.",
        _defaults_epilog(),
        "configs/generate/default.yaml",
        "episodes=4096 task.points=66",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(GenerateConfig, args.config, args.overrides)
        if cfg.executor == "ray":
            init_ray(args.address, args.num_cpus)
        report = generate(cfg)
    except (ValueError, OSError, GenerateError) as e:  # ConfigError, ShardError, StorageError included
        print(f"tart generate: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("output", "digest", "seconds", "episodes_written")}
                     | {"written": len(report["written"]), "skipped": len(report["skipped"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
