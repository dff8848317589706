"""Stage 2: train the reasoner on synthetic episodes.

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
    <storage>/<name>/final/                model.safetensors, config.json (load_reasoner(path)), metrics
    <storage>/<name>/fault_injected        marker of the one injected failure (tests)
"""

from __future__ import annotations

import argparse
import contextlib
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

from .config import ConfigError, defaults_epilog, from_dict, load_config, stage_parser, to_dict
from .runtime import init_ray
from .reasoner import (CONFIG_FILE, SIZES, WEIGHTS_FILE, ReasonerConfig, ReasonerModel,
                       save_checkpoint)
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
    register_as: Optional[str] = None  # registered model name in the MLflow model registry
    register_alias: str = "candidate"  # alias set on the new version (MLflow reserves "latest")
    system_metrics: bool = True  # MLflow system metrics (CPU/GPU/memory of the driver's node; needs psutil)
    keep_checkpoints: int = 3  # newest checkpoints kept in storage
    verify_data: bool = True  # sha256 every shard on the driver before training (data=<shard URI>)
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
        if not str(self.data).strip():
            raise ConfigError("data='': expected 'online' or a shard URI written by `tart generate`")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"name={self.name!r}: expected a plain run name (no '/', not starting with '.')")
        if not self.cpus_per_worker > 0:
            raise ConfigError(f"cpus_per_worker={self.cpus_per_worker}: expected > 0")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints={self.keep_checkpoints}: expected >= 1")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures={self.max_failures}: expected >= 0 (or -1 for unlimited)")
        if self.register_alias.lower() == "latest" or not self.register_alias.strip():
            raise ConfigError(f"register_alias={self.register_alias!r}: MLflow reserves 'latest'; pick another alias")
        if self.fail_at_step is not None and not 0 <= self.fail_at_step < self.steps:
            raise ConfigError(f"fail_at_step={self.fail_at_step}: expected 0 <= step < steps={self.steps}")
        if not self.eval_ks:
            raise ConfigError("eval_ks is empty: give at least one context size k")
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


HISTORY_FILE = "metrics.jsonl"  # inside every checkpoint: all metrics reported up to its step


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_mean(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / torch.distributed.get_world_size()


def _rng_state() -> dict:
    """The RNG states as plain ints, lists and one CPU byte tensor: loadable with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state()}


def _set_rng_state(rng: dict) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"].cpu())  # the CPU generator takes a CPU ByteTensor only


def load_train_state(path: Path) -> dict:
    """A checkpoint's train_state.pt, unpickled with weights_only=True (tensors and plain containers
    only: a tampered file cannot run code). Loaded to CPU: the model and optimizer load_state_dict
    calls move tensors to the parameters' device."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"{path}: not a train state this version can load safely (weights_only=True: {e}); "
                          "checkpoints from before 2026-11-26 pickled a numpy RNG state: resume them with that "
                          "version or start a new name=") from None


def train_loop(cfg: TrainConfig, ctx: LoopContext, fault_marker: Optional[str] = None) -> dict:
    torch.manual_seed(cfg.seed)
    model = ReasonerModel(cfg.model).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    start_step = 0
    history: list[dict] = []  # every reported metrics dict, carried inside each checkpoint
    if ctx.restore_dir:
        state = load_train_state(Path(ctx.restore_dir) / "train_state.pt")
        model.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        start_step = state["step"]
        _set_rng_state(state["rng"])
        hist_file = Path(ctx.restore_dir) / HISTORY_FILE
        if hist_file.is_file():
            history = [r for r in map(json.loads, hist_file.read_text().splitlines()) if r.get("step", 0) <= start_step]
        if ctx.rank == 0:
            print(f"[train] resuming from checkpoint at step {start_step} ({ctx.restore_dir})", flush=True)
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
            # DDP: all-reduce gradients once per optimizer step, not once per micro-batch
            sync = contextlib.nullcontext() if m == accum - 1 or not hasattr(net, "no_sync") else net.no_sync()
            if cfg.data == "online":
                w, x, u = source.batch(step, ctx.rank, m, micro)
            else:
                w, x, u = source.batch(step, ctx.rank, m, micro, cfg.batch_size, per_worker)
            xb, yb = apply_curriculum(w, x, u, dims, points)
            if xb.shape[2] < cfg.model.d:
                xb = F.pad(xb, (0, cfg.model.d - xb.shape[2]))
            with sync:
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
        if cfg.time_budget_s > 0 and ctx.world_size > 1 and _dist_ready():
            out_of_time = bool(_all_reduce_mean(float(out_of_time), ctx.device) > 0)  # all ranks stop together
        metrics = {}
        if done % cfg.log_every == 0 or done == cfg.steps or out_of_time:
            now = time.time()
            sps = (done - last_step) / max(1e-9, now - last_t)
            loss_mean = loss_acc / max(1, loss_n)
            if ctx.world_size > 1 and _dist_ready():
                loss_mean = _all_reduce_mean(loss_mean, ctx.device)  # the loss of the global batch
            metrics.update(
                step=done, loss=loss_mean, lr=lr_at(cfg, step), active_dims=dims,
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
        ckpt_due = done % cfg.checkpoint_every == 0 or done == cfg.steps or out_of_time
        if ckpt_due:
            metrics.update(step=done)
        if metrics:
            metrics["segment_start"] = start_step  # the step this attempt resumed from (0 = fresh)
            history.append(dict(metrics, time=time.time()))
        ckpt_dir = None
        if ckpt_due:
            ckpt_dir = tempfile.mkdtemp(prefix="tart-ckpt-")
            if ctx.rank == 0:
                (Path(ckpt_dir) / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
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


# ---------------------------------------------------------------- Ray Train launcher


class TrainError(RuntimeError):
    """Training failed (after FailureConfig's retries) or its outputs could not be written."""


FINAL_DIR = "final"
FAULT_MARKER = "fault_injected"
MIN_CHECKPOINT_FILES = ("train_state.pt", WEIGHTS_FILE, CONFIG_FILE)


def storage_root(cfg: TrainConfig) -> str:
    """Absolute storage path (Ray Train needs one); URIs (s3://, gs://) pass through."""
    return cfg.storage if "://" in cfg.storage else str(Path(cfg.storage).expanduser().resolve())


def run_path(cfg: TrainConfig) -> str:
    return f"{storage_root(cfg).rstrip('/')}/{cfg.name}"


def check_data(cfg: TrainConfig, log=print) -> Optional[dict]:
    """Validate a shard URI on the driver (manifest, every shard's size and sha256, fit to the model).

    Returns the manifest (None for online data). Raises ShardError/ConfigError/StorageError.
    """
    if cfg.data == "online":
        return None
    from . import storage
    from .generate import check_shard_file, read_manifest, shard_records

    man = read_manifest(cfg.data)  # ShardError: missing / foreign / incomplete
    fs, base = storage.resolve(cfg.data)
    task = man["task"]
    if task["d"] > cfg.model.d or task["points"] > cfg.model.max_points:
        raise ConfigError(
            f"shards at {cfg.data} have d={task['d']}, points={task['points']}; the model takes "
            f"d<={cfg.model.d}, points<={cfg.model.max_points} (set model.d / model.max_points)"
        )
    recs = shard_records(man, cfg.data)
    if sum(r["rows"] for r in recs) < cfg.batch_size:
        raise ConfigError(f"shards at {cfg.data} hold {sum(r['rows'] for r in recs)} episodes, fewer than one "
                          f"batch (batch_size={cfg.batch_size})")
    t0 = time.time()
    for rec in recs:
        check_shard_file(fs, base, cfg.data, rec, cfg.verify_data)
    log(f"[train] data {cfg.data}: {man['episodes']} episodes in {len(recs)} shards, d={task['d']}, "
        f"points={task['points']} ({'verified' if cfg.verify_data else 'sizes checked'} in {time.time() - t0:.1f}s)")
    return man


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


def _read_checkpoint_file(ckpt, name: str) -> bytes:
    with ckpt.filesystem.open_input_file(f"{ckpt.path.rstrip('/')}/{name}") as f:
        return f.read()


def check_resume(cfg: TrainConfig, log=print) -> Optional[dict]:
    """If the run already has a checkpoint, check it fits this config; returns its config.json (or None).

    A checkpoint of another reasoner architecture (or an unreadable one) is a ConfigError
    here, before any worker starts, instead of a shape error inside every retry.
    """
    ckpt = latest_checkpoint(cfg)
    if ckpt is None:
        return None
    try:
        meta = json.loads(_read_checkpoint_file(ckpt, CONFIG_FILE))
    except (OSError, ValueError) as e:
        raise ConfigError(f"run {cfg.name!r} at {storage_root(cfg)}: latest checkpoint {ckpt.path} is unreadable "
                          f"({e}); use another name= or remove the run directory") from None
    theirs, ours = meta.get("reasoner", {}), asdict(cfg.model)
    diffs = [f"{k}: checkpoint {theirs.get(k)!r} vs config {ours.get(k)!r}"
             for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    if diffs:
        raise ConfigError(
            f"run {cfg.name!r} at {storage_root(cfg)} has a checkpoint (step {meta.get('step')}) of another reasoner "
            f"architecture ({'; '.join(diffs)}); resuming it with this config is impossible: use another name= "
            "or the checkpoint's model settings"
        )
    log(f"[train] run {cfg.name!r} has a checkpoint at step {meta.get('step')}: resuming from {ckpt.path}")
    return meta


def _worker_fn(config: dict) -> dict:
    """Per-worker entry point of the TorchTrainer: the shared `train_loop` under Ray Train."""
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


def _export_final(ckpt, cfg: TrainConfig, final_metrics: dict) -> str:
    """Copy model.safetensors + config.json (+ metrics) of `ckpt` to <storage>/<name>/final/ atomically."""
    from . import storage

    dest = f"{run_path(cfg)}/{FINAL_DIR}"
    fs, base = storage.resolve(dest)
    fs.makedirs(base, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE, HISTORY_FILE):
        try:
            data = _read_checkpoint_file(ckpt, name)
        except FileNotFoundError:
            if name == HISTORY_FILE:
                continue
            raise TrainError(f"checkpoint {ckpt.path} lacks {name}") from None
        storage.atomic_write_bytes(fs, storage.join(base, name), data)
    storage.write_json_atomic(fs, storage.join(base, "final_metrics.json"), final_metrics)
    return dest


def _history(ckpt) -> list[dict]:
    try:
        text = _read_checkpoint_file(ckpt, HISTORY_FILE).decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def train(cfg: TrainConfig, log=print, address: Optional[str] = None, num_cpus: Optional[float] = None) -> dict:
    """Stage 2 on Ray Train. Validates everything on the driver, then fits; returns a report.

    `address` / `num_cpus`: how to start or join Ray when it is not initialised yet.
    Report keys: checkpoint (path of the latest checkpoint), final_dir (<storage>/<name>/final),
    metrics (last metrics), history (all metric records), resumed_from (step or None),
    mlflow_run_id, model_version.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from . import tracking

    cfg.validate()
    t0 = time.time()
    # 1. everything that can be wrong is checked before a worker starts
    check_data(cfg, log)
    init_ray(address, num_cpus)  # after the data checks; a no-op when already connected
    if cfg.gpu and ray.cluster_resources().get("GPU", 0) < cfg.workers:
        raise ConfigError(f"gpu=true with workers={cfg.workers}, but the Ray cluster has "
                          f"{ray.cluster_resources().get('GPU', 0):g} GPU(s)")
    resume_meta = check_resume(cfg, log)
    resumed_from = resume_meta.get("step") if resume_meta else None
    uri = tracking.connect(cfg.mlflow_uri, log=log)
    exp_id = tracking.ensure_experiment(cfg.experiment, uri)
    sysm = cfg.system_metrics and tracking.system_metrics_available()
    if cfg.system_metrics and not sysm:
        log("[mlflow] psutil is not installed: system metrics are not logged")

    run = tracking.start_or_resume_run(
        exp_id, run_key=f"{run_path(cfg)}", run_name=cfg.name, system_metrics=sysm,
        tags={"tart.stage": "train", "tart.storage": run_path(cfg), "tart.data": cfg.data,
              "tart.workers": cfg.workers, "tart.device": "gpu" if cfg.gpu else "cpu"},
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        changed = tracking.log_params_once(run_id, tracking.flatten_params(cfg))
        if changed:
            log(f"[mlflow] resumed run {run_id}: changed settings recorded as override.* tags: {sorted(changed)}")
        if resumed_from is not None and resumed_from >= cfg.steps:
            log(f"[train] run {cfg.name!r} is already at step {resumed_from} >= steps={cfg.steps}; nothing to train")
            ckpt = latest_checkpoint(cfg)
        else:
            trainer = TorchTrainer(
                _worker_fn,
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
            log(f"[train] fitting {cfg.name!r}: {cfg.workers} {'GPU' if cfg.gpu else 'CPU'} worker(s), "
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
        history = _history(ckpt)
        steps = [r for r in history if "loss" in r]
        final_metrics = {}
        for r in history:
            final_metrics.update({k: v for k, v in r.items() if k != "time"})
        final_dir = _export_final(ckpt, cfg, final_metrics)
        # 2. the driver is the only MLflow writer: curves from the checkpoint's history, then the model
        n_points = tracking.log_history(run_id, history, skip=("step", "time"))
        import mlflow

        with tempfile.TemporaryDirectory(prefix="tart-final-") as tmp:  # works for remote storage too
            for name in (WEIGHTS_FILE, CONFIG_FILE, HISTORY_FILE):
                try:
                    (Path(tmp) / name).write_bytes(_read_checkpoint_file(ckpt, name))
                except FileNotFoundError:
                    pass
            mlflow.log_artifacts(tmp, artifact_path="reasoner")
        version = None
        if cfg.register_as:
            version = tracking.register_directory(
                run_id, "reasoner", cfg.register_as, cfg.register_alias,
                description="TART reasoner trained on synthetic logistic-regression episodes",
                tags={"step": final_metrics.get("step"), "storage": run_path(cfg)},
            )
            log(f"[mlflow] registered {cfg.register_as} version {version} (alias @{cfg.register_alias})")
        mlflow.set_tags({"tart.checkpoint": ckpt.path, "tart.final_dir": final_dir,
                         "tart.final_step": final_metrics.get("step")})
        status = "FINISHED"
    finally:
        import mlflow

        mlflow.end_run(status=status)
    log(f"[train] done in {time.time() - t0:.1f}s; checkpoint {ckpt.path}; reasoner exported to {final_dir}; "
        f"{n_points} metric points logged to MLflow run {run_id} ({tracking.redact(uri)})")
    return {"checkpoint": ckpt.path, "final_dir": final_dir, "metrics": final_metrics, "history": history,
            "resumed_from": resumed_from, "mlflow_run_id": run_id, "model_version": version,
            "train_steps_logged": len(steps)}


# ---------------------------------------------------------------- CLI


FIELD_HELP = {
    "name": "run name: same name + storage resumes from the latest checkpoint",
    "storage": "Ray Train storage_path (local dir, or s3://, gs:// shared by all nodes)",
    "data": "'online' (fresh episodes every step) or a shard URI written by `tart generate`",
    "seed": "model init and data order; data order is a pure function of (seed, step, rank)",
    "size": "preset " + " | ".join(f"{k}={v}" for k, v in SIZES.items()) + " (overrides model.n_*)",
    "model.d": "input dimension of the reasoner",
    "model.max_points": "longest (x, y) sequence; k + 1 <= max_points at inference",
    "model.n_layer": "decoder blocks", "model.n_head": "attention heads", "model.n_embd": "width",
    "task.d": "online data: dimension of x and w", "task.points": "online data: (x, y) pairs per episode",
    "task.weight_multiplier": "online data: w ~ N(0, I) * multiplier",
    "task.variable_multiplier": "online data: per-episode multiplier from {1..weight_multiplier}",
    "curriculum.dims_start": "active dims at step 0", "curriculum.dims_step": "+dims per interval",
    "curriculum.points_start": "points at step 0", "curriculum.points_step": "+points per interval",
    "curriculum.interval": "optimizer steps between curriculum increments",
    "steps": "optimizer steps in total (raise it and re-run the same name to train further)",
    "batch_size": "global sequences per optimizer step (split over workers)",
    "micro_batch": "per-worker sequences per forward (gradient accumulation); 0 = no accumulation",
    "lr": "peak learning rate (AdamW)", "warmup_steps": "linear warmup steps",
    "schedule": "constant | cosine", "min_lr_ratio": "cosine floor as a fraction of lr",
    "weight_decay": "AdamW weight decay", "grad_clip": "max gradient norm (0 = off)",
    "checkpoint_every": "steps between checkpoints", "eval_every": "steps between synthetic evaluations",
    "eval_episodes": "held-out episodes per evaluation", "eval_ks": "context sizes k evaluated (k < max_points)",
    "log_every": "steps between progress lines / metric points",
    "workers": "Ray Train workers (DDP)", "gpu": "one GPU per worker, nccl (else CPU workers, gloo)",
    "cpus_per_worker": "CPUs per worker (fractional on small machines: 1.0 x 2 workers deadlocks 2 cores)",
    "max_failures": "worker-group restarts from the latest checkpoint before giving up (-1: unlimited)",
    "bf16": "bf16 autocast on GPU", "mlflow_uri": "tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)",
    "experiment": "MLflow experiment", "register_as": "register the final reasoner under this model name",
    "register_alias": "alias set on the registered version ('latest' is reserved by MLflow)",
    "system_metrics": "log MLflow system metrics from the driver's node (needs psutil)",
    "keep_checkpoints": "newest checkpoints kept in storage", "verify_data": "sha256 every shard before training",
    "fail_at_step": "fault injection for tests: a worker dies once at this step (marker in the run dir)",
    "time_budget_s": "> 0: stop with a final checkpoint after this many seconds",
}


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
    from . import tracking

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


if __name__ == "__main__":
    sys.exit(main())
