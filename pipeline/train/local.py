"""`train_local(cfg, out_dir)`: the training loop in this process, without Ray.

Used on a lone GPU box (`scripts/train_sweep.py`), in benchmarks as the plain-PyTorch
baseline, and in tests as the uninterrupted reference of a Ray Train run. Checkpoints
go to `<out_dir>/checkpoint_<step:08d>/` (the layout of `checkpoint`), copied in under a
`.tmp_` name and renamed; the newest `keep` are kept; every metrics record is appended to
`<out_dir>/metrics.jsonl`. A second call with the same out_dir resumes from the newest.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import HISTORY_FILE
from .config import TrainConfig
from .loop import LoopContext, train_loop
from .runs import FAULT_MARKER


def train_local(cfg: TrainConfig, out_dir: str, device: Optional[str] = None, keep: int = 2) -> dict:
    """Run the loop in this process; checkpoints go to out_dir/checkpoint_*/, resume from the latest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or ("cuda" if cfg.gpu and torch.cuda.is_available() else "cpu"))
    history: list[dict] = []
    existing = sorted(out.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))

    def report(metrics: dict, ckpt: Optional[str]) -> None:
        if metrics:
            history.append(metrics)
            with open(out / HISTORY_FILE, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if ckpt:
            final = out / f"checkpoint_{metrics['step']:08d}"
            tmp = out / f".tmp_checkpoint_{metrics['step']:08d}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(ckpt, tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(out.glob("checkpoint_*"))[:-keep]:  # keep the newest few
                shutil.rmtree(old, ignore_errors=True)

    ctx = LoopContext(0, 1, dev, report, str(existing[-1]) if existing else None)
    result = train_loop(cfg, ctx, fault_marker=str(out / FAULT_MARKER))
    result["history"] = history
    return result
