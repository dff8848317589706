"""The training loop both launchers run (`train_local` in this process, `train` on Ray Train workers).

`train_loop(cfg, ctx)` builds (or restores) the model and optimizer, then for each step:
curriculum -> learning rate -> gradient accumulation over micro-batches (DDP syncs once,
on the last one) -> clip -> AdamW step -> progress / synthetic evaluation / checkpoint
when due -> `ctx.report`. What differs between launchers (rank, device, DDP wrapping,
where reports and checkpoints go) is the `LoopContext`.

Progress lines are plain `print`s on rank 0: the loop runs in Ray Train workers, where
no logging is set up and Ray forwards a worker's stdout to the driver (and `ray job logs`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import ConfigError
from ..reasoner import ReasonerModel
from ..synthetic import TaskSpec, apply_curriculum, class_count, context_size, embedding_batch, sample_episodes_torch
from .checkpoint import restore_checkpoint, write_checkpoint
from .config import TrainConfig
from .data import episode_source


@dataclass
class LoopContext:
    """What the loop needs from its launcher."""

    rank: int
    world_size: int
    device: torch.device
    report: Callable[[dict, Optional[str]], None]  # (metrics, checkpoint dir or None)
    restore_dir: Optional[str]  # latest checkpoint to resume from
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m  # DDP wrapper


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then constant or cosine down to min_lr_ratio * lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def synthetic_accuracy(model: ReasonerModel, task: TaskSpec, ks: list[int], n: int, seed: int, device) -> dict:
    """Query accuracy on held-out full-dim episodes (fixed seed), one query per episode at each k."""
    gen = torch.Generator(device=device)
    gen.manual_seed(10_000_019 + seed)
    if task.family == "embedding":  # every query of each episode, whitened on its context of k
        was_training = model.training
        model.eval()
        out = {}
        for c in eval_classes(task):
            for k in ks:
                xc, yc, xq, yq = embedding_batch(task, n, k, gen, device, n_classes=c)
                logits = model.query_logits(xc, yc, xq).float()
                pred = (logits > 0).float() if logits.ndim == 2 else logits[..., :c].argmax(-1).float()
                out[f"synthetic_acc_k{k}" if c == 2 else f"synthetic_acc_c{c}_k{k}"] = (pred == yq).float().mean().item()
        model.train(was_training)
        return out
    spec = TaskSpec(task.d, max(ks) + 1, task.weight_multiplier, task.variable_multiplier)
    w, x, u = sample_episodes_torch(spec, n, gen, device)
    x, y = apply_curriculum(w, x, u, spec.d, spec.points)
    if x.shape[2] < model.cfg.d:  # shards of a smaller d: the remaining coordinates are zero
        x = F.pad(x, (0, model.cfg.d - x.shape[2]))
    was_training = model.training
    model.eval()
    out = {}
    for k in ks:
        logits = model.query_logits(x[:, :k], y[:, :k], x[:, k : k + 1]).float()[:, 0]
        out[f"synthetic_acc_k{k}"] = ((logits > 0).float() == y[:, k]).float().mean().item()
    model.train(was_training)
    return out


def eval_classes(task: TaskSpec) -> list[int]:
    """The class counts a multi-class family is evaluated at: 2, the most it trains, one between."""
    c = task.prior.classes if task.family == "embedding" else 2
    return sorted({2, (2 + c) // 2, c})


def episode_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Binary cross-entropy on a binary reasoner's logits (B, n); on a multi-class one's (B, n, C_max),
    cross-entropy over the episode's first n_classes logits."""
    if logits.ndim == 2:
        return F.binary_cross_entropy_with_logits(logits.float(), target)
    z = logits[..., :n_classes].float()
    return F.cross_entropy(z.reshape(-1, n_classes), target.long().reshape(-1))


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_mean(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / torch.distributed.get_world_size()


def _mean_over_ranks(value: float, ctx: LoopContext) -> float:
    return _all_reduce_mean(value, ctx.device) if ctx.world_size > 1 and _dist_ready() else value


def _build(cfg: TrainConfig, ctx: LoopContext):
    """(model, optimizer, start step, metrics history): fresh from cfg.seed, or restored from ctx.restore_dir."""
    torch.manual_seed(cfg.seed)
    model = ReasonerModel(cfg.model).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    start_step, history = 0, []  # history: every reported metrics dict, carried inside each checkpoint
    if ctx.restore_dir:
        start_step, history = restore_checkpoint(ctx.restore_dir, model, opt)
        if ctx.rank == 0:
            print(f"[train] resuming from checkpoint at step {start_step} ({ctx.restore_dir})", flush=True)
    elif cfg.init_from:  # fine-tuning: the weights of another reasoner, a fresh optimizer
        from ..reasoner import load_model, shipped_dir, widen_inputs
        init = load_model(shipped_dir(cfg.init_from), device=str(ctx.device))
        state = init.state_dict()
        if init.cfg.classes != model.cfg.classes:  # binary -> multi-class: every weight but the read-out
            state.update({k: v for k, v in model.state_dict().items() if k.startswith("read_out.")})
        if replace(init.cfg, classes=model.cfg.classes, d=model.cfg.d) != model.cfg or init.cfg.d > model.cfg.d:
            raise ConfigError(f"init_from={cfg.init_from!r}: its reasoner {init.cfg} does not match model={model.cfg} "
                              f"(only classes may differ, and d may grow)")
        if init.cfg.d < model.cfg.d:  # more input dims: the new ones start read as nothing (widen_inputs)
            state = widen_inputs(state, model.cfg.d)
        model.load_state_dict(state, strict=True)
        if ctx.rank == 0:
            print(f"[train] starting from the weights of {cfg.init_from}", flush=True)
    return model, opt, start_step, history


def _inject_failure(cfg: TrainConfig, step: int, fault_marker: Optional[str]) -> None:
    """fail_at_step (tests): die once at that step; the marker file makes the retry pass it."""
    if cfg.fail_at_step is not None and step == cfg.fail_at_step and fault_marker and not os.path.exists(fault_marker):
        Path(fault_marker).parent.mkdir(parents=True, exist_ok=True)
        Path(fault_marker).write_text(f"injected failure at step {step}\n")
        raise RuntimeError(f"injected failure at step {step} (fail_at_step)")


def _accumulate_gradients(cfg: TrainConfig, ctx: LoopContext, net, source, step: int, dims: int,
                          points: int, n_classes: int = 2) -> list[float]:
    """Forward + backward over this rank's micro-batches of `step`; returns each micro-batch's loss."""
    per_worker = cfg.batch_size // ctx.world_size
    micro = cfg.micro_batch or per_worker
    accum = per_worker // micro
    use_amp = cfg.bf16 if ctx.device.type == "cuda" else cfg.cpu_bf16
    # bf16 on CPU: PyTorch's CPU flash-attention kernel with a mask is slower than plain matmul + softmax
    # at these lengths (0.38 vs 0.45 steps/s on one k = 64 batch of v2's recipe, 2 threads); training only
    kernel = (lambda: sdpa_kernel(SDPBackend.MATH)) if use_amp and ctx.device.type == "cpu" else contextlib.nullcontext
    losses = []
    for m in range(accum):
        # DDP: all-reduce gradients once per optimizer step, not once per micro-batch
        sync = contextlib.nullcontext() if m == accum - 1 or not hasattr(net, "no_sync") else net.no_sync()
        n_context = None
        if cfg.task.family == "embedding":  # whitened on a context of `points` pairs, loss on the queries
            xc, yc, xq, yq = source.embedding_batch(step, ctx.rank, m, micro, points, n_classes)
            xb, yb, n_context, target = torch.cat([xc, xq], 1), torch.cat([yc, yq], 1), points, yq
        else:
            if cfg.data == "online":
                w, x, u = source.batch(step, ctx.rank, m, micro)
            else:
                w, x, u = source.batch(step, ctx.rank, m, micro, cfg.batch_size, per_worker)
            xb, yb = apply_curriculum(w, x, u, dims, points)
            if xb.shape[2] < cfg.model.d:
                xb = F.pad(xb, (0, cfg.model.d - xb.shape[2]))
            target = yb
        with sync:
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_amp), kernel():
                logits = net(xb, yb, n_context)
            loss = episode_loss(logits, target, n_classes) / accum
            loss.backward()
        losses.append(loss.item())
    return losses


class _Progress:
    """The loss and speed since the last progress line."""

    def __init__(self, step: int):
        self.last_t, self.last_step, self.loss_acc, self.loss_n = time.time(), step, 0.0, 0

    def add(self, micro_losses: list[float]) -> None:
        for v in micro_losses:  # summed one by one, as the loss of the step is
            self.loss_acc += v
        self.loss_n += 1

    def metrics(self, cfg: TrainConfig, ctx: LoopContext, step: int, dims: int, points: int) -> dict:
        """The progress metrics after `step` (0-based; done = step + 1), printed on rank 0; resets the meter."""
        done, now = step + 1, time.time()
        sps = (done - self.last_step) / max(1e-9, now - self.last_t)
        loss_mean = _mean_over_ranks(self.loss_acc / max(1, self.loss_n), ctx)  # the loss of the global batch
        metrics = dict(step=done, loss=loss_mean, lr=lr_at(cfg, step), active_dims=dims,
                       points=points, steps_per_s=sps, eta_s=(cfg.steps - done) / max(1e-9, sps))
        self.last_t, self.last_step, self.loss_acc, self.loss_n = now, done, 0.0, 0
        if ctx.rank == 0:
            print(
                f"[train] step {done}/{cfg.steps} loss {metrics['loss']:.4f} dims {dims} points {points} "
                f"lr {metrics['lr']:.2e} {sps:.2f} steps/s ETA {metrics['eta_s']/60:.1f} min",
                flush=True,
            )
        return metrics


def train_loop(cfg: TrainConfig, ctx: LoopContext, fault_marker: Optional[str] = None) -> dict:
    """Train from ctx.restore_dir's step (or 0) to cfg.steps (or the time budget); returns the last
    metrics reported plus wall_s. One optimizer step per iteration, its phases named below."""
    model, opt, start_step, history = _build(cfg, ctx)
    net = ctx.wrap(model)
    source, task = episode_source(cfg, ctx.device)
    t0 = time.time()
    progress = _Progress(start_step)
    final = {}
    for step in range(start_step, cfg.steps):
        _inject_failure(cfg, step, fault_marker)
        # 1. one optimizer step on the curriculum's (dims, points)
        if task.family == "embedding":  # no curriculum: all dims, a context size drawn per step
            dims, points = task.d, context_size(task, cfg.seed, step)
        else:
            dims, points = cfg.curriculum.at(step, task.d, task.points)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        n_classes = class_count(task, cfg.seed, step) if task.family == "embedding" else 2
        progress.add(_accumulate_gradients(cfg, ctx, net, source, step, dims, points, n_classes))
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        done = step + 1
        out_of_time = cfg.time_budget_s > 0 and time.time() - t0 > cfg.time_budget_s
        if cfg.time_budget_s > 0 and ctx.world_size > 1 and _dist_ready():
            out_of_time = bool(_all_reduce_mean(float(out_of_time), ctx.device) > 0)  # all ranks stop together
        last = done == cfg.steps or out_of_time
        # 2. metrics when due: progress, synthetic accuracy; every record joins the history
        metrics = {}
        if done % cfg.log_every == 0 or last:
            metrics.update(progress.metrics(cfg, ctx, step, dims, points))
        if done % cfg.eval_every == 0 or last:
            metrics.update(step=done)
            metrics.update(synthetic_accuracy(model, task, cfg.eval_ks, cfg.eval_episodes, cfg.seed, ctx.device))
        ckpt_due = done % cfg.checkpoint_every == 0 or last
        if ckpt_due:
            metrics.update(step=done)
        if metrics:
            metrics["segment_start"] = start_step  # the step this attempt resumed from (0 = fresh)
            history.append(dict(metrics, time=time.time()))
        # 3. checkpoint (rank 0 writes it) and report; the launcher copies the directory away
        ckpt_dir = tempfile.mkdtemp(prefix="tart-ckpt-") if ckpt_due else None
        if ckpt_dir and ctx.rank == 0:
            write_checkpoint(ckpt_dir, model, opt, done, (dims, points), cfg, history)
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
