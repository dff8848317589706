"""The synthetic logistic-regression tasks the reasoner is trained on: two families.

`gaussian` (the paper's, reasoner v1): an episode draws a fresh task w ~ N(0, I_d) * scale, points x ~ N(0, I_d) and labels
y ~ Bernoulli(sigmoid(x . w)). We store the uniform draw `u` behind each label
(y = u < sigmoid(x . w)) instead of only y: the training curriculum zeroes the
inactive coordinates of x and w and must relabel with the *same* noise, so the
curriculum can be applied at training time without regenerating data.

Two samplers with the same distribution: numpy (stage 1 writes shards; byte-exact
given a seed) and torch (fresh episodes straight on the training device).

`embedding` (reasoner v2): episodes shaped like what the reasoner meets in the
composition, i.e. a backbone's embeddings PCA-whitened on the k context points
(`methods.fit_whitening`). x is drawn in `raw_dims` >= d dims with a decaying variance
spectrum, optionally heavy-tailed (multivariate t) or clustered; w puts its weight
mostly on the high-variance coordinates (w_j ~ N(0, (j+1)^-2a)), scaled so that the
logit's standard deviation (the episode's signal) is log-uniform over a wide range;
labels are flipped at a per-episode rate. Each training step then picks a context size
k, whitens every episode on its own first k points exactly as the composition does
(`whiten_context_torch`), and trains on the queries after them. The reasoner must infer
from the k points which task of the family it faces (how noisy, how concentrated), which
a logistic regression with a fixed C cannot. Online (torch) only for now.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

FAMILIES = ("gaussian", "embedding")
# The embedding family's multi-class episodes (prior.classes > 2): `sample_multiclass_episodes_torch`.


@dataclass
class EmbeddingPrior:
    """The `embedding` family's distribution over tasks (see the module docstring)."""

    raw_dims: int = 32  # x drawn in this many dims, then PCA-whitened to d on the context (>= d)
    signal_min: float = 0.5  # std of the logit x . w, drawn log-uniform in [signal_min, signal_max]
    signal_max: float = 20.0
    decay_min: float = 0.0  # w_j ~ N(0, (j+1)^-2a), a ~ U[decay_min, decay_max]: weight on the leading coordinates
    decay_max: float = 1.5
    spectrum_min: float = 0.0  # variance of raw coordinate j ~ (j+1)^-b, b ~ U[spectrum_min, spectrum_max]
    spectrum_max: float = 1.5
    flip_max: float = 0.2  # label-flip rate ~ U[0, flip_max]
    heavy_tail: float = 0.25  # share of episodes with multivariate-t x (dof ~ U[2.5, 10])
    clusters: float = 0.25  # share of episodes whose x is a mixture of 2-6 Gaussian clusters
    class_conditional: float = 0.5  # share of episodes drawn class first: x = noise + (y - 1/2) * separation
    sep_min: float = 0.5  # class-conditional: class-mean distance in noise std units, log-uniform in [min, max]
    sep_max: float = 6.0
    k_min: int = 17  # context sizes trained on: k ~ U{k_min .. points - queries} per step
    queries: int = 32  # query points after the context (the loss is on them)
    classes: int = 2  # episodes have C ~ U{2 .. classes} classes per step (2: binary only; > 2 needs a
    #                   multi-class reasoner, model.classes >= classes)
    reduction: str = "whiten"  # how each episode is reduced on its context, as the composition will
    #                            (`methods.REDUCTIONS`: whiten, or scaled = unit rows, PCA, one global scale)
    paper_share: float = 0.0  # share of binary episodes that are the paper's task exactly as v1 trained on
    #                           it (x ~ N(0, I_d) unwhitened, w ~ N(0, I_d) * weight_multiplier): replay that
    #                           keeps a fine-tune of v1 at home on near-separable tasks, where v1 is at its best
    rotate: bool = False  # turn each batch's x by one random rotation of its raw_dims before the reduction: a
    #                       backbone's variance directions are not its coordinate axes, and the `standardized`
    #                       reduction (per-feature scaling) would flatten an axis-aligned spectrum that real
    #                       embeddings keep

    def check(self, d: int, points: int) -> None:
        if self.raw_dims < d:
            raise ValueError(f"prior.raw_dims={self.raw_dims}: expected >= d={d} (the PCA keeps d of them)")
        if not 0 < self.signal_min <= self.signal_max:
            raise ValueError(f"prior.signal_min={self.signal_min}, signal_max={self.signal_max}: expected 0 < min <= max")
        for lo, hi in (("decay_min", "decay_max"), ("spectrum_min", "spectrum_max")):
            if not 0 <= getattr(self, lo) <= getattr(self, hi):
                raise ValueError(f"prior.{lo}={getattr(self, lo)}, {hi}={getattr(self, hi)}: expected 0 <= min <= max")
        if not 0 <= self.flip_max < 0.5:
            raise ValueError(f"prior.flip_max={self.flip_max}: expected 0 <= flip_max < 0.5")
        if not 0 < self.sep_min <= self.sep_max:
            raise ValueError(f"prior.sep_min={self.sep_min}, sep_max={self.sep_max}: expected 0 < min <= max")
        for name in ("heavy_tail", "clusters", "class_conditional", "paper_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"prior.{name}={getattr(self, name)}: expected a share in [0, 1]")
        if self.queries < 1:
            raise ValueError(f"prior.queries={self.queries}: expected >= 1")
        from .methods import REDUCTIONS
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"prior.reduction={self.reduction!r}: expected one of {', '.join(REDUCTIONS)}")
        if not 2 <= self.classes <= d:
            raise ValueError(f"prior.classes={self.classes}: expected 2 <= classes <= d={d} (one-hot label tokens)")
        if not 2 <= self.k_min <= points - self.queries:
            raise ValueError(f"prior.k_min={self.k_min}: expected 2 <= k_min <= points - queries "
                             f"= {points - self.queries}")


@dataclass
class TaskSpec:
    d: int = 16  # dimension of x and w
    points: int = 258  # (x, y) pairs per episode
    weight_multiplier: float = 10.0  # w ~ N(0, I) * multiplier  (gaussian family)
    variable_multiplier: bool = False  # per-episode multiplier drawn from {1..weight_multiplier}
    family: str = "gaussian"  # gaussian (the paper's task, v1) | embedding (v2: see the module docstring)
    prior: EmbeddingPrior = field(default_factory=EmbeddingPrior)  # the embedding family's parameters

    @property
    def max_k(self) -> int:
        """The largest context an episode of this task trains."""
        return self.points - self.prior.queries if self.family == "embedding" else self.points - 1

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}: expected one of {', '.join(FAMILIES)}")
        if self.family == "embedding":
            self.prior.check(self.d, self.points)
        if self.d < 1:
            raise ValueError(f"d={self.d}: expected d >= 1")
        if self.points < 2:
            raise ValueError(f"points={self.points}: expected at least 2 points per episode")
        if self.weight_multiplier <= 0:
            raise ValueError(f"weight_multiplier={self.weight_multiplier}: expected > 0")
        if self.variable_multiplier and self.weight_multiplier < 1:
            raise ValueError("variable_multiplier needs weight_multiplier >= 1")


def task_record(spec: TaskSpec) -> dict:
    """The task as recorded in manifests and checkpoints. A gaussian task is recorded without
    the family fields, exactly as before families existed, so v1 shard bytes and digests hold."""
    rec = asdict(spec)
    if spec.family == "gaussian":
        rec.pop("family"), rec.pop("prior")
    return rec


def task_from_record(rec: dict) -> TaskSpec:
    rec = dict(rec)
    prior = EmbeddingPrior(**rec.pop("prior", {}))
    return TaskSpec(**rec, prior=prior)


def trained_task(meta: dict) -> "TaskSpec | None":
    """The embedding-family task a reasoner was trained on, from its checkpoint config (`meta`):
    None for a reasoner not trained on the family (v1)."""
    rec = (meta.get("train_config") or {}).get("task") or {}
    return task_from_record(rec) if rec.get("family") == "embedding" else None


@dataclass
class Episodes:
    """A batch of episodes: w (n, d), x (n, points, d), u (n, points), scale (n,)."""

    w: np.ndarray
    x: np.ndarray
    u: np.ndarray
    scale: np.ndarray

    @property
    def y(self) -> np.ndarray:
        logits = np.einsum("npd,nd->np", self.x, self.w)
        return (self.u < _sigmoid(logits)).astype(np.int8)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def _scales(spec: TaskSpec, n: int, draw_int) -> np.ndarray:
    if spec.variable_multiplier:
        return draw_int(1, int(spec.weight_multiplier) + 1, n).astype(np.float32)
    return np.full(n, spec.weight_multiplier, dtype=np.float32)


def sample_episodes_np(spec: TaskSpec, n: int, rng: np.random.Generator) -> Episodes:
    """n episodes from `rng`; the draw order is fixed so the bytes depend only on rng state."""
    scale = _scales(spec, n, lambda lo, hi, size: rng.integers(lo, hi, size))
    w = rng.standard_normal((n, spec.d), dtype=np.float32) * scale[:, None]
    x = rng.standard_normal((n, spec.points, spec.d), dtype=np.float32)
    u = rng.random((n, spec.points), dtype=np.float32)
    return Episodes(w=w, x=x, u=u, scale=scale)


def sample_episodes_torch(spec: TaskSpec, n: int, gen: "torch.Generator", device: "torch.device | str" = "cpu"):
    """Torch twin of `sample_episodes_np` (same distribution, not the same bytes)."""
    import torch  # lazily: Ray generate workers need numpy only, and torch costs seconds to import
    if spec.variable_multiplier:
        scale = torch.randint(1, int(spec.weight_multiplier) + 1, (n,), generator=gen, device=device).float()
    else:
        scale = torch.full((n,), float(spec.weight_multiplier), device=device)
    w = torch.randn(n, spec.d, generator=gen, device=device) * scale[:, None]
    x = torch.randn(n, spec.points, spec.d, generator=gen, device=device)
    u = torch.rand(n, spec.points, generator=gen, device=device)
    return w, x, u


def apply_curriculum(w: "torch.Tensor", x: "torch.Tensor", u: "torch.Tensor", active_dims: int, points: int):
    """Restrict episodes to the first `active_dims` coordinates and `points` pairs.

    Inactive coordinates are zeroed (the input width stays d, as the reasoner
    expects) and labels are recomputed from the restricted task with the stored noise.
    Returns x (n, points, d) float and y (n, points) float in {0, 1}.
    """
    import torch
    x = x[:, :points].clone()
    u = u[:, :points]
    x[:, :, active_dims:] = 0
    w_act = w.clone()
    w_act[:, active_dims:] = 0
    logits = torch.einsum("npd,nd->np", x, w_act)
    y = (u < torch.sigmoid(logits)).float()
    return x, y


# ----------------------------------------------------------------------------- embedding family


def _raw_points(spec: TaskSpec, n: int, P: int, gen, device):
    """The x of n episodes (n, P, raw_dims) before any task: a variance spectrum, heavy tails or
    clusters. Also returns each coordinate's std (n, D), the coordinate numbers 1..D and the
    episode's uniform / normal draws, which the task that follows keeps drawing from."""
    import torch
    p, D = spec.prior, spec.prior.raw_dims
    unif = lambda *shape: torch.rand(*shape, generator=gen, device=device)
    normal = lambda *shape: torch.randn(*shape, generator=gen, device=device)
    j = torch.arange(1, D + 1, device=device, dtype=torch.float32)
    sd = j.pow(-(p.spectrum_min + unif(n, 1) * (p.spectrum_max - p.spectrum_min)) / 2)  # (n, D): std of coordinate j
    z = normal(n, P, D)
    # heavy tails: multivariate t, one chi-square scale per point (integer dof 3..10)
    dof = 3 + (unif(n, 1) * 8).floor()  # (n, 1)
    chi2 = (normal(n, P, 10) ** 2 * (torch.arange(10, device=device) < dof[:, :, None])).sum(-1)
    t_scale = torch.sqrt(dof / chi2.clamp_min(1e-6))  # (n, P)
    tailed = (unif(n, 1) < p.heavy_tail).float()
    z = z * (tailed * t_scale + (1 - tailed))[:, :, None]
    # clusters: 2-6 centres with a spread 0.5-2x the within-cluster std, each point in one
    m = 2 + (unif(n, 1) * 5).floor()  # (n, 1)
    centres = normal(n, 6, D) * (0.5 + 1.5 * unif(n, 1, 1))
    which = (unif(n, P) * m).floor().long()  # (n, P) in [0, m)
    clustered = (unif(n, 1, 1) < p.clusters).float()
    x = (z + clustered * torch.gather(centres, 1, which[:, :, None].expand(n, P, D))) * sd[:, None, :]
    return x, sd, j, unif, normal


def sample_embedding_episodes_torch(spec: TaskSpec, n: int, gen: "torch.Generator", device="cpu",
                                    points: int | None = None, n_context: int | None = None):
    """n raw episodes of the `embedding` family: x (n, points, raw_dims) and labels y (n, points) in {0, 1}.

    Per episode: a variance spectrum, optionally heavy tails or clusters, and then one of two
    kinds of task. Logistic: a task w weighted towards the high-variance coordinates, a signal
    (logit std), a class bias. Class-conditional (what a backbone's classes look like: two
    clouds whose mean difference is itself a direction of variance, so the whitened PCA puts
    it in front): balanced labels first (in the first n_context points and in the rest
    separately, as the grid's context and test sets are), then x = noise + (y - 1/2) * a
    separation along a decaying direction. Both then flip labels at the episode's rate.
    """
    import torch
    p, P = spec.prior, points or spec.points
    x, sd, j, unif, normal = _raw_points(spec, n, P, gen, device)
    D = p.raw_dims
    # the task: weight decaying over the coordinates, scaled to the episode's signal
    w = normal(n, D) * j.pow(-(p.decay_min + unif(n, 1) * (p.decay_max - p.decay_min)))
    logit = torch.einsum("npd,nd->np", x, w)
    logit = logit - logit.mean(1, keepdim=True)
    lo, hi = math.log(p.signal_min), math.log(p.signal_max)
    signal = torch.exp(lo + (hi - lo) * unif(n, 1))
    logit = logit * signal / logit.std(1, keepdim=True).clamp_min(1e-6) + 0.5 * normal(n, 1)
    flip = unif(n, 1) * p.flip_max
    p1 = flip + (1 - 2 * flip) * torch.sigmoid(logit)
    y = (unif(n, P) < p1).float()
    # class-conditional episodes: balanced labels, then the class means pulled apart
    cc = unif(n, 1) < p.class_conditional  # (n, 1)
    yb = torch.cat([_balanced(n, m, gen, device) for m in ((n_context or P), P - (n_context or P)) if m > 0], 1)
    direction = normal(n, D) * j.pow(-(p.decay_min + unif(n, 1) * (p.decay_max - p.decay_min))) * sd
    direction = direction / torch.linalg.norm(direction / sd, dim=1, keepdim=True)  # unit length in noise std units
    lo, hi = math.log(p.sep_min), math.log(p.sep_max)
    sep = torch.exp(lo + (hi - lo) * unif(n, 1))
    x = torch.where(cc[:, :, None], x + (yb - 0.5)[:, :, None] * (sep * direction)[:, None, :], x)
    flipped = unif(n, P) < flip
    y = torch.where(cc, torch.where(flipped, 1 - yb, yb), y)
    return x, y


def sample_multiclass_episodes_torch(spec: TaskSpec, n: int, n_classes: int, gen: "torch.Generator", device="cpu",
                                     points: int | None = None, n_context: int | None = None):
    """n raw episodes of C = n_classes classes: x (n, points, raw_dims), labels y (n, points) in 0..C-1.

    The multi-class twin of `sample_embedding_episodes_torch`, on the same x: softmax regression
    (C weight rows decaying over the coordinates, the logits' std log-uniform, class biases,
    labels drawn from the softmax) or, for a `class_conditional` share of episodes, C balanced
    clouds (balanced in the context and in the rest separately) whose means sit about
    `sep` noise stds apart along decaying directions. A flipped label is redrawn uniformly.
    """
    import torch
    p, P, C = spec.prior, points or spec.points, n_classes
    x, sd, j, unif, normal = _raw_points(spec, n, P, gen, device)
    D = p.raw_dims
    decay = lambda: j.pow(-(p.decay_min + unif(n, 1, 1) * (p.decay_max - p.decay_min)))  # (n, 1, D)
    logit = torch.einsum("npd,ncd->npc", x, normal(n, C, D) * decay())
    logit = logit - logit.mean(1, keepdim=True)
    lo, hi = math.log(p.signal_min), math.log(p.signal_max)
    signal = torch.exp(lo + (hi - lo) * unif(n, 1, 1))
    logit = logit * signal / logit.std(dim=(1, 2), keepdim=True).clamp_min(1e-6) + 0.5 * normal(n, 1, C)
    gumbel = -torch.log(-torch.log(unif(n, P, C).clamp(1e-12, 1 - 1e-7)))
    y = (logit + gumbel).argmax(-1)  # a draw from softmax(logit)
    cc = unif(n, 1) < p.class_conditional  # (n, 1)
    nc = n_context or P
    yb = torch.cat([_balanced_classes(n, m, C, gen, device) for m in (nc, P - nc) if m > 0], 1)
    directions = normal(n, C, D) * decay() * sd[:, None, :]
    directions = directions / torch.linalg.norm(directions / sd[:, None, :], dim=2, keepdim=True)
    lo, hi = math.log(p.sep_min), math.log(p.sep_max)
    sep = torch.exp(lo + (hi - lo) * unif(n, 1, 1))
    means = directions * sep / math.sqrt(2)  # independent directions: pairwise distance ~ sep
    x = torch.where(cc[:, :, None], x + torch.gather(means, 1, yb[:, :, None].expand(n, P, D)), x)
    y = torch.where(cc, yb, y)
    flip = unif(n, 1) * p.flip_max
    redrawn = (unif(n, P) * C).floor().long().clamp_max(C - 1)
    y = torch.where(unif(n, P) < flip, redrawn, y)
    return x, y.float()


def _balanced_classes(n: int, m: int, C: int, gen, device) -> "torch.Tensor":
    """(n, m) long labels 0..C-1, each class floor(m/C) or one more times, in a random order per row."""
    import torch
    offset = int(torch.randint(0, C, (1,), generator=gen, device=device))  # which classes get the extra ones
    base = (torch.arange(m, device=device) + offset) % C
    order = torch.rand(n, m, generator=gen, device=device).argsort(dim=1)
    return base[order]


def _balanced(n: int, m: int, gen, device) -> "torch.Tensor":
    """(n, m) labels with floor(m/2) or ceil(m/2) ones, in a random order per row."""
    import torch
    base = (torch.arange(m, device=device) < (m + int(torch.randint(0, 2, (1,), generator=gen, device=device))) // 2)
    order = torch.rand(n, m, generator=gen, device=device).argsort(dim=1)
    return base.float()[order]


def whiten_context_torch(xc: "torch.Tensor", xq: "torch.Tensor", d: int, eps: float = 1e-6,
                         reduction: str = "whiten"):
    """Batched twin of `methods.fit_whitening(..., reduction=...).transform`: PCA to d dims + whitening
    (or the `scaled` / `standardized` reduction) fitted on each episode's context xc (n, k, D), applied
    to xc and its queries xq (n, q, D). Same centring, sign rule, epsilon and zeroed degenerate directions.
    Returns (n, k, d), (n, q, d)."""
    import torch
    from .methods import ONE_SCALE_REDUCTIONS, RANK_RTOL
    if reduction == "standardized":  # methods.standardize_features, per episode
        f_mean = xc.mean(1, keepdim=True)
        f_var = xc.var(1, keepdim=True, unbiased=True) if xc.shape[1] > 1 else torch.zeros_like(f_mean)
        f_scale = torch.sqrt(f_var + torch.quantile(f_var, 0.5, dim=-1, keepdim=True))  # numpy's median
        f_scale = torch.where(f_scale > 0, f_scale, torch.ones_like(f_scale))
        xc, xq = (xc - f_mean) / f_scale, (xq - f_mean) / f_scale
    if reduction in ONE_SCALE_REDUCTIONS:
        unit = lambda t: t / torch.linalg.norm(t, dim=-1, keepdim=True).clamp_min(1e-30)
        xc, xq = unit(xc), unit(xq)
    k = xc.shape[1]
    mean = xc.mean(1, keepdim=True)
    _, S, Vh = torch.linalg.svd(xc - mean, full_matrices=False)  # Vh (n, r, D), r = min(k, D)
    big = Vh.abs().argmax(-1, keepdim=True)
    signs = torch.sign(torch.gather(Vh, 2, big))
    Vh = Vh * torch.where(signs == 0, torch.ones_like(signs), signs)
    var = S**2 / (k - 1)
    r = min(d, Vh.shape[1])
    comps, var_d, vmax = Vh[:, :r], var[:, :r], var[:, :1]
    informative = var_d > RANK_RTOL * vmax
    if reduction in ONE_SCALE_REDUCTIONS:  # one scale per episode: the mean variance over its informative directions
        mean_var = (var_d * informative).sum(1, keepdim=True) / informative.sum(1, keepdim=True).clamp_min(1)
        var_d = mean_var.expand_as(var_d)
    scale = torch.where(informative, 1.0 / torch.sqrt(var_d + eps * vmax), torch.zeros_like(var_d))
    zc = ((xc - mean) @ comps.transpose(1, 2)) * scale[:, None, :]
    zq = ((xq - mean) @ comps.transpose(1, 2)) * scale[:, None, :]
    if r < d:
        zc, zq = (torch.nn.functional.pad(t, (0, d - r)) for t in (zc, zq))
    return zc, zq


def embedding_batch(spec: TaskSpec, n: int, k: int, gen: "torch.Generator", device="cpu", n_classes: int = 2):
    """One training batch of the embedding family at context size k (episodes of n_classes classes):
    whitened context (n, k, d), its labels (n, k), whitened queries (n, q, d) and their labels (n, q)."""
    q = spec.prior.queries
    if n_classes == 2:
        x, y = sample_embedding_episodes_torch(spec, n, gen, device, points=k + q, n_context=k)
    else:
        x, y = sample_multiclass_episodes_torch(spec, n, n_classes, gen, device, points=k + q, n_context=k)
    if spec.prior.rotate:  # drawn after the episodes: rotate=False sees the same batches as before
        x = x @ random_rotation(spec.prior.raw_dims, gen, device)
    zc, zq = whiten_context_torch(x[:, :k], x[:, k:], spec.d, reduction=spec.prior.reduction)
    yc, yq = y[:, :k], y[:, k:]
    if n_classes == 2 and spec.prior.paper_share > 0:  # drawn last: paper_share=0 sees the same batches as before
        zc, yc, zq, yq = _replay_paper_task(spec, zc, yc, zq, yq, gen)
    return zc, yc, zq, yq


def random_rotation(D: int, gen: "torch.Generator", device="cpu") -> "torch.Tensor":
    """A (D, D) orthogonal matrix drawn uniformly (Haar): QR of a Gaussian matrix, R's diagonal signs
    folded into Q so that the draw is not biased towards Q's sign convention."""
    import torch
    q, r = torch.linalg.qr(torch.randn(D, D, generator=gen, device=device))
    return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)


def _replay_paper_task(spec: TaskSpec, zc, yc, zq, yq, gen):
    """Replace a `prior.paper_share` of a batch's episodes by the paper's task as v1 trained on it."""
    import torch
    n, k, d = zc.shape
    x = torch.randn(n, k + zq.shape[1], d, generator=gen, device=zc.device)
    w = torch.randn(n, d, generator=gen, device=zc.device) * spec.weight_multiplier
    u = torch.rand(n, x.shape[1], generator=gen, device=zc.device)
    y = (u < torch.sigmoid(torch.einsum("npd,nd->np", x, w))).float()
    paper = torch.rand(n, 1, generator=gen, device=zc.device) < spec.prior.paper_share
    pick = lambda new, old: torch.where(paper[:, :, None] if old.dim() == 3 else paper, new, old)
    return pick(x[:, :k], zc), pick(y[:, :k], yc), pick(x[:, k:], zq), pick(y[:, k:], yq)


def context_size(spec: TaskSpec, seed: int, step: int) -> int:
    """The embedding family's context size at a training step: uniform over k_min..max_k,
    a pure function of (seed, step) so a resumed run sees the same sizes."""
    lo, hi = spec.prior.k_min, spec.max_k
    return lo + int(np.random.default_rng([seed, step, 7]).integers(0, hi - lo + 1))


def class_count(spec: TaskSpec, seed: int, step: int) -> int:
    """The number of classes of a training step's episodes: uniform over 2..prior.classes, a pure
    function of (seed, step) like `context_size` (always 2 for the binary family)."""
    if spec.prior.classes == 2:
        return 2
    return 2 + int(np.random.default_rng([seed, step, 11]).integers(0, spec.prior.classes - 1))
