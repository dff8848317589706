"""Stage 2 (`tart train`): train the reasoner on synthetic episodes.

One training loop (`train_loop`) serves two launchers:
- `train(cfg)`: Ray Train TorchTrainer (DDP over CPU workers with gloo or GPUs with
  nccl), checkpoints reported through `ray.train.report`, resume via
  `ray.train.get_checkpoint()`, retries via FailureConfig;
- `train_local(cfg, out_dir)`: the same loop in one process (used on a lone GPU
  box and in benchmarks as the plain-PyTorch baseline).

Data order is a pure function of (seed, step, rank), so a resumed run sees exactly
the batches an uninterrupted run would have seen.

`train(cfg)` checks everything it can on the driver before a worker starts (config,
shard manifest + every shard's size/sha256, an existing checkpoint's architecture,
the MLflow store), then fits. Every checkpoint carries `metrics.jsonl`, the history of
all metrics reported up to its step, so the driver (the only MLflow writer: sqlite
locks under concurrent writers) logs the full loss / synthetic_acc curves after the
fit, without duplicates from retried segments. Each metric record has `segment_start`,
the step its attempt resumed from. Layout of a run::

    <storage>/<name>/checkpoint_00001000/  train_state.pt, model.safetensors, config.json, metrics.jsonl
    <storage>/<name>/final/                model.safetensors, config.json (load_reasoner(path)), metrics.jsonl,
                                           final_metrics.json
    <storage>/<name>/fault_injected        marker of the one injected failure (tests)

What each checkpoint file holds is specified in `checkpoint`.

One module per idea:

    config.py      TrainConfig (every `tart train` key) + Curriculum, FIELD_HELP, validation, TrainError
    data.py        the data and its order: OnlineEpisodes, ShardEpisodes; check_data (driver-side shard checks)
    checkpoint.py  one checkpoint directory: write it, restore the train state (weights_only) and RNGs
    loop.py        train_loop and LoopContext (what a launcher provides), lr schedule, synthetic accuracy
    local.py       train_local: the loop in this process, checkpoints in a local directory
    runs.py        a run in storage: paths, latest checkpoint (Ray Train Result), resume check, final/ export
    card.py        the model card of a trained reasoner (markdown from the config and final metrics)
    mlflow_run.py  the MLflow run: params, curves from the checkpoint's history, artifact, MLflow Model, registry
    launch.py      train(cfg): TorchTrainer, its worker entry point, failure and checkpoint config
    cli.py         `tart train` / `python -m jobs.train`
"""

from .checkpoint import (HISTORY_FILE, TRAIN_STATE_FILE, load_train_state, restore_checkpoint, rng_state,
                         set_rng_state, write_checkpoint)
from .cli import build_parser, main
from .config import FIELD_HELP, Curriculum, TrainConfig, TrainError
from .data import OnlineEpisodes, ShardEpisodes, check_data, episode_source
from .launch import build_trainer, train, train_worker
from .local import train_local
from .loop import LoopContext, lr_at, synthetic_accuracy, train_loop
from .mlflow_run import log_outputs, mlflow_run
from .runs import (EXPORTED_FILES, FAULT_MARKER, FINAL_DIR, MIN_CHECKPOINT_FILES, check_resume, export_final,
                   latest_checkpoint, read_checkpoint_file, read_history, run_path, storage_root)

__all__ = [
    "EXPORTED_FILES", "FAULT_MARKER", "FIELD_HELP", "FINAL_DIR", "HISTORY_FILE", "MIN_CHECKPOINT_FILES",
    "TRAIN_STATE_FILE", "Curriculum", "LoopContext", "OnlineEpisodes", "ShardEpisodes", "TrainConfig", "TrainError",
    "build_parser", "build_trainer", "check_data", "check_resume", "episode_source", "export_final",
    "latest_checkpoint", "load_train_state", "log_outputs", "lr_at", "main", "mlflow_run", "read_checkpoint_file",
    "read_history", "restore_checkpoint", "rng_state", "run_path", "set_rng_state", "storage_root",
    "synthetic_accuracy", "train", "train_local", "train_loop", "train_worker", "write_checkpoint",
]
