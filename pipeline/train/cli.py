"""`tart train` / `python -m jobs.train`: the command line of the train stage.

Progress lines come from the library's loggers (the console set up by `pipeline.cli`
shows them) and from the workers' prints; the result is printed at the end (checkpoint,
final reasoner, one JSON line). Exit 2: bad config, data, storage or MLflow, before any
work; exit 1: training failed after its retries.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import tracking
from ..config import defaults_epilog, load_config, stage_parser
from .config import FIELD_HELP, TrainConfig, TrainError
from .launch import train


def _defaults_epilog() -> str:
    return defaults_epilog(TrainConfig(), FIELD_HELP, [
        "  tart train --config configs/train/tiny-cpu.yaml",
        "  tart train --config configs/train/default.yaml --address auto workers=4 register_as=tart-reasoner",
        "  tart train size=tiny steps=200 data=tart_runs/episodes/small name=try1",
        "Re-running with the same name and storage resumes from the latest checkpoint; the",
        "final reasoner is exported to <storage>/<name>/final/ (load_reasoner(path) reads it).",
    ])


def build_parser() -> argparse.ArgumentParser:
    return stage_parser(
        "tart train",
        "Train the TART reasoner on synthetic logistic-regression episodes with Ray Train "
        "(DDP on CPU workers or GPUs), with checkpoints, resume, retries and MLflow tracking.",
        _defaults_epilog(),
        "configs/train/tiny-cpu.yaml",
        "steps=200 size=tiny",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        report = train(cfg, address=args.address, num_cpus=args.num_cpus)
    except (ValueError, OSError, tracking.TrackingError) as e:  # ConfigError, ShardError, StorageError, ...
        print(f"tart train: error: {e}", file=sys.stderr)
        return 2
    except TrainError as e:
        print(f"tart train: error: {e}", file=sys.stderr)
        return 1
    print(f"checkpoint: {report['checkpoint']}")
    print(f"final reasoner: {report['final_dir']}  (pipeline.reasoner.load_reasoner(path) loads it)")
    shown = {k: v for k, v in report["metrics"].items() if k not in ("time",)}
    print(json.dumps({"final_metrics": shown, "resumed_from": report["resumed_from"],
                      "mlflow_run_id": report["mlflow_run_id"], "model_version": report["model_version"]}))
    return 0
