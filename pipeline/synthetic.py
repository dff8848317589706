"""The synthetic logistic-regression task the reasoner is trained on.

An episode draws a fresh task w ~ N(0, I_d) * scale, points x ~ N(0, I_d) and labels
y ~ Bernoulli(sigmoid(x . w)). We store the uniform draw `u` behind each label
(y = u < sigmoid(x . w)) instead of only y: the training curriculum zeroes the
inactive coordinates of x and w and must relabel with the *same* noise, so the
curriculum can be applied at training time without regenerating data.

Two samplers with the same distribution: numpy (stage 1 writes shards; byte-exact
given a seed) and torch (fresh episodes straight on the training device).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TaskSpec:
    d: int = 16  # dimension of x and w
    points: int = 258  # (x, y) pairs per episode
    weight_multiplier: float = 10.0  # w ~ N(0, I) * multiplier
    variable_multiplier: bool = False  # per-episode multiplier drawn from {1..weight_multiplier}

    def validate(self) -> None:
        if self.d < 1:
            raise ValueError(f"d={self.d}: expected d >= 1")
        if self.points < 2:
            raise ValueError(f"points={self.points}: expected at least 2 points per episode")
        if self.weight_multiplier <= 0:
            raise ValueError(f"weight_multiplier={self.weight_multiplier}: expected > 0")
        if self.variable_multiplier and self.weight_multiplier < 1:
            raise ValueError("variable_multiplier needs weight_multiplier >= 1")


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
