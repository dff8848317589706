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
its short sha256, `tart.shard` = "i/S". The manifest's fields are listed in `manifest`.

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

One module per idea:

    config.py    GenerateConfig (every `tart generate` key), FIELD_HELP, validation, data_config, errors
    layout.py    the format: shard names, the episode split, the Parquet schema + metadata, shard_bytes
    manifest.py  _manifest.json: its fields, building and saving it, loading and checking its format
    tasks.py     write_shard (one shard; a Ray task body) and run_shards (sequentially or on Ray)
    writer.py    generate(cfg): conflicts, reuse of finished shards, the manifest as shards land
    reader.py    read_manifest, shard_records, check_shard_file, iter_shards, read_episodes
    cli.py       `tart generate` / `python -m jobs.generate`
"""

from .cli import build_parser, main
from .config import (COMPRESSIONS, EXECUTORS, FIELD_HELP, RUNTIME_FIELDS, GenerateConfig, GenerateError, ShardError,
                     data_config)
from .layout import (FORMAT, FORMAT_VERSION, MANIFEST, episode_schema, episodes_table, shard_bounds, shard_bytes,
                     shard_meta, shard_name)
from .manifest import code_version, load_manifest
from .reader import check_shard_file, iter_shards, read_episodes, read_manifest, shard_records
from .tasks import InjectedFailure, run_shards, write_shard
from .writer import generate

__all__ = [
    "COMPRESSIONS", "EXECUTORS", "FIELD_HELP", "FORMAT", "FORMAT_VERSION", "MANIFEST", "RUNTIME_FIELDS",
    "GenerateConfig", "GenerateError", "InjectedFailure", "ShardError", "build_parser", "check_shard_file",
    "code_version", "data_config", "episode_schema", "episodes_table", "generate", "iter_shards", "load_manifest",
    "main", "read_episodes", "read_manifest", "run_shards", "shard_bounds", "shard_bytes", "shard_meta", "shard_name",
    "shard_records", "write_shard",
]
