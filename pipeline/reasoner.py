"""The reasoning module: a small GPT-2-style Transformer over (x, y) sequences.

Input sequence x1, y1, x2, y2, ...: an x token is a d-vector, a y token is
[y, 0, ..., 0]. A linear read-in maps every token to the model width, a causal
pre-LayerNorm decoder stack with learned positions follows, and a linear read-out
gives one logit per token; logits are read at the x positions, so the logit at x_i
sees (x1, y1, ..., x_i) only. No token-embedding table exists at all.

A multi-class reasoner (`classes` = C_max > 2) reads a label c as the one-hot token e_c
over the first C_max coordinates and gives C_max logits per x token; an episode of
C <= C_max classes reads the first C (a softmax over them). `classes=2` is the binary
reasoner above (v1), recorded in checkpoints exactly as before the field existed.

Inference answers q queries of an episode in one pass: the queries are appended
after the k context pairs, all share position 2k (the slot of the (k+1)-th x), and
an attention mask lets each query see the context and itself only. This gives the
same numbers as q separate passes, at the cost of one.

Checkpoints are `model.safetensors` + `config.json`, loaded strictly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .synthetic import trained_task

SIZES = {
    # name: (n_layer, n_head, n_embd)
    "tiny": (3, 2, 64),
    "small": (6, 4, 128),
    "medium": (8, 8, 256),  # the shipped default reasoner
    "standard": (12, 8, 256),
}

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ARCHITECTURE = "tart-reasoner-v1"


class ReasonerError(ValueError):
    """Bad input to the reasoner or a checkpoint that does not fit it."""


@dataclass
class ReasonerConfig:
    d: int = 16  # input dimension
    max_points: int = 258  # longest (x, y) sequence trained on; k + 1 <= max_points
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 128
    classes: int = 2  # 2: binary (one logit, the label in coordinate 0); C_max > 2: one-hot labels, C_max logits

    def validate(self) -> None:
        for name in ("d", "max_points", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ReasonerError(f"reasoner {name}={getattr(self, name)}: expected >= 1")
        if self.n_embd % self.n_head:
            raise ReasonerError(f"reasoner n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.classes < 2:
            raise ReasonerError(f"reasoner classes={self.classes}: expected >= 2")
        if self.classes > self.d:
            raise ReasonerError(f"reasoner classes={self.classes}: the one-hot label token needs d >= classes "
                                f"(d={self.d})")

    def record(self) -> dict:
        """The config as checkpoints record it: a binary reasoner without `classes`, as before it existed."""
        rec = asdict(self)
        if self.classes == 2:
            rec.pop("classes")
        return rec

    @classmethod
    def of_size(cls, size: str, **kw) -> "ReasonerConfig":
        if size not in SIZES:
            raise ReasonerError(f"unknown reasoner size {size!r}; known: {', '.join(SIZES)}")
        n_layer, n_head, n_embd = SIZES[size]
        return cls(n_layer=n_layer, n_head=n_head, n_embd=n_embd, **kw)


class Block(nn.Module):
    def __init__(self, cfg: ReasonerConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.fc_out = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = h.shape
        q, k, v = self.qkv(self.ln_1(h)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, c))
        return h + self.fc_out(F.gelu(self.fc(self.ln_2(h)), approximate="tanh"))


class ReasonerModel(nn.Module):
    def __init__(self, cfg: ReasonerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.read_in = nn.Linear(cfg.d, cfg.n_embd)
        self.pos = nn.Embedding(2 * cfg.max_points, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.read_out = nn.Linear(cfg.n_embd, 1 if cfg.classes == 2 else cfg.classes)
        self.apply(self._init)
        # GPT-2 scaling of residual projections keeps early activations bounded in depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("fc_out.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def interleave(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, n, d) points and (B, n) labels -> (B, 2n, d) tokens x1, y1, x2, y2, ..."""
        b, n, d = x.shape
        y_tok = torch.zeros_like(x)
        if self.cfg.classes == 2:
            y_tok[:, :, 0] = y.to(x.dtype)
        else:  # one-hot over the first `classes` coordinates
            y_tok.scatter_(2, y.long()[:, :, None], 1.0)
        return torch.stack([x, y_tok], dim=2).reshape(b, 2 * n, d)

    def forward_tokens(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits per token: (B, T) for a binary reasoner, (B, T, classes) for a multi-class one."""
        h = self.read_in(tokens) + self.pos(positions)
        for blk in self.blocks:
            h = blk(h, mask)
        out = self.read_out(self.ln_f(h))
        return out.squeeze(-1) if self.cfg.classes == 2 else out

    def forward(self, x: torch.Tensor, y: torch.Tensor, n_context: int | None = None) -> torch.Tensor:
        """Training pass: logits (B, n) at every x position, each seeing only earlier pairs; or,
        with `n_context`, logits (B, n - n_context) for the points after the first n_context,
        each conditioned on those n_context pairs only (the inference pass, `query_logits`)."""
        if n_context is not None:
            return self.query_logits(x[:, :n_context], y[:, :n_context], x[:, n_context:])
        tokens = self.interleave(x, y)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.forward_tokens(tokens, positions, None)[:, ::2]

    def query_logits(self, xc: torch.Tensor, yc: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """Logits (B, q) (multi-class: (B, q, classes)) for q queries, each conditioned on the k context pairs only."""
        b, k, d = xc.shape
        q = xq.shape[1]
        ctx = self.interleave(xc, yc)
        tokens = torch.cat([ctx, xq], dim=1)
        positions = torch.cat(
            [torch.arange(2 * k, device=xc.device), torch.full((q,), 2 * k, device=xc.device)]
        )
        t = 2 * k + q
        mask = torch.ones(t, t, dtype=torch.bool, device=xc.device).tril()
        mask[2 * k :, 2 * k :] = torch.eye(q, dtype=torch.bool, device=xc.device)
        return self.forward_tokens(tokens, positions, mask)[:, 2 * k :]


def widen_inputs(state: dict, d: int) -> dict:
    """A reasoner's weights taking d inputs instead of its own (fewer): the read-in's new columns are
    zero, so the widened reasoner answers exactly as the original on inputs whose extra coordinates
    are anything (it ignores them until fine-tuning teaches it to read them). Net2Net-style growth
    for training a d=32 reasoner from v1 instead of from scratch."""
    w = state["read_in.weight"]
    if d < w.shape[1]:
        raise ReasonerError(f"widen_inputs to d={d}: the reasoner already takes {w.shape[1]} inputs")
    return {**state, "read_in.weight": torch.cat([w, w.new_zeros(w.shape[0], d - w.shape[1])], 1)}


def save_checkpoint(model: ReasonerModel, directory: str | os.PathLike, extra: dict | None = None) -> None:
    """Write model.safetensors + config.json atomically (temp names, then rename)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"architecture": ARCHITECTURE, "reasoner": model.cfg.record(), **(extra or {})}
    tmp_w, tmp_c = out / f".{WEIGHTS_FILE}.tmp", out / f".{CONFIG_FILE}.tmp"
    save_file(state, str(tmp_w), metadata={"architecture": ARCHITECTURE})
    tmp_c.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_w, out / WEIGHTS_FILE)
    os.replace(tmp_c, out / CONFIG_FILE)


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ReasonerError(f"{path}: no reasoner config (expected {CONFIG_FILE} next to {WEIGHTS_FILE})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReasonerError(f"{path}: not valid JSON ({e})") from None
    if meta.get("architecture") != ARCHITECTURE:
        raise ReasonerError(
            f"{path}: architecture {meta.get('architecture')!r} is not a TART reasoner (expected {ARCHITECTURE!r})"
        )
    return meta


def load_model(directory: str | os.PathLike, device: str = "cpu") -> ReasonerModel:
    """Strict load: a missing, unexpected or wrongly shaped tensor is an error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_checkpoint_config(directory)
    try:
        cfg = ReasonerConfig(**meta["reasoner"])
    except TypeError as e:
        raise ReasonerError(f"{directory}: reasoner config does not fit this code ({e})") from None
    model = ReasonerModel(cfg)
    wpath = Path(directory) / WEIGHTS_FILE
    if not wpath.is_file():
        raise ReasonerError(f"{wpath}: weights file missing")
    try:
        state = load_file(str(wpath), device=device)
    except (SafetensorError, OSError, Exception) as e:  # safetensors raises several types on corruption
        raise ReasonerError(f"{wpath}: cannot read weights ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3]]
        raise ReasonerError(
            f"{wpath}: checkpoint does not match the reasoner config {meta['reasoner']} "
            f"({len(missing)} missing e.g. {missing[:3]}, {len(unexpected)} unexpected e.g. {unexpected[:3]}, "
            f"{len(wrong)} of wrong shape e.g. {shapes})"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


ASSETS = Path(__file__).resolve().parent / "assets"
# The reasoners shipped with the project, by name (folders under assets/). v1 is the
# paper-faithful one; `shipped.json` declares which one `load_reasoner()` gives.
SHIPPED = {"v1": "reasoner", "v2": "reasoner_v2"}


def default_reasoner_name() -> str:
    return json.loads((ASSETS / "shipped.json").read_text())["default"]


def default_checkpoint_dir() -> Path:
    return ASSETS / SHIPPED[default_reasoner_name()]


def shipped_dir(name_or_path: str | os.PathLike) -> Path:
    """A shipped reasoner's folder by name ("v1", "v2", "default"), or the path itself."""
    name = str(name_or_path)
    if name == "default":
        return default_checkpoint_dir()
    if name in SHIPPED:
        folder = ASSETS / SHIPPED[name]
        if not (folder / WEIGHTS_FILE).is_file():
            raise ReasonerError(f"shipped reasoner {name!r} is not in this install ({folder} has no {WEIGHTS_FILE})")
        return folder
    return Path(name_or_path)


class Reasoner:
    """A trained reasoner behind a numpy API. Use `load_reasoner()` to get one."""

    def __init__(self, model: ReasonerModel, meta: dict | None = None, query_chunk: int = 1024,
                 source: str | None = None):
        self.model = model.eval()
        self.meta = meta or {}
        self.query_chunk = query_chunk
        self.source = source  # the checkpoint folder it was loaded from, if any

    def __deepcopy__(self, memo: dict) -> "Reasoner":
        return self  # frozen weights: copies (sklearn's clone) share them

    def __reduce__(self):
        """Pickled as "load it again from its folder" when it has one (no weights in the pickle)."""
        if self.source:
            return (load_reasoner, (self.source, str(self.device)))
        return super().__reduce__()

    @property
    def d(self) -> int:
        return self.model.cfg.d

    @property
    def max_k(self) -> int:
        return self.model.cfg.max_points - 1

    @property
    def reduction(self) -> str:
        """How the composition reduces embeddings for this reasoner: the reduction its training episodes
        recorded (`task.prior.reduction` of the embedding family; `methods.REDUCTIONS`), else the
        paper's whitening (v1, and every reasoner trained before reductions existed)."""
        task = trained_task(self.meta)
        return task.prior.reduction if task is not None else "whiten"

    @property
    def classes(self) -> int:
        """The most classes one episode may have: 2 for a binary reasoner (v1), C_max for a multi-class one."""
        return self.model.cfg.classes

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check(self, xc: np.ndarray, yc: np.ndarray, xq: np.ndarray, n_classes: int = 2) -> None:
        if xc.ndim != 3 or xq.ndim != 3 or yc.ndim != 2:
            raise ReasonerError(
                f"expected x_context (B, k, d), y_context (B, k), x_query (B, q, d); got shapes "
                f"{xc.shape}, {yc.shape}, {xq.shape}"
            )
        b, k, d = xc.shape
        if yc.shape != (b, k) or xq.shape[0] != b or xq.shape[2] != d:
            raise ReasonerError(
                f"inconsistent shapes: x_context {xc.shape}, y_context {yc.shape}, x_query {xq.shape}"
            )
        if d > self.d:
            raise ReasonerError(f"d={d} is larger than the reasoner's trained d={self.d}; reduce to <= {self.d} dims")
        if k < 1:
            raise ReasonerError("k=0: at least one context pair is needed")
        if k > self.max_k:
            raise ReasonerError(
                f"k={k} exceeds the reasoner's trained context: at most {self.max_k} context pairs "
                f"(max_points={self.model.cfg.max_points} includes the query)"
            )
        if n_classes == 2 and not np.isin(yc, (0, 1)).all():
            raise ReasonerError("y_context must hold binary labels in {0, 1}")
        if n_classes > 2 and not np.isin(yc, np.arange(n_classes)).all():
            raise ReasonerError(f"y_context must hold class labels in 0..{n_classes - 1}")
        if not (np.isfinite(xc).all() and np.isfinite(xq).all()):
            raise ReasonerError("x_context / x_query contain NaN or infinite values")

    @torch.no_grad()
    def predict_proba(self, x_context, y_context, x_query, float64: bool = False) -> np.ndarray:
        """P(label = 1) for every query: arrays (B, k, d), (B, k), (B, q, d) -> (B, q).

        float64=True runs a float64 copy of the model (made once): a query's answer then depends
        on the other queries of the call only at float64 rounding (float32 kernels pick their
        blocking by shape, which moves answers by ~1e-7)."""
        if self.classes == 2:
            return self._run(x_context, y_context, x_query, 2, float64, torch.sigmoid)
        return self.predict_proba_classes(x_context, y_context, x_query, 2, float64=float64)[..., 1]

    @torch.no_grad()
    def predict_proba_classes(self, x_context, y_context, x_query, n_classes: int,
                              float64: bool = False) -> np.ndarray:
        """Class probabilities (B, q, C) of an episode of C = n_classes classes, labels 0..C-1, in one
        pass: the softmax over the multi-class reasoner's first C logits. A binary reasoner answers
        C = 2 only (for more classes compose it one-vs-rest: `methods.one_vs_rest`)."""
        if not 2 <= n_classes <= self.classes:
            raise ReasonerError(
                f"n_classes={n_classes}: this reasoner classifies 2..{self.classes} classes natively"
                + (" (a binary reasoner: compose it one-vs-rest for more, methods.one_vs_rest)" if self.classes == 2
                   else ""))
        if self.classes == 2:
            p1 = self._run(x_context, y_context, x_query, 2, float64, torch.sigmoid)
            return np.stack([1 - p1, p1], axis=-1)
        return self._run(x_context, y_context, x_query, n_classes, float64,
                         lambda z: torch.softmax(z[..., :n_classes], dim=-1))

    def _run(self, x_context, y_context, x_query, n_classes: int, float64: bool, link) -> np.ndarray:
        xc, yc, xq = (np.asarray(a) for a in (x_context, y_context, x_query))
        self._check(xc, yc, xq, n_classes)
        pad = self.d - xc.shape[2]
        dev = self.device
        model = self._float64_model() if float64 else self.model
        dtype = np.float64 if float64 else np.float32
        to_t = lambda a: torch.as_tensor(np.asarray(a, dtype=dtype), device=dev)
        xc_t, yc_t, xq_t = to_t(xc), to_t(yc), to_t(xq)
        if pad:  # a smaller d is the trained task with the remaining coordinates at zero
            xc_t, xq_t = F.pad(xc_t, (0, pad)), F.pad(xq_t, (0, pad))
        out = [
            link(model.query_logits(xc_t, yc_t, xq_t[:, s : s + self.query_chunk]))
            for s in range(0, xq_t.shape[1], self.query_chunk)
        ]
        return torch.cat(out, dim=1).cpu().numpy().astype(dtype, copy=False)

    def _float64_model(self) -> ReasonerModel:
        if getattr(self, "_model64", None) is None:
            import copy

            self._model64 = copy.deepcopy(self.model).double().eval()
        return self._model64

    def predict(self, x_context, y_context, x_query) -> np.ndarray:
        return (self.predict_proba(x_context, y_context, x_query) >= 0.5).astype(np.int64)


def load_reasoner(path: str | os.PathLike | None = None, device: str = "cpu") -> Reasoner:
    """Load a shipped reasoner by name ("v1", "v2") or a checkpoint directory (default: the
    shipped one `shipped.json` declares the default)."""
    directory = shipped_dir(path) if path is not None else default_checkpoint_dir()
    if not directory.exists():
        raise ReasonerError(f"reasoner checkpoint {directory} does not exist")
    return Reasoner(load_model(directory, device=device), meta=read_checkpoint_config(directory),
                    source=str(directory.resolve()))
