"""Stage 4's inner loop: the few-shot methods that turn (context, queries) into P(y=1).

The registry (`REGISTRY`, `get_method(name)`) is the one description of every method: what
it runs on, whether it needs a reasoner or a causal backbone, which modalities it takes,
its PCA size (so which k work: `Method.context_problems`). The grid, `TartClassifier` and
`compare` ask it instead of special-casing names.

Embedding methods take one episode of precomputed embeddings

    Xc (k, D) context embeddings, yc (k,) labels in {0, 1}, Xq (q, D) query embeddings

and return P(label = 1) for every query, shape (q,), behind one entry point,
`run_method(name, Xc, yc, Xq, reasoner=None, **opts)`:

    tart      PCA to d dims + whitening, both fitted on the k context embeddings only
              (`fit_whitening`), then the reasoner reads the k (x, y) pairs and answers
              all q queries in ONE batched call (`Reasoner.predict_proba`).
    lr_probe  scikit-learn LogisticRegression on the same whitened d-dim features: the
              paper's "probe on the same features" baseline.
    lr_scaled lr_probe on the `scaled` reduction (below): the probe on tart_scaled's features.
    tart_scaled  tart on the `scaled` reduction whatever its reasoner's (v1 on the spectrum).
    tart_standardized, lr_standardized  the same two on the `standardized` reduction (below).
    lr_full   LogisticRegression on the full D-dim embeddings, standardised with the
              context's mean/std (no PCA), i.e. what a plain linear probe can do with k points.

Other methods run on raw texts instead, per (dataset, backbone) group, through their
runner (`Method.load_runner`), which loads the backbone once for every (k, seed) of the group;
methods that name the same runner share one run (the grid gives it their cells together):

    icl             the backbone's own in-context learning: a prompt of the k labelled texts, the
                    label words scored after each query (`pipeline.icl`); causal LMs.
    icl_calibrated  icl with contextual calibration (Zhao et al., 2021): the same prompt also
                    scores content-free queries ("N/A", "[MASK]", ""), and each query's label
                    probabilities are divided by their mean and renormalised. Same runner as
                    icl: one LM load and one KV-cached prompt serve both, the calibration
                    costs one extra batch of 3 queries per episode.
    setfit          SetFit (Tunstall et al., 2022): a copy of the sentence encoder fine-tuned
                    contrastively on pairs of the k examples, then a logistic-regression head
                    (`pipeline.setfit_baseline`); encoders. A *tuned* method (`Method.tuned`):
                    it trains backbone weights per episode, which no other method does.

Whitening (`fit_whitening`): centre with the context mean, project on the top-d
principal directions of the context (SVD, deterministic signs), divide every
coordinate by sqrt(variance + eps * top variance). After the projection the context
covariance is diagonal, so this IS whitening with the context covariance (the
regularised inverse square root), with an epsilon the reference lacked. Degenerate
inputs stay finite: directions with (numerically) no context variance — constant
features, duplicate rows, D < d, all-identical rows — are mapped to 0, the value the
reasoner saw for inactive coordinates during its curriculum. The output always has d
columns. TART needs k > d points to fit d directions: k <= d raises `MethodError`
unless `allow_small_k=True` (then only k-1 directions carry data, the rest are 0).

The reduction `scaled` (`fit_whitening(..., reduction="scaled")`, what tart_scaled reads) keeps
what whitening throws away: rows are L2-normalised, projected on the same top-d context
directions, and every coordinate is divided by ONE scale, the root of the mean context variance
over the d directions, so the context's mean coordinate variance is 1 and the variance spectrum
(which directions the context spreads along, and so where a class signal tends to sit) survives.
The reduction `standardized` is `scaled` after each feature is standardised on the context:
centred, and divided by sqrt(its variance + the median feature variance). Causal LMs' pooled
states have a few features with hundreds of times the others' variance, which would otherwise
own the leading directions; the shrinkage toward the median keeps near-constant features from
being blown up by k points (lr_full's per-feature standardisation, made safe for a PCA).
`whiten` (the paper's) is every method's default; a reasoner trained on scaled episodes records
it, and tart reads its reasoner's reduction (`Reasoner.reduction`).

One-class contexts (every context label equal): by default every method raises
`MethodError` (logistic regression is undefined and the reasoner would only echo the
label). `one_class="constant"` instead returns the smoothed class frequency
(k+1)/(k+2) or 1/(k+2) for every query (Laplace's rule of succession), no model run.

Bad inputs raise `MethodError` (a ValueError) naming the problem: wrong ranks or
mismatched shapes, non-binary labels, NaN/inf, k <= d for the PCA methods, k above the
reasoner's trained context, an unknown method or option.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

ONE_CLASS_POLICIES = ("error", "constant")
DEFAULT_EPS = 1e-6
RANK_RTOL = 1e-9  # a direction with variance <= RANK_RTOL * top variance carries no data


class MethodError(ValueError):
    """Bad input to a few-shot method; the message says what and why."""


# ----------------------------------------------------------------------------- whitening


@dataclass
class Whitening:
    """Affine map X -> ((X - mean) @ components.T) * scale, fitted on context embeddings.

    components (d, D) are orthonormal principal directions (rows; zero rows where the
    context has fewer directions than d), scale (d,) is 1/sqrt(var + eps*var_max) for
    directions with data and 0 for the rest.
    """

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (d, D)
    scale: np.ndarray  # (d,)
    variances: np.ndarray  # (d,) context variance along each direction (0 where none)
    eps: float
    n_informative: int  # directions with real context variance
    normalize: bool = False  # L2-normalise each row before the projection (reductions "scaled", "standardized")
    feature_mean: Optional[np.ndarray] = None  # (D,) per-feature standardisation first ("standardized")
    feature_scale: Optional[np.ndarray] = None  # (D,)

    @property
    def d(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, X: Any) -> np.ndarray:
        X = _as_matrix(X, "X")
        if X.shape[1] != self.input_dim:
            raise MethodError(f"X has {X.shape[1]} features; the whitening was fitted on {self.input_dim}")
        if self.feature_scale is not None:
            X = (X - self.feature_mean) / self.feature_scale
        if self.normalize:
            X = _unit_rows(X)
        Z = ((X - self.mean) @ self.components.T) * self.scale
        return Z.astype(np.float64, copy=False)


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norm > 0, norm, 1.0)


def _as_matrix(X: Any, name: str) -> np.ndarray:
    try:
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MethodError(f"{name} is not a numeric array ({e})") from None
    if A.ndim != 2:
        raise MethodError(f"{name} must be 2-D (n, dim); got shape {A.shape}")
    if not np.isfinite(A).all():
        raise MethodError(f"{name} contains NaN or infinite values")
    return A


# the paper's whitening; PCA with one global scale; the same after per-feature standardisation (module docstring)
REDUCTIONS = ("whiten", "scaled", "standardized")
ONE_SCALE_REDUCTIONS = ("scaled", "standardized")  # unit rows first, then one scale for every direction


def standardize_features(Xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `standardized` reduction's first step, fitted on the context (k, D): per-feature mean and
    scale sqrt(variance + median variance); 1 where that is 0 (a constant feature, most features constant)."""
    mean = Xc.mean(axis=0)
    var = Xc.var(axis=0, ddof=1) if Xc.shape[0] > 1 else np.zeros(Xc.shape[1])
    scale = np.sqrt(var + np.median(var))
    return mean, np.where(scale > 0, scale, 1.0)


def fit_whitening(Xc: Any, d: int = 16, eps: float = DEFAULT_EPS, allow_small_k: bool = False,
                  reduction: str = "whiten") -> Whitening:
    """PCA to `d` dims + whitening (or `reduction="scaled"`), fitted on the k context embeddings `Xc` (k, D) only."""
    Xc = _as_matrix(Xc, "Xc")
    if reduction not in REDUCTIONS:
        raise MethodError(f"reduction={reduction!r}: expected one of {', '.join(REDUCTIONS)}")
    normalize = reduction in ONE_SCALE_REDUCTIONS
    feature_mean = feature_scale = None
    if reduction == "standardized":
        feature_mean, feature_scale = standardize_features(Xc)
        Xc = (Xc - feature_mean) / feature_scale
    if normalize:
        Xc = _unit_rows(Xc)
    k, D = Xc.shape
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise MethodError(f"d={d!r}: expected a positive integer")
    if not (eps >= 0 and np.isfinite(eps)):
        raise MethodError(f"eps={eps!r}: expected a finite number >= 0")
    if k < 2:
        raise MethodError(f"k={k}: whitening needs at least 2 context points")
    if k <= d and not allow_small_k:
        raise MethodError(
            f"k={k} context points for d={d} PCA dims: TART needs k > d (k >= {d + 1}); "
            f"lower d, add context points, or pass allow_small_k=True"
        )
    mean = Xc.mean(axis=0)
    # A constant column's floating-point mean can miss its value by an ulp; the residue
    # would then look like a (huge-scale) direction. Take the value itself instead.
    const = np.ptp(Xc, axis=0) == 0
    mean[const] = Xc[0, const]
    C = Xc - mean
    # Economy SVD of the centred context: rows of Vt are the principal directions.
    _, S, Vt = np.linalg.svd(C, full_matrices=False)
    # Deterministic signs (as sklearn's svd_flip): the largest |loading| of each direction is > 0.
    big = np.argmax(np.abs(Vt), axis=1)
    signs = np.sign(Vt[np.arange(Vt.shape[0]), big])
    signs[signs == 0] = 1.0
    Vt = Vt * signs[:, None]
    var = S**2 / (k - 1)
    n = min(d, Vt.shape[0])
    components = np.zeros((d, D))
    variances = np.zeros(d)
    components[:n] = Vt[:n]
    variances[:n] = var[:n]
    vmax = float(var[0]) if var.size else 0.0
    informative = variances > RANK_RTOL * vmax if vmax > 0 else np.zeros(d, dtype=bool)
    scale = np.zeros(d)
    if normalize:  # one scale for every direction: the mean context variance over the d kept ones becomes 1
        scale[informative] = 1.0 / np.sqrt(variances[informative].mean() + eps * vmax) if informative.any() else 0.0
    else:
        scale[informative] = 1.0 / np.sqrt(variances[informative] + eps * vmax)
    components[~informative] = 0.0  # no context variance along it: maps everything to 0
    return Whitening(mean=mean, components=components, scale=scale, variances=variances, eps=float(eps),
                     n_informative=int(informative.sum()), normalize=normalize, feature_mean=feature_mean,
                     feature_scale=feature_scale)


# ----------------------------------------------------------------------------- validation


def check_episode(Xc: Any, yc: Any, Xq: Any, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one episode; returns float64 Xc (k, D), int64 yc (k,) in 0..n_classes-1, float64 Xq (q, D)."""
    Xc = _as_matrix(Xc, "Xc (context embeddings)")
    Xq = _as_matrix(Xq, "Xq (query embeddings)")
    y = np.asarray(yc)
    if y.ndim != 1:
        raise MethodError(f"yc must be 1-D (k,); got shape {y.shape}")
    if y.shape[0] != Xc.shape[0]:
        raise MethodError(f"shape mismatch: Xc has {Xc.shape[0]} rows but yc has {y.shape[0]} labels")
    if Xq.shape[1] != Xc.shape[1]:
        raise MethodError(f"shape mismatch: Xc has {Xc.shape[1]} features, Xq has {Xq.shape[1]}")
    if Xc.shape[0] == 0:
        raise MethodError("empty context: k=0")
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError):
        raise MethodError(f"labels must be 0/1; got values {sorted(set(map(str, y.tolist())))[:5]}") from None
    allowed = np.arange(n_classes, dtype=np.float64)
    if not np.isin(yf, allowed).all():
        bad = sorted(set(np.unique(y[~np.isin(yf, allowed)]).tolist()))[:5]
        if n_classes == 2:
            raise MethodError(f"labels must be binary 0/1; found {bad} (map two classes to 0/1 first, "
                              "or give n_classes for a multi-class task)")
        raise MethodError(f"labels must be class indices 0..{n_classes - 1}; found {bad}")
    return Xc, yf.astype(np.int64), Xq


# ----------------------------------------------------------------------------- registry

EMBEDDINGS = "embeddings"  # runs per cell on precomputed embeddings (`run_method`)
TEXTS = "texts"  # runs per (dataset, backbone, seed) group on the raw texts, through its own runner
DEFAULT_PCA_DIMS = 16  # lr_probe's PCA size without a reasoner (the shipped reasoner's d)

MethodFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Method:
    """What the pipeline needs to know about one few-shot method, in one place.

    runs_on: EMBEDDINGS (`fn(Xc, y, Xq, reasoner=..., **opts)`, one cell at a time) or TEXTS
      (`runner`, a lazy "module:function" target: loads its backbone once per group and
      yields one result per (k, seed) episode; see `load_runner`).
    needs_reasoner: the method reads the context through a trained reasoner, so k is bounded
      by the reasoner's trained context and its PCA size by the reasoner's d.
    needs_causal: the backbone must be a causal LM (an HF id / path of unknown kind may be one).
    modalities: the input modalities it can classify (None: whatever the backbone embeds).
    protocol: the fixed protocol of a TEXTS method's cells (icl: "prompt"); EMBEDDINGS methods
      run under the grid's embedding protocols (None).
    pca_dims: the PCA size fitted on the context, so k must exceed it: an int, "reasoner"
      (the reasoner's trained d), or None (no PCA).
    multiclass: it classifies C > 2 classes (run_method's n_classes); False: binary tasks only.
    backbone_kinds: the backbone kinds it runs on (None: any; an HF id of unknown kind is accepted).
    prompted: its cells prompt an LM with the k examples, so the grid's icl_max_chars and the
      prompt-length validation apply to them (icl, icl_calibrated).
    tuned: it trains backbone weights on each episode's k examples (setfit); tables mark it.
    dtype: the dtype its backbone always runs in (setfit trains in float32); None: the grid's.
    runner_options: what the shared runner does differently for this method (icl_calibrated:
      {"calibrate": True}); read by the runner through `get_method(name).options`.
    """

    name: str
    runs_on: str = EMBEDDINGS
    needs_reasoner: bool = False
    needs_causal: bool = False
    modalities: Optional[tuple[str, ...]] = None
    protocol: Optional[str] = None
    pca_dims: Union[int, str, None] = None
    fn: Optional[MethodFn] = None
    runner: Optional[str] = None
    multiclass: bool = False
    backbone_kinds: Optional[tuple[str, ...]] = None
    prompted: bool = False
    tuned: bool = False
    dtype: Optional[str] = None
    runner_options: tuple[tuple[str, Any], ...] = ()

    @property
    def options(self) -> dict:
        """`runner_options` as a dict."""
        return dict(self.runner_options)

    def requirement(self) -> str:
        """What the method runs on, in words (for validation messages)."""
        kinds = ("causal",) if self.needs_causal else self.backbone_kinds
        what = f"{'/'.join(kinds)} backbones" if kinds else "any backbone"
        return what + (f" with {'/'.join(self.modalities)} inputs" if self.modalities else "")

    def dims(self, reasoner_d: Optional[int] = None) -> Optional[int]:
        """The PCA size the method fits (None: it fits none, or the reasoner's d is not known)."""
        return reasoner_d if self.pca_dims == "reasoner" else self.pca_dims  # type: ignore[return-value]

    def accepts(self, backbone_kind: Optional[str], modality: Optional[str]) -> bool:
        """Whether the method runs on a backbone of this kind (None: unknown) and inputs of this modality."""
        if self.needs_causal and backbone_kind not in ("causal", None):
            return False
        if self.backbone_kinds is not None and backbone_kind is not None and backbone_kind not in self.backbone_kinds:
            return False
        return self.modalities is None or modality in self.modalities

    def context_problems(self, k: int, *, dims: Optional[int] = None, reasoner_d: Optional[int] = None,
                         reasoner_max_k: Optional[int] = None, reasoner: str = "the reasoner",
                         allow_small_k: bool = False) -> list[str]:
        """Why k context examples cannot work for this method ([] if they can).

        dims: the PCA size asked for (default: the method's own, `dims(reasoner_d)`);
        reasoner_d / reasoner_max_k: the reasoner's trained d and context (known ones are
        checked); reasoner: how messages name it (the grid names the checkpoint).
        """
        d = self.dims(reasoner_d) if dims is None else dims
        problems = []
        if self.needs_reasoner and d is not None and reasoner_d is not None and d > reasoner_d:
            problems.append(f"d={d} is larger than {reasoner}'s trained d={reasoner_d}")
        if self.needs_reasoner and reasoner_max_k is not None and k > reasoner_max_k:
            problems.append(f"k={k} exceeds {reasoner}'s trained context (at most {reasoner_max_k} pairs)")
        if d is not None and k <= d and not allow_small_k:
            problems.append(f"k={k} <= d={d}: {self.name}'s PCA to {d} dims needs k > d context examples "
                            f"(k >= {d + 1})")
        return problems

    def check_context(self, k: int, **limits: Any) -> None:
        """`context_problems` as a `MethodError` (nothing when k works)."""
        problems = self.context_problems(k, **limits)
        if problems:
            raise MethodError("; ".join(problems))

    def load_runner(self) -> Callable[..., Iterator[Optional[dict]]]:
        """The TEXTS runner: `runner(dataset, options, backbone, dtype, episodes, batch_size, skip=None)`.

        episodes: (k, seed, method) triples (the methods that share this runner; (k, seed) pairs
        mean this method); yields per episode, in order, {probs, runtime_s, labels, ids} (the test
        split's labels and ids), or None where `skip(i)` is true. Episodes of one (k, seed) next to
        each other share their work. Imported on first use: a runner loads heavy backbones, and
        `methods` is imported by light modules too.
        """
        if self.runner is None:
            raise MethodError(f"method {self.name!r} runs on embeddings: call run_method")
        module, attr = self.runner.split(":")
        return getattr(importlib.import_module(module), attr)


REGISTRY: dict[str, Method] = {}


def register(name: str, *, needs_reasoner: bool = False, pca_dims: Union[int, str, None] = None,
             multiclass: bool = False) -> Callable[[MethodFn], MethodFn]:
    """Decorator registering an EMBEDDINGS method `fn(Xc, y, Xq, reasoner=None, **opts) -> (q,)`."""
    def deco(fn: MethodFn) -> MethodFn:
        _add(Method(name, needs_reasoner=needs_reasoner, pca_dims=pca_dims, fn=fn, multiclass=multiclass))
        return fn

    return deco


def register_text_method(name: str, runner: str, *, protocol: str, needs_causal: bool = False,
                         modalities: Optional[tuple[str, ...]] = None, multiclass: bool = False,
                         backbone_kinds: Optional[tuple[str, ...]] = None, prompted: bool = False,
                         tuned: bool = False, dtype: Optional[str] = None,
                         runner_options: Optional[dict] = None) -> None:
    """Register a TEXTS method by its lazy "module:function" runner (see `Method.load_runner`)."""
    _add(Method(name, runs_on=TEXTS, needs_causal=needs_causal, modalities=modalities, protocol=protocol,
                multiclass=multiclass, runner=runner, backbone_kinds=backbone_kinds, prompted=prompted,
                tuned=tuned, dtype=dtype, runner_options=tuple(sorted((runner_options or {}).items()))))


def _add(method: Method) -> None:
    if method.name in REGISTRY:
        raise MethodError(f"method {method.name!r} is already registered")
    REGISTRY[method.name] = method


def known_methods(runs_on: Optional[str] = None, needs_reasoner: Optional[bool] = None,
                  tuned: Optional[bool] = None) -> list[str]:
    """Registered method names (sorted), optionally only those that run on `runs_on` / need a reasoner /
    are (not) tuned."""
    return sorted(m.name for m in REGISTRY.values()
                  if (runs_on is None or m.runs_on == runs_on)
                  and (needs_reasoner is None or m.needs_reasoner == needs_reasoner)
                  and (tuned is None or m.tuned == tuned))


TUNED_MARK = " (tuned)"  # how tables mark a method that trains backbone weights per episode


def table_label(label: str) -> str:
    """A method label as result tables show it: a tuned method's (setfit) marked with TUNED_MARK
    (labels may carry a reasoner "@..." or protocol "/..." suffix)."""
    base = str(label).split("@")[0].split("/")[0]
    return f"{label}{TUNED_MARK}" if base in REGISTRY and REGISTRY[base].tuned else str(label)


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(known_methods())}")
    return REGISTRY[name]


def run_method(name: str, Xc: Any, yc: Any, Xq: Any, reasoner: Any = None, one_class: str = "error",
               n_classes: int = 2, **opts: Any) -> np.ndarray:
    """P(label=1) for each query (q,) by the EMBEDDINGS method `name`; with n_classes = C > 2,
    P(label=c) for each query and class (q, C), rows summing to 1. `opts` go to the method.

    tart: d (default reasoner.d), eps, allow_small_k, reduction (default the reasoner's).
    lr_probe: d, eps, allow_small_k, C, max_iter, reduction (default whiten). lr_full: C, max_iter.
    `reasoner` is required by tart (see `load_reasoner`).
    Multi-class: tart composes the binary reasoner one-vs-rest (the C episodes in one batched
    call, normalised); the LR probes are multinomial.
    """
    method = get_method(name)
    if method.runs_on != EMBEDDINGS:
        raise MethodError(f"method {name!r} runs on the raw texts of a (dataset, backbone) group, not on "
                          f"embeddings (its runner: {method.runner}); run_method takes "
                          f"{', '.join(known_methods(EMBEDDINGS))}")
    if one_class not in ONE_CLASS_POLICIES:
        raise MethodError(f"one_class={one_class!r}: expected one of {', '.join(ONE_CLASS_POLICIES)}")
    if n_classes < 2:
        raise MethodError(f"n_classes={n_classes}: expected >= 2")
    if n_classes > 2 and not method.multiclass:
        raise MethodError(f"method {name!r} is binary only; n_classes={n_classes}")
    Xc, y, Xq = check_episode(Xc, yc, Xq, n_classes)
    if method.needs_reasoner and reasoner is None:
        raise MethodError(f"method {name!r} needs a reasoner (pipeline.reasoner.load_reasoner())")
    if y.min() == y.max():
        k, c = len(y), int(y[0])
        if one_class == "error":
            raise MethodError(
                f"one-class context: all {k} context labels are {c}; every method needs both classes "
                f"(use class-balanced context sets, or one_class='constant')"
            )
        if n_classes > 2:  # Laplace's rule over C classes
            row = np.full(n_classes, 1 / (k + n_classes))
            row[c] = (k + 1) / (k + n_classes)
            return np.tile(row, (Xq.shape[0], 1))
        p1 = (k + 1) / (k + 2) if c == 1 else 1 / (k + 2)
        return np.full(Xq.shape[0], p1)
    if Xq.shape[0] == 0:
        return np.zeros((0, n_classes)) if n_classes > 2 else np.zeros(0)
    if n_classes > 2:
        p = np.asarray(method.fn(Xc, y, Xq, reasoner=reasoner, n_classes=n_classes, **opts), dtype=np.float64)
        return p.reshape(Xq.shape[0], n_classes)
    p = method.fn(Xc, y, Xq, reasoner=reasoner, **opts)
    return np.asarray(p, dtype=np.float64).reshape(Xq.shape[0])


def _full_proba(clf: Any, Xq: np.ndarray, n_classes: int) -> np.ndarray:
    """A fitted sklearn classifier's probabilities as (q, n_classes), columns 0..C-1 (a class absent
    from the context gets probability 0)."""
    out = np.zeros((Xq.shape[0], n_classes))
    out[:, clf.classes_.astype(np.int64)] = clf.predict_proba(Xq)
    return out


def _check_opts(method: str, opts: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise MethodError(f"method {method!r}: unknown option(s) {unknown}; allowed: {', '.join(allowed)}")


def _logreg(C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression  # ~3 s to import; only the lr_* methods need it

    return LogisticRegression(C=C, max_iter=max_iter)


@register("tart", needs_reasoner=True, pca_dims="reasoner", multiclass=True)
def _tart(Xc: np.ndarray, y: np.ndarray, Xq: np.ndarray, reasoner: Any = None, **opts: Any) -> np.ndarray:
    _check_opts("tart", opts, ("d", "eps", "allow_small_k", "n_classes", "multiclass", "reduction"))
    d = int(opts.get("d", reasoner.d))
    REGISTRY["tart"].check_context(Xc.shape[0], dims=d, reasoner_d=reasoner.d, reasoner_max_k=reasoner.max_k,
                                   allow_small_k=opts.get("allow_small_k", False))
    # the features the reasoner was trained on (v1: whitened) unless the caller asks otherwise
    reduction = opts.get("reduction", getattr(reasoner, "reduction", "whiten"))
    w = fit_whitening(Xc, d=d, eps=opts.get("eps", DEFAULT_EPS), allow_small_k=opts.get("allow_small_k", False),
                      reduction=reduction)
    Zc, Zq = w.transform(Xc), w.transform(Xq)
    C = int(opts.get("n_classes", 2))
    if C > 2:
        return classify_classes(reasoner, Zc, y, Zq, C, mode=opts.get("multiclass", "auto"))
    # One call for all q queries: the reasoner answers them in a single masked pass.
    return reasoner.predict_proba(Zc[None].astype(np.float32), y[None], Zq[None].astype(np.float32))[0]


@register("tart_ovr", needs_reasoner=True, pca_dims="reasoner", multiclass=True)
def _tart_ovr(Xc: np.ndarray, y: np.ndarray, Xq: np.ndarray, reasoner: Any = None, **opts: Any) -> np.ndarray:
    """tart with C > 2 classes always composed one-vs-rest: the baseline a native multi-class
    reasoner must beat, on the same reasoner, features and episodes (binary tasks: tart itself)."""
    return _tart(Xc, y, Xq, reasoner=reasoner, **{**opts, "multiclass": "ovr"})


MULTICLASS_MODES = ("auto", "native", "ovr")


def classify_classes(reasoner: Any, Zc: np.ndarray, y: np.ndarray, Zq: np.ndarray, n_classes: int,
                     mode: str = "auto", float64: bool = False) -> np.ndarray:
    """(q, C) class probabilities of C = n_classes classes from a reasoner on whitened features.

    mode "native": one pass of a multi-class reasoner (`Reasoner.predict_proba_classes`; C up to
    its `classes`); "ovr": the one-vs-rest composition of its binary answers (`one_vs_rest`, any C);
    "auto": native when the reasoner classifies C classes natively, else one-vs-rest."""
    if mode not in MULTICLASS_MODES:
        raise MethodError(f"multiclass={mode!r}: expected one of {', '.join(MULTICLASS_MODES)}")
    limit = int(getattr(reasoner, "classes", 2))
    if mode == "native" and n_classes > limit:
        raise MethodError(f"multiclass='native' with {n_classes} classes: this reasoner classifies at most {limit} "
                          f"natively" + (" (a binary reasoner)" if limit == 2 else "")
                          + "; use multiclass='ovr' (one-vs-rest) or a reasoner trained with more classes")
    if mode == "ovr" or n_classes > limit:
        return one_vs_rest(reasoner, Zc, y, Zq, n_classes, float64=float64)
    dtype = np.float64 if float64 else np.float32
    p = reasoner.predict_proba_classes(Zc[None].astype(dtype), y[None], Zq[None].astype(dtype), n_classes,
                                       **({"float64": True} if float64 else {}))[0]
    return p.astype(np.float64)


def one_vs_rest(reasoner: Any, Zc: np.ndarray, y: np.ndarray, Zq: np.ndarray, n_classes: int,
                float64: bool = False) -> np.ndarray:
    """(q, C) class probabilities from the binary reasoner: episode c labels class c 1 and the rest 0,
    all C episodes in one batched call, each query's C answers normalised to sum to 1."""
    yc = (y[None, :] == np.arange(n_classes)[:, None]).astype(np.int64)
    dtype = np.float64 if float64 else np.float32
    p = reasoner.predict_proba(np.repeat(Zc[None], n_classes, 0).astype(dtype), yc,
                               np.repeat(Zq[None], n_classes, 0).astype(dtype), **({"float64": True} if float64 else {}))
    p = np.clip(p.T.astype(np.float64), 1e-12, None)
    return p / p.sum(axis=1, keepdims=True)


PAPER_DIMS = 8  # the reference's PCA size for image and audio embeddings, each coordinate given twice


class _EachCoordinateTwice:
    """A reasoner reading every whitened coordinate twice: (.., d) inputs become [z, z] (.., 2d)."""

    def __init__(self, reasoner: Any):
        self._reasoner = reasoner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reasoner, name)

    def predict_proba(self, xc: np.ndarray, yc: np.ndarray, xq: np.ndarray, **kw: Any) -> np.ndarray:
        return self._reasoner.predict_proba(np.concatenate([xc, xc], -1), yc, np.concatenate([xq, xq], -1), **kw)

    def predict_proba_classes(self, xc: np.ndarray, yc: np.ndarray, xq: np.ndarray, *a: Any, **kw: Any) -> np.ndarray:
        return self._reasoner.predict_proba_classes(np.concatenate([xc, xc], -1), yc, np.concatenate([xq, xq], -1),
                                                    *a, **kw)


@register("tart_pca8x2", needs_reasoner=True, pca_dims=PAPER_DIMS, multiclass=True)
def _tart_pca8x2(Xc: np.ndarray, y: np.ndarray, Xq: np.ndarray, reasoner: Any = None, **opts: Any) -> np.ndarray:
    """tart in the reference's setting for image and audio backbones: PCA + whitening to 8 dims fitted
    on the context, each whitened coordinate given twice (z1..z8, z1..z8) to fill the reasoner's 16
    inputs (plain tart fits 16 directions). Options as tart's, except d (fixed at 8)."""
    if "d" in opts:
        raise MethodError(f"method 'tart_pca8x2' fits d={PAPER_DIMS} by definition; use tart for another d")
    if 2 * PAPER_DIMS > reasoner.d:
        raise MethodError(f"tart_pca8x2 gives {2 * PAPER_DIMS} inputs; this reasoner takes at most {reasoner.d}")
    return _tart(Xc, y, Xq, reasoner=_EachCoordinateTwice(reasoner), d=PAPER_DIMS, **opts)


@register("lr_probe", pca_dims=DEFAULT_PCA_DIMS, multiclass=True)
def _lr_probe(Xc: np.ndarray, y: np.ndarray, Xq: np.ndarray, reasoner: Any = None, **opts: Any) -> np.ndarray:
    _check_opts("lr_probe", opts, ("d", "eps", "allow_small_k", "C", "max_iter", "n_classes", "reduction"))
    d = int(opts.get("d", reasoner.d if reasoner is not None else DEFAULT_PCA_DIMS))
    REGISTRY["lr_probe"].check_context(Xc.shape[0], dims=d, allow_small_k=opts.get("allow_small_k", False))
    w = fit_whitening(Xc, d=d, eps=opts.get("eps", DEFAULT_EPS), allow_small_k=opts.get("allow_small_k", False),
                      reduction=opts.get("reduction", "whiten"))
    clf = _logreg(float(opts.get("C", 1.0)), int(opts.get("max_iter", 1000))).fit(w.transform(Xc), y)
    if int(opts.get("n_classes", 2)) > 2:  # multinomial (lbfgs' default for several classes)
        return _full_proba(clf, w.transform(Xq), int(opts["n_classes"]))
    return clf.predict_proba(w.transform(Xq))[:, 1]


def _on_reduction(name: str, base: MethodFn, base_name: str, reduction: str, doc: str) -> MethodFn:
    """Method `name`: `base` (tart or lr_probe) on `reduction` by definition, whatever the reasoner's."""
    def method(Xc: np.ndarray, y: np.ndarray, Xq: np.ndarray, reasoner: Any = None, **opts: Any) -> np.ndarray:
        if "reduction" in opts:
            raise MethodError(f"method '{name}' fits reduction='{reduction}' by definition; use {base_name} for another")
        return base(Xc, y, Xq, reasoner=reasoner, reduction=reduction, **opts)

    method.__name__, method.__doc__ = f"_{name}", doc
    return method


for _reduction, _tart_doc, _lr_doc in (
        ("scaled",
         "tart on the `scaled` reduction whatever reduction its reasoner was trained on: v1 reading the\n"
         "variance spectrum that whitening discards (what the reduction alone is worth, no training).",
         "lr_probe on the `scaled` reduction: the probe on the features tart_scaled (or a reasoner trained\n"
         "on scaled episodes) reads."),
        ("standardized",
         "tart on the `standardized` reduction whatever reduction its reasoner was trained on (v1 reads\n"
         "it with no training): the scaled reduction, after each feature is standardised on the context.",
         "lr_probe on the `standardized` reduction: the probe on tart_standardized's features.")):
    register(f"tart_{_reduction}", needs_reasoner=True, pca_dims="reasoner", multiclass=True)(
        _on_reduction(f"tart_{_reduction}", _tart, "tart", _reduction, _tart_doc))
    register(f"lr_{_reduction}", pca_dims=DEFAULT_PCA_DIMS, multiclass=True)(
        _on_reduction(f"lr_{_reduction}", _lr_probe, "lr_probe", _reduction, _lr_doc))


@register("lr_full", multiclass=True)
def _lr_full(Xc: np.ndarray, y: np.ndarray, Xq: np.ndarray, reasoner: Any = None, **opts: Any) -> np.ndarray:
    _check_opts("lr_full", opts, ("C", "max_iter", "n_classes"))
    mu = Xc.mean(axis=0)
    sd = Xc.std(axis=0)
    sd[sd <= 1e-12 * max(float(sd.max()), 1e-300)] = 1.0  # constant columns: centred to 0, not blown up
    clf = _logreg(float(opts.get("C", 1.0)), int(opts.get("max_iter", 1000))).fit((Xc - mu) / sd, y)
    if int(opts.get("n_classes", 2)) > 2:
        return _full_proba(clf, (Xq - mu) / sd, int(opts["n_classes"]))
    return clf.predict_proba((Xq - mu) / sd)[:, 1]


# The in-context-learning baseline: the causal backbone reads a prompt of the k labelled texts and
# scores the two label words (pipeline.icl); one LM load serves every (k, seed) of a group.
register_text_method("icl", "pipeline.icl:score_group", protocol="prompt", needs_causal=True, modalities=("text",),
                     multiclass=True, prompted=True)
# icl with contextual calibration: the same runner, so the same LM load, prompt and KV cache as icl's
register_text_method("icl_calibrated", "pipeline.icl:score_group", protocol="prompt", needs_causal=True,
                     modalities=("text",), multiclass=True, prompted=True, runner_options={"calibrate": True})
# SetFit: a copy of the sentence encoder fine-tuned per episode (contrastive pairs of the k examples) + an LR head
register_text_method("setfit", "pipeline.setfit_baseline:run_group", protocol="finetune", backbone_kinds=("encoder",),
                     modalities=("text",), multiclass=True, tuned=True, dtype="float32")
