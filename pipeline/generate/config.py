"""What `tart generate` is asked to do: `GenerateConfig`, its validation, its `--help` text, its errors.

`data_config(cfg)` is the part of the config that decides the shard bytes (everything but
`RUNTIME_FIELDS`); it is what the shards' metadata and the manifest's digest record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import ConfigError, to_dict
from ..synthetic import TaskSpec, task_record

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
        if self.task.family != "gaussian":
            raise ConfigError(f"task.family={self.task.family!r}: shards hold the gaussian family only for now; "
                              "train the embedding family with data=online")
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


def config_record(cfg: GenerateConfig) -> dict:
    """The whole config as manifests record it (the task as `task_record` writes it)."""
    return dict(to_dict(cfg), task=task_record(cfg.task))


def data_config(cfg: GenerateConfig) -> dict:
    """The config fields that determine the shard bytes."""
    return {k: v for k, v in config_record(cfg).items() if k not in RUNTIME_FIELDS}
