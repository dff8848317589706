"""Stage 2: train the reasoner on synthetic episodes.

One training loop (`train_loop`) serves three launchers:
- `train(cfg)`: Ray Train TorchTrainer (DDP over CPU workers with gloo or GPUs with
  nccl), checkpoints reported through `ray.train.report`, resume via
  `ray.train.get_checkpoint()`, retries via FailureConfig;
- `train_local(cfg, out_dir)`: the same loop in one process (used on a lone GPU
  box and in benchmarks as the plain-PyTorch baseline).

Data order is a pure function of (seed, step, rank), so a resumed run sees exactly
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .config import ConfigError, to_dict
from .reasoner import SIZES, ReasonerConfig, ReasonerModel, save_checkpoint
from .synthetic import TaskSpec, apply_curriculum, sample_episodes_torch


@dataclass
class Curriculum:
    dims_start: int = 4
    dims_step: int = 4
    points_start: int = 18
    points_step: int = 30
    interval: int = 1000  # optimizer steps between increments

    def at(self, step: int, d: int, max_points: int) -> tuple[int, int]:
        n = step // max(1, self.interval)
        dims = min(d, self.dims_start + self.dims_step * n)
        points = min(max_points, self.points_start + self.points_step * n)
        return dims, points


@dataclass
class TrainConfig:
    name: str = "reasoner"  # run name; same name + storage = resume
    storage: str = "tart_runs/train"  # Ray Train storage_path (local dir or s3://, gs://)
    data: str = "online"  # "online" (fresh episodes per step) or a shard URI written by `tart generate`
    seed: int = 0
    size: Optional[str] = None  # preset: tiny / small / standard (overrides model.n_*)
    model: ReasonerConfig = field(default_factory=ReasonerConfig)
    task: TaskSpec = field(default_factory=TaskSpec)  # used when data=online
    curriculum: Curriculum = field(default_factory=Curriculum)
    steps: int = 20000
    batch_size: int = 128  # global sequences per optimizer step
    micro_batch: int = 0  # per-worker sequences per forward; 0 = batch_size / workers
    lr: float = 3e-4
    warmup_steps: int = 500
    schedule: str = "cosine"  # constant | cosine
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    eval_every: int = 500
    eval_episodes: int = 256
    eval_ks: list[int] = field(default_factory=lambda: [18, 32, 64, 128])
    log_every: int = 50
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: float = 0.5  # fractional: 2-core machines deadlock at 1 CPU per worker
    max_failures: int = 2
    bf16: bool = True  # autocast on GPU only
    mlflow_uri: Optional[str] = None
    experiment: str = "tart-train"
    register_as: Optional[str] = None  # registered model name; alias `latest` set on it
    fail_at_step: Optional[int] = None  # fault injection for tests: the worker dies once at this step
    time_budget_s: float = 0.0  # > 0: stop (with a final checkpoint) once this much wall time is spent

    def validate(self) -> None:
        if self.size is not None:
            if self.size not in SIZES:
                raise ConfigError(f"size={self.size!r}: unknown; known sizes: {', '.join(SIZES)}")
            self.model.n_layer, self.model.n_head, self.model.n_embd = SIZES[self.size]
        self.model.validate()
        self.task.validate()
        if self.task.d != self.model.d and self.data == "online":
            raise ConfigError(f"task.d={self.task.d} must equal model.d={self.model.d}")
        if self.task.points > self.model.max_points and self.data == "online":
            raise ConfigError(f"task.points={self.task.points} exceeds model.max_points={self.model.max_points}")
        for name in ("steps", "batch_size", "workers", "checkpoint_every", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected >= 1")
        if self.batch_size % self.workers:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by workers={self.workers}")
        per_worker = self.batch_size // self.workers
        mb = self.micro_batch or per_worker
        if per_worker % mb:
            raise ConfigError(f"micro_batch={mb} does not divide the per-worker batch {per_worker}")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule={self.schedule!r}: expected constant or cosine")
        for k in self.eval_ks:
            if not 1 <= k < self.model.max_points:
                raise ConfigError(f"eval_ks contains k={k}: expected 1 <= k < max_points={self.model.max_points}")

    @property
    def accumulation(self) -> int:
        per_worker = self.batch_size // self.workers
        return per_worker // (self.micro_batch or per_worker)


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


# ---------------------------------------------------------------- data sources


class OnlineEpisodes:
    """Fresh episodes per (step, rank, micro) from a seeded torch generator on the device."""

    def __init__(self, task: TaskSpec, seed: int, device: torch.device):
        self.task, self.seed, self.device = task, seed, device
        self.gen = torch.Generator(device=device)

    def batch(self, step: int, rank: int, micro: int, n: int):
        self.gen.manual_seed(hash((self.seed, step, rank, micro)) & 0x7FFF_FFFF_FFFF_FFFF)
        return sample_episodes_torch(self.task, n, self.gen, self.device)


class ShardEpisodes:
    """Episodes from Parquet shards; a seeded permutation per epoch fixes the order."""

    def __init__(self, uri: str, seed: int, device: torch.device):
        from .generate import read_episodes

        episodes, self.task = read_episodes(uri)
        self.w = torch.from_numpy(episodes.w)
        self.x = torch.from_numpy(episodes.x)
        self.u = torch.from_numpy(episodes.u)
        self.n = len(self.w)
        self.seed, self.device = seed, device
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, start: int, n: int) -> np.ndarray:
        out = []
        while n > 0:
            epoch, off = divmod(start, self.n)
            take = min(n, self.n - off)
            out.append(self._order(epoch)[off : off + take])
            start, n = start + take, n - take
        return np.concatenate(out)

    def batch(self, step: int, rank: int, micro: int, n: int, per_step: int, per_worker: int):
        start = step * per_step + rank * per_worker + micro * n
        idx = torch.from_numpy(self.indices(start, n))
        return (t[idx].to(self.device, non_blocking=True) for t in (self.w, self.x, self.u))


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def synthetic_accuracy(model: ReasonerModel, task: TaskSpec, ks: list[int], n: int, seed: int, device) -> dict:
    """Query accuracy on held-out full-dim episodes (fixed seed), one query per episode at each k."""
    gen = torch.Generator(device=device)
    gen.manual_seed(10_000_019 + seed)
    spec = TaskSpec(task.d, max(ks) + 1, task.weight_multiplier, task.variable_multiplier)
    w, x, u = sample_episodes_torch(spec, n, gen, device)
    x, y = apply_curriculum(w, x, u, spec.d, spec.points)
    was_training = model.training
    model.eval()
    out = {}
    for k in ks:
        logits = model.query_logits(x[:, :k], y[:, :k], x[:, k : k + 1]).float()[:, 0]
        out[f"synthetic_acc_k{k}"] = ((logits > 0).float() == y[:, k]).float().mean().item()
    model.train(was_training)
    return out


# ---------------------------------------------------------------- the loop


@dataclass
class LoopContext:
    """What the loop needs from its launcher."""

    rank: int
    world_size: int
    device: torch.device
    report: Callable[[dict, Optional[str]], None]  # (metrics, checkpoint dir or None)
    restore_dir: Optional[str]  # latest checkpoint to resume from
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m  # DDP wrapper


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def train_loop(cfg: TrainConfig, ctx: LoopContext, fault_marker: Optional[str] = None) -> dict:
    torch.manual_seed(cfg.seed)
    model = ReasonerModel(cfg.model).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    start_step = 0
    if ctx.restore_dir:
        state = torch.load(Path(ctx.restore_dir) / "train_state.pt", map_location=ctx.device, weights_only=False)
        model.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        start_step = state["step"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
    net = ctx.wrap(model)

    if cfg.data == "online":
        source, task = OnlineEpisodes(cfg.task, cfg.seed, ctx.device), cfg.task
    else:
        source = ShardEpisodes(cfg.data, cfg.seed, ctx.device)
        task = source.task
        if task.d > cfg.model.d or task.points > cfg.model.max_points:
            raise ConfigError(
                f"shards at {cfg.data} have d={task.d}, points={task.points}; the model takes "
                f"d<={cfg.model.d}, points<={cfg.model.max_points}"
            )
    per_worker = cfg.batch_size // ctx.world_size
    micro = cfg.micro_batch or per_worker
    accum = per_worker // micro
    use_amp = ctx.device.type == "cuda" and cfg.bf16
    t0, last_t, last_step = time.time(), time.time(), start_step
    loss_acc, loss_n = 0.0, 0
    final = {}
    for step in range(start_step, cfg.steps):
        if cfg.fail_at_step is not None and step == cfg.fail_at_step and fault_marker and not os.path.exists(fault_marker):
            Path(fault_marker).parent.mkdir(parents=True, exist_ok=True)
            Path(fault_marker).write_text(f"injected failure at step {step}\n")
            raise RuntimeError(f"injected failure at step {step} (fail_at_step)")
        dims, points = cfg.curriculum.at(step, task.d, task.points)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        for m in range(accum):
            if cfg.data == "online":
                w, x, u = source.batch(step, ctx.rank, m, micro)
            else:
                w, x, u = source.batch(step, ctx.rank, m, micro, cfg.batch_size, per_worker)
            xb, yb = apply_curriculum(w, x, u, dims, points)
            if xb.shape[2] < cfg.model.d:
                xb = F.pad(xb, (0, cfg.model.d - xb.shape[2]))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = net(xb, yb)
            loss = F.binary_cross_entropy_with_logits(logits.float(), yb) / accum
            loss.backward()
            loss_acc += loss.item()
        loss_n += 1
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        done = step + 1
        out_of_time = cfg.time_budget_s > 0 and time.time() - t0 > cfg.time_budget_s
        metrics = {}
        if done % cfg.log_every == 0 or done == cfg.steps or out_of_time:
            now = time.time()
            sps = (done - last_step) / max(1e-9, now - last_t)
            metrics.update(
                step=done, loss=loss_acc / max(1, loss_n), lr=lr_at(cfg, step), active_dims=dims,
                points=points, steps_per_s=sps, eta_s=(cfg.steps - done) / max(1e-9, sps),
            )
            last_t, last_step, loss_acc, loss_n = now, done, 0.0, 0
            if ctx.rank == 0:
                print(
                    f"[train] step {done}/{cfg.steps} loss {metrics['loss']:.4f} dims {dims} points {points} "
                    f"lr {metrics['lr']:.2e} {sps:.2f} steps/s ETA {metrics['eta_s']/60:.1f} min",
                    flush=True,
                )
        if done % cfg.eval_every == 0 or done == cfg.steps or out_of_time:
            metrics.update(step=done)
            metrics.update(synthetic_accuracy(model, task, cfg.eval_ks, cfg.eval_episodes, cfg.seed, ctx.device))
        ckpt_dir = None
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or out_of_time:
            metrics.update(step=done)
            ckpt_dir = tempfile.mkdtemp(prefix="tart-ckpt-")
            if ctx.rank == 0:
                torch.save(
                    {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                     "curriculum": {"active_dims": dims, "points": points}, "rng": _rng_state(),
                     "config": to_dict(cfg)},
                    Path(ckpt_dir) / "train_state.pt",
                )
                save_checkpoint(model, ckpt_dir, extra={"train_config": to_dict(cfg), "step": done})
        if metrics or ckpt_dir:
            ctx.report(metrics, ckpt_dir if ctx.rank == 0 else None)
            final.update(metrics)
        if ckpt_dir:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        if out_of_time:
            print(f"[train] time budget {cfg.time_budget_s:.0f}s spent; stopped at step {done}", flush=True)
            break
    final["wall_s"] = time.time() - t0
    return final


# ---------------------------------------------------------------- launchers


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
            with open(out / "metrics.jsonl", "a") as f:
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
    result = train_loop(cfg, ctx, fault_marker=str(out / "fault_injected"))
    result["history"] = history
    return result
