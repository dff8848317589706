"""`train(cfg)`: the training loop on Ray Train (a `TorchTrainer`), driven from here.

Ray Train's touch points: `TorchTrainer(train_worker, ...)` with `ScalingConfig` (workers,
CPU fraction, one GPU each), `TorchConfig` (gloo on CPU, nccl on GPU), `RunConfig` with
`FailureConfig(max_failures)` (the worker group restarts from the latest checkpoint) and
`CheckpointConfig(num_to_keep)`; in each worker `ray.train.torch.prepare_model` (DDP),
`ray.train.report(metrics, checkpoint=...)`, and `ray.train.get_checkpoint()` to resume.

The driver checks everything it can before a worker starts (config, shards, an existing
checkpoint's architecture, the MLflow store), fits, exports `final/`, then logs to MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Optional

import torch

from .. import tracking
from ..config import ConfigError, from_dict, to_dict
from ..runtime import init_ray
from .config import TrainConfig, TrainError
from .data import check_data
from .loop import LoopContext, train_loop
from .mlflow_run import log_outputs, mlflow_run
from .runs import (FAULT_MARKER, check_resume, export_final, latest_checkpoint, read_history, run_path,
                   storage_root)

logger = logging.getLogger(__name__)


def train_worker(config: dict) -> dict:
    """Per-worker entry point of the TorchTrainer: the shared `train_loop` under Ray Train.

    Module-level so that Ray workers import it by name; `config` is
    {"cfg": TrainConfig as a dict, "fault_marker": path}.
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = from_dict(TrainConfig, config["cfg"])
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        if ckpt_dir:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(ckpt_dir),
                             checkpoint_dir_name=f"checkpoint_{metrics['step']:08d}")
        else:
            ray.train.report(metrics)

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model

    ckpt = ray.train.get_checkpoint()
    with (ckpt.as_directory() if ckpt else contextlib.nullcontext(None)) as restore_dir:
        ctx = LoopContext(rank, world, device, report, restore_dir, wrap)
        return train_loop(cfg, ctx, fault_marker=config["fault_marker"])


def build_trainer(cfg: TrainConfig):
    """The TorchTrainer of this run: its workers, backend, storage, retries and checkpoints kept."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_worker,
        train_loop_config={"cfg": to_dict(cfg), "fault_marker": f"{run_path(cfg)}/{FAULT_MARKER}"},
        torch_config=TorchConfig(backend="nccl" if cfg.gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.gpu else {})},
        ),
        run_config=RunConfig(
            name=cfg.name, storage_path=storage_root(cfg),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            # Train V2 patches print() to ALSO go through its logger: every progress line
            # would reach the driver (and `ray job logs`) twice. Plain prints are forwarded.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )


def train(cfg: TrainConfig, log: Optional[Callable[[str], None]] = None, address: Optional[str] = None,
          num_cpus: Optional[float] = None) -> dict:
    """Stage 2 on Ray Train. Validates everything on the driver, then fits; returns a report.

    `address` / `num_cpus`: how to start or join Ray when it is not initialised yet.
    Progress goes to `log` (default: this module's logger).
    Report keys: checkpoint (path of the latest checkpoint), final_dir (<storage>/<name>/final),
    metrics (last metrics), history (all metric records), resumed_from (step or None),
    mlflow_run_id, model_version, train_steps_logged.
    """
    say = log or logger.info
    cfg.validate()
    t0 = time.time()
    resumed_from = _preflight(cfg, say, address, num_cpus)  # 1. everything that can be wrong, before a worker starts
    with mlflow_run(cfg, say) as (run_id, uri):
        ckpt = _fit(cfg, resumed_from, say)
        history = read_history(ckpt)
        final_metrics = {}
        for r in history:
            final_metrics.update({k: v for k, v in r.items() if k != "time"})
        final_dir = export_final(ckpt, cfg, final_metrics)
        # 2. the driver is the only MLflow writer: curves from the checkpoint's history, then the model
        n_points, version = log_outputs(run_id, cfg, ckpt, history, final_metrics, final_dir, say)
    say(f"[train] done in {time.time() - t0:.1f}s; checkpoint {ckpt.path}; reasoner exported to {final_dir}; "
        f"{n_points} metric points logged to MLflow run {run_id} ({tracking.redact(uri)})")
    return {"checkpoint": ckpt.path, "final_dir": final_dir, "metrics": final_metrics, "history": history,
            "resumed_from": resumed_from, "mlflow_run_id": run_id, "model_version": version,
            "train_steps_logged": len([r for r in history if "loss" in r])}


def _preflight(cfg: TrainConfig, say: Callable[[str], None], address: Optional[str],
               num_cpus: Optional[float]) -> Optional[int]:
    """Data, Ray (started or joined), GPUs and an existing checkpoint; returns the step it resumes from, if any."""
    import ray

    check_data(cfg, say)
    init_ray(address, num_cpus)  # after the data checks; a no-op when already connected
    if cfg.gpu and ray.cluster_resources().get("GPU", 0) < cfg.workers:
        raise ConfigError(f"gpu=true with workers={cfg.workers}, but the Ray cluster has "
                          f"{ray.cluster_resources().get('GPU', 0):g} GPU(s)")
    resume_meta = check_resume(cfg, say)
    return resume_meta.get("step") if resume_meta else None


def _fit(cfg: TrainConfig, resumed_from: Optional[int], say: Callable[[str], None]):
    """Fit (or, when the run is already at cfg.steps, nothing); returns the latest checkpoint."""
    if resumed_from is not None and resumed_from >= cfg.steps:
        say(f"[train] run {cfg.name!r} is already at step {resumed_from} >= steps={cfg.steps}; nothing to train")
        ckpt = latest_checkpoint(cfg)
    else:
        trainer = build_trainer(cfg)
        say(f"[train] fitting {cfg.name!r}: {cfg.workers} {'GPU' if cfg.gpu else 'CPU'} worker(s), "
            f"{cfg.steps} steps, batch {cfg.batch_size} (accumulation {cfg.accumulation}), storage {run_path(cfg)}")
        try:
            result = trainer.fit()
        except Exception as e:  # TrainingFailedError after max_failures retries
            raise TrainError(f"training {cfg.name!r} failed after {cfg.max_failures} retries: "
                             f"{type(e).__name__}: {e}") from e
        if result.error is not None:
            raise TrainError(f"training {cfg.name!r} failed: {result.error}")
        ckpt = result.checkpoint
    if ckpt is None:
        raise TrainError(f"run {cfg.name!r} produced no checkpoint")
    return ckpt
