"""`tart generate` / `python -m jobs.generate`: the command line of the generate stage.

Progress lines come from the library's loggers (the console set up by `pipeline.cli`
shows them); the result is one JSON line on stdout; errors are one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..config import defaults_epilog, load_config, stage_parser
from ..runtime import init_ray
from .config import FIELD_HELP, GenerateConfig, GenerateError
from .writer import generate


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
