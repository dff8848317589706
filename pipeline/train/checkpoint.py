"""One training checkpoint: what the loop writes into it and how a resumed loop reads it back.

A checkpoint directory (`<storage>/<name>/checkpoint_00001000/` under Ray Train, or
`<out_dir>/checkpoint_00001000/` for `train_local`) holds::

    train_state.pt     torch.save of {"model": state_dict, "optimizer": AdamW state_dict, "step": int,
                       "curriculum": {"active_dims", "points"}, "rng": {"python", "numpy", "torch"},
                       "config": the TrainConfig as a dict}; tensors and plain containers only,
                       so it loads with weights_only=True
    model.safetensors  the reasoner's weights (`pipeline.reasoner.save_checkpoint`)
    config.json        {"architecture", "reasoner": ReasonerConfig, "train_config", "step"}:
                       `load_reasoner(dir)` reads it with model.safetensors
    metrics.jsonl      every metrics record reported up to this step, one JSON object a line

Only rank 0 writes; every rank resumes from the same directory.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, to_dict
from ..reasoner import ReasonerModel, save_checkpoint

TRAIN_STATE_FILE = "train_state.pt"
HISTORY_FILE = "metrics.jsonl"  # inside every checkpoint: all metrics reported up to its step


def rng_state() -> dict:
    """The RNG states as plain ints, lists and one CPU byte tensor: loadable with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state()}


def set_rng_state(rng: dict) -> None:
    """Put python's, numpy's and torch's (CPU) generators back to a `rng_state()`."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"].cpu())  # the CPU generator takes a CPU ByteTensor only


def load_train_state(path: Path) -> dict:
    """A checkpoint's train_state.pt, unpickled with weights_only=True (tensors and plain containers
    only: a tampered file cannot run code). Loaded to CPU: the model and optimizer load_state_dict
    calls move tensors to the parameters' device."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"{path}: not a train state this version can load safely (weights_only=True: {e}); "
                          "checkpoints from before 2026-11-26 pickled a numpy RNG state: resume them with that "
                          "version or start a new name=") from None


def write_checkpoint(ckpt_dir: str, model: ReasonerModel, opt: torch.optim.Optimizer, step: int,
                     curriculum: tuple[int, int], cfg, history: list[dict]) -> None:
    """Write the four files of a checkpoint at optimizer step `step` into `ckpt_dir`."""
    dims, points = curriculum
    (Path(ckpt_dir) / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
         "curriculum": {"active_dims": dims, "points": points}, "rng": rng_state(),
         "config": to_dict(cfg)},
        Path(ckpt_dir) / TRAIN_STATE_FILE,
    )
    save_checkpoint(model, ckpt_dir, extra={"train_config": to_dict(cfg), "step": step})


def restore_checkpoint(ckpt_dir: str, model: ReasonerModel, opt: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    """Load model, optimizer and RNG states from `ckpt_dir`; returns (its step, its metrics history)."""
    state = load_train_state(Path(ckpt_dir) / TRAIN_STATE_FILE)
    model.load_state_dict(state["model"], strict=True)
    opt.load_state_dict(state["optimizer"])
    step = state["step"]
    set_rng_state(state["rng"])
    history: list[dict] = []
    hist_file = Path(ckpt_dir) / HISTORY_FILE
    if hist_file.is_file():
        history = [r for r in map(json.loads, hist_file.read_text().splitlines()) if r.get("step", 0) <= step]
    return step, history
