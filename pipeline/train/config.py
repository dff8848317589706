"""What `tart train` is asked to do: `TrainConfig` (with its `Curriculum`), validation, `--help` text, errors.

Every field is a config key of the stage (YAML and/or `key=value`); `FIELD_HELP` documents
each one. `validate()` rejects a bad config before any data is read or any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..config import ConfigError
from ..reasoner import SIZES, ReasonerConfig
from ..synthetic import TaskSpec


class TrainError(RuntimeError):
    """Training failed (after FailureConfig's retries) or its outputs could not be written."""


@dataclass
class Curriculum:
    dims_start: int = 4
    dims_step: int = 4
    points_start: int = 18
    points_step: int = 30
    interval: int = 1000  # optimizer steps between increments

    def at(self, step: int, d: int, max_points: int) -> tuple[int, int]:
        """(active dims, points per sequence) at optimizer step `step`."""
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
    cpu_bf16: bool = False  # autocast on CPU workers too: opt-in (changes CPU runs' numerics; fast on AVX512-BF16/AMX)
    mlflow_uri: Optional[str] = None
    experiment: str = "tart-train"
    register_as: Optional[str] = None  # registered model name in the MLflow model registry
    register_alias: str = "candidate"  # alias set on the new version (MLflow reserves "latest")
    system_metrics: bool = True  # MLflow system metrics (CPU/GPU/memory of the driver's node; needs psutil)
    keep_checkpoints: int = 3  # newest checkpoints kept in storage
    verify_data: bool = True  # sha256 every shard on the driver before training (data=<shard URI>)
    fail_at_step: Optional[int] = None  # fault injection for tests: the worker dies once at this step
    time_budget_s: float = 0.0  # > 0: stop (with a final checkpoint) once this much wall time is spent
    init_from: Optional[str] = None  # start from these weights (a shipped name such as v1, or a folder)

    def validate(self) -> None:
        """Apply the `size` preset, then check every field in turn; ConfigError names the first bad one."""
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
        if self.model.classes > 2 and self.task.family != "embedding":
            raise ConfigError(f"model.classes={self.model.classes}: a multi-class reasoner trains on the embedding "
                              f"family (task.family=embedding, task.prior.classes > 2); got task.family="
                              f"{self.task.family!r}")
        if self.task.family == "embedding":
            if self.data != "online":
                raise ConfigError(f"task.family=embedding trains on online episodes only; got data={self.data!r}")
            if self.task.prior.classes > self.model.classes:
                raise ConfigError(f"task.prior.classes={self.task.prior.classes}: episodes of up to that many classes "
                                  f"need a reasoner with model.classes >= {self.task.prior.classes} "
                                  f"(got model.classes={self.model.classes})")
            bad = [k for k in self.eval_ks if not self.task.prior.k_min <= k <= self.task.max_k]
            if bad:
                raise ConfigError(f"eval_ks {bad}: the embedding family trains contexts k_min="
                                  f"{self.task.prior.k_min}..{self.task.max_k} (points - queries)")
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


FIELD_HELP = {
    "name": "run name: same name + storage resumes from the latest checkpoint",
    "storage": "Ray Train storage_path (local dir, or s3://, gs:// shared by all nodes)",
    "data": "'online' (fresh episodes every step) or a shard URI written by `tart generate`",
    "seed": "model init and data order; data order is a pure function of (seed, step, rank)",
    "size": "preset " + " | ".join(f"{k}={v}" for k, v in SIZES.items()) + " (overrides model.n_*)",
    "model.d": "input dimension of the reasoner",
    "model.max_points": "longest (x, y) sequence; k + 1 <= max_points at inference",
    "model.classes": "2: a binary reasoner (one logit); C > 2: labels one-hot, C logits, episodes of 2..C classes",
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
    "bf16": "bf16 autocast on GPU",
    "cpu_bf16": "bf16 autocast on CPU workers too (opt-in: fast only on CPUs with AVX512-BF16 or AMX; "
                "1.55x steps/s on the 2-core test box, bench/bench_train_cpu_bf16.py)",
    "mlflow_uri": "tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)",
    "experiment": "MLflow experiment",
    "register_as": "register the final reasoner (an MLflow Model: pyfunc, signature, model card) under this name",
    "register_alias": "alias set on the registered version ('latest' is reserved by MLflow)",
    "system_metrics": "log MLflow system metrics from the driver's node (needs psutil)",
    "keep_checkpoints": "newest checkpoints kept in storage", "verify_data": "sha256 every shard before training",
    "fail_at_step": "fault injection for tests: a worker dies once at this step (marker in the run dir)",
    "time_budget_s": "> 0: stop with a final checkpoint after this many seconds",
    "init_from": "start from these weights: a shipped reasoner name (v1, v2) or a checkpoint folder "
                 "(fine-tuning; the model shape must match, except model.classes: a multi-class reasoner "
                 "from a binary one takes every weight but the read-out)",
    "task.family": "online data: gaussian (the paper's task, v1) | embedding (shaped like whitened embeddings, v2)",
    "task.prior.raw_dims": "embedding family: x drawn in this many dims, PCA-whitened to d on the context",
    "task.prior.signal_min": "embedding family: logit std, log-uniform from ...",
    "task.prior.signal_max": "... to this",
    "task.prior.decay_min": "embedding family: w_j ~ N(0, (j+1)^-2a), a ~ U[decay_min, decay_max]",
    "task.prior.decay_max": "... (larger: the task's weight sits in fewer leading coordinates)",
    "task.prior.spectrum_min": "embedding family: raw variance of coordinate j ~ (j+1)^-b, b ~ U[spectrum_min, ...]",
    "task.prior.spectrum_max": "... spectrum_max]",
    "task.prior.flip_max": "embedding family: label-flip rate ~ U[0, flip_max]",
    "task.prior.heavy_tail": "embedding family: share of episodes with multivariate-t x",
    "task.prior.clusters": "embedding family: share of episodes with clustered x",
    "task.prior.class_conditional": "embedding family: share of episodes drawn class first (balanced labels, "
                                    "class means apart), the rest logistic",
    "task.prior.sep_min": "embedding family, class-conditional: class-mean distance in noise std units, "
                          "log-uniform from ...",
    "task.prior.sep_max": "... to this",
    "task.prior.paper_share": "embedding family: share of binary episodes that are the paper's task exactly as "
                              "v1 trained on it (replay)",
    "task.prior.rotate": "embedding family: turn each batch's x by a random rotation before the reduction "
                         "(variance directions off the coordinate axes, as a backbone's are)",
    "task.prior.k_min": "embedding family: smallest context trained (k ~ U{k_min..points-queries} per step)",
    "task.prior.queries": "embedding family: query points after the context (the loss is on them)",
    "task.prior.classes": "embedding family: classes per episode ~ U{2..classes} each step (> 2: softmax "
                          "regression or C class clouds; needs model.classes >= it)",
}
