"""`tart embed` / `python -m jobs.embed`: the command line of the embed stage.

Progress lines come from the library's loggers (the console set up by `pipeline.cli`
shows them); the result is one JSON line on stdout; errors are one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..config import defaults_epilog, load_config, stage_parser
from ..runtime import init_ray
from .cache import open_cache
from .config import FIELD_HELP, EmbedConfig, EmbedError
from .driver import embed


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
        table = embed(cfg)
    except (ValueError, OSError, EmbedError) as e:  # ConfigError, DatasetError, BackboneError, StorageError
        print(f"tart embed: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"rows": len(table), "dim": int(table.X.shape[1]) if table.X.ndim == 2 else 0,
                      "computed": table.computed, "cached": len(table.entries) - table.computed,
                      "forward_passes": table.forward_passes, "entries": table.entries}, default=str))
    return 0
