"""The model card of a trained reasoner: what it is, how it was trained, how well it does, how to use it.

`model_card(cfg, metrics, folder, run_id)` renders it as markdown from the run's config, its
final metrics and the exported checkpoint (the shipped reasoner's card,
`pipeline/assets/reasoner/README.md`, is the hand-written model for it). Training attaches it to
the logged MLflow Model (its checkpoint folder's README.md) and to the registered version
(its description).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Optional

from ..reasoner import ARCHITECTURE, WEIGHTS_FILE
from .config import TrainConfig


def _parameters(weights: Path) -> int:
    """Parameter count from the safetensors header (8-byte length, then JSON with every tensor's shape)."""
    with open(weights, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    total = 0
    for name, t in header.items():
        if name != "__metadata__":
            size = 1
            for dim in t["shape"]:
                size *= dim
            total += size
    return total


def _data(cfg: TrainConfig) -> str:
    if cfg.data != "online":
        return f"synthetic episodes from the shard set `{cfg.data}` (`tart generate`), seed {cfg.seed}"
    t = cfg.task
    mult = f"a multiplier drawn from 1..{t.weight_multiplier:g}" if t.variable_multiplier else f"{t.weight_multiplier:g}"
    return (f"online synthetic episodes, seed {cfg.seed}: w ~ N(0, I_{t.d}) * {mult}, x ~ N(0, I_{t.d}), "
            f"y ~ Bernoulli(sigmoid(x . w)), {t.points} points per episode")


def model_card(cfg: TrainConfig, metrics: dict, folder: str | Path, run_id: Optional[str] = None) -> str:
    """Markdown model card of the reasoner exported to `folder` by the run `cfg` (final `metrics`)."""
    m, c = cfg.model, cfg.curriculum
    step = metrics.get("step")
    params = _parameters(Path(folder) / WEIGHTS_FILE)
    rows = [
        ("architecture", f"`{ARCHITECTURE}`: n_layer={m.n_layer}, n_head={m.n_head}, n_embd={m.n_embd}"
                         f"{f' (size preset `{cfg.size}`)' if cfg.size else ''}, pre-LayerNorm, learned positions, "
                         "zero dropout"),
        ("parameters", f"{params / 1e6:.2f} M ({WEIGHTS_FILE})"),
        ("input", f"d={m.d}, max_points={m.max_points} (k <= {m.max_points - 1} context pairs plus the query; "
                  f"a smaller d is zero-padded)"),
        ("data", _data(cfg)),
        ("curriculum", f"active dims {c.dims_start} -> {m.d} (+{c.dims_step}) and points {c.points_start} -> "
                       f"{m.max_points} (+{c.points_step}) every {c.interval} steps"),
        ("optimisation", f"AdamW (weight decay {cfg.weight_decay:g}), lr {cfg.lr:g}, {cfg.warmup_steps} warm-up steps, "
                         f"{cfg.schedule} schedule, batch {cfg.batch_size}, grad clip {cfg.grad_clip:g}, "
                         f"{cfg.workers} {'GPU' if cfg.gpu else 'CPU'} worker(s)"),
        ("steps", f"{step} of {cfg.steps}"),
        ("final training loss", f"{metrics['loss']:.4f}" if isinstance(metrics.get("loss"), float) else "-"),
        ("training run", f"`{cfg.name}` in `{cfg.storage}`" + (f", MLflow run `{run_id}`" if run_id else "")),
    ]
    accs = sorted((int(k.rsplit("k", 1)[1]), v) for k, v in metrics.items()
                  if re.fullmatch(r"synthetic_acc_k\d+", k) and isinstance(v, (int, float)))
    lines = [
        f"# Model card: TART reasoner `{cfg.name}` (step {step})", "",
        "**What it is.** A GPT-2-style causal Transformer (`pipeline/reasoner.py`) that reads an interleaved "
        "sequence x1, y1, ..., xk, yk, x_query of points and binary labels and returns P(y_query = 1). It was "
        "trained only on synthetic logistic-regression episodes and is used, frozen, on the whitened "
        "embeddings of any backbone.", "",
        "| field | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
    ]
    if accs:
        lines += [f"## Accuracy on held-out synthetic episodes (step {step})", "",
                  f"{cfg.eval_episodes} episodes per k, all {m.d} dims active, accuracy against the sampled labels.", "",
                  "| k | accuracy |", "|---|---|", *[f"| {k} | {v:.3f} |" for k, v in accs], ""]
    lines += [
        "## Use", "",
        "    import mlflow",
        '    model = mlflow.pyfunc.load_model("models:/<name>@<alias>")',
        '    p = model.predict({"x_context": xc, "y_context": yc, "x_query": xq})  # float32 (B,k,d), (B,k), (B,q,d) -> (B,q)',
        "",
        "In a grid: `reasoners: [models:/<name>@<alias>]`. Loading needs this project (`pipeline`) installed.", "",
        "**Limits.** Binary labels only; k at most max_points - 1; trained on synthetic data only: its accuracy on "
        "a real task is what a grid measures, next to the baselines.",
    ]
    return "\n".join(lines) + "\n"
