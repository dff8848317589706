"""A training run in storage, seen from the driver: its paths, its latest checkpoint, resume checks, the export.

    <storage>/<name>/checkpoint_00001000/   registered by Ray Train (layout: `checkpoint`)
    <storage>/<name>/final/                 model.safetensors, config.json, metrics.jsonl, final_metrics.json
    <storage>/<name>/fault_injected         marker of the one injected failure (tests)

Checkpoints are found and read through Ray Train's public `Result` / `Checkpoint` (their
`filesystem` makes s3:// and gs:// storage work the same as a local directory).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

from .. import storage
from ..config import ConfigError
from ..reasoner import CONFIG_FILE, WEIGHTS_FILE
from .checkpoint import HISTORY_FILE, TRAIN_STATE_FILE
from .config import TrainConfig, TrainError

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
FAULT_MARKER = "fault_injected"
MIN_CHECKPOINT_FILES = (TRAIN_STATE_FILE, WEIGHTS_FILE, CONFIG_FILE)
EXPORTED_FILES = (WEIGHTS_FILE, CONFIG_FILE, HISTORY_FILE)  # what final/ (and the MLflow artifact) holds


def storage_root(cfg: TrainConfig) -> str:
    """Absolute storage path (Ray Train needs one); URIs (s3://, gs://) pass through."""
    return cfg.storage if "://" in cfg.storage else str(Path(cfg.storage).expanduser().resolve())


def run_path(cfg: TrainConfig) -> str:
    return f"{storage_root(cfg).rstrip('/')}/{cfg.name}"


def latest_checkpoint(cfg: TrainConfig):
    """The newest checkpoint Ray Train registered for this run (name + storage), or None.

    Through Ray Train's public `Result.from_path`, which raises RuntimeError for a folder
    that holds no run yet (missing, or no checkpoint registered): that means "start fresh".
    """
    from ray.train import Result

    try:
        return Result.from_path(run_path(cfg)).checkpoint
    except RuntimeError as e:
        if "doesn't exist" in str(e):
            return None
        raise


def read_checkpoint_file(ckpt, name: str) -> bytes:
    """The bytes of file `name` of a Ray Train `Checkpoint`, wherever its storage is."""
    with ckpt.filesystem.open_input_file(f"{ckpt.path.rstrip('/')}/{name}") as f:
        return f.read()


def read_history(ckpt) -> list[dict]:
    """The metrics records carried by a checkpoint ([] if it has none)."""
    try:
        text = read_checkpoint_file(ckpt, HISTORY_FILE).decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_resume(cfg: TrainConfig, log: Optional[Callable[[str], None]] = None) -> Optional[dict]:
    """If the run already has a checkpoint, check it fits this config; returns its config.json (or None).

    A checkpoint of another reasoner architecture (or an unreadable one) is a ConfigError
    here, before any worker starts, instead of a shape error inside every retry.
    """
    ckpt = latest_checkpoint(cfg)
    if ckpt is None:
        return None
    try:
        meta = json.loads(read_checkpoint_file(ckpt, CONFIG_FILE))
    except (OSError, ValueError) as e:
        raise ConfigError(f"run {cfg.name!r} at {storage_root(cfg)}: latest checkpoint {ckpt.path} is unreadable "
                          f"({e}); use another name= or remove the run directory") from None
    theirs, ours = meta.get("reasoner", {}), cfg.model.record()
    diffs = [f"{k}: checkpoint {theirs.get(k)!r} vs config {ours.get(k)!r}"
             for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    if diffs:
        raise ConfigError(
            f"run {cfg.name!r} at {storage_root(cfg)} has a checkpoint (step {meta.get('step')}) of another reasoner "
            f"architecture ({'; '.join(diffs)}); resuming it with this config is impossible: use another name= "
            "or the checkpoint's model settings"
        )
    (log or logger.info)(f"[train] run {cfg.name!r} has a checkpoint at step {meta.get('step')}: resuming from {ckpt.path}")
    return meta


def export_final(ckpt, cfg: TrainConfig, final_metrics: dict) -> str:
    """Copy model.safetensors + config.json (+ metrics) of `ckpt` to <storage>/<name>/final/ atomically."""
    dest = f"{run_path(cfg)}/{FINAL_DIR}"
    fs, base = storage.resolve(dest)
    fs.makedirs(base, exist_ok=True)
    for name in EXPORTED_FILES:
        try:
            data = read_checkpoint_file(ckpt, name)
        except FileNotFoundError:
            if name == HISTORY_FILE:
                continue
            raise TrainError(f"checkpoint {ckpt.path} lacks {name}") from None
        storage.atomic_write_bytes(fs, storage.join(base, name), data)
    storage.write_json_atomic(fs, storage.join(base, "final_metrics.json"), final_metrics)
    return dest
