"""`TartClassifier`: TART as a scikit-learn few-shot classifier.

    clf = TartClassifier(backbone="minilm-l6").fit(texts_k, labels_k)   # k labelled examples
    clf.predict_proba(texts)  # (n, C), columns in the order of clf.classes_
    clf.predict(texts)        # labels drawn from clf.classes_

`fit` does no training: it embeds the k examples with the frozen backbone, fits the
PCA + whitening on them (`pipeline.methods.fit_whitening`) and keeps them as the
reasoner's context. `predict_proba` embeds the queries, whitens them with the same
map and answers all of them in one batched reasoner call.

Classes: any labels sklearn accepts (`classes_` is their sorted array). Two classes: the
reasoner sees classes_[1] as y=1. C > 2 classes (`multiclass`): a multi-class reasoner
answers natively, one pass for all C, up to its `classes`; a binary one (v1) is composed
one-vs-rest (one episode per class, all C in one batched call, normalised to sum to 1).
`multiclass="native"` refuses more classes than the reasoner takes; "ovr" forces one-vs-rest.

Inputs: those of the backbone's modality (`pipeline.modality`): texts (list of str) for
text backbones, images for vision backbones, 16 kHz mono float clips for audio backbones,
or — with `backbone=None` — a numeric array (n, dim) of precomputed embeddings, validated
as every scikit-learn estimator validates X (NaN / inf, sparse, complex, empty, 1-D are
refused with sklearn's messages). `backbone` may also be a loaded `Backbone` object.

k <= d context examples: with `allow_small_k=True` (default) the PCA keeps the k-1
directions the context has and the rest are zero (what the reasoner saw for inactive
coordinates in its curriculum); False makes it an error, as the grid's tart cells do.

Cheap to copy: `clone` (hence GridSearchCV and friends) shares loaded backbones and
reasoners instead of copying or reloading them (process-wide caches by name), and a
fitted classifier pickles without the backbone and reasoner weights (reloaded on first use).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from pipeline.methods import DEFAULT_EPS, MULTICLASS_MODES, MethodError, classify_classes, fit_whitening, get_method
from pipeline.modality import BACKBONE_KIND_MODALITY, adapter

try:  # scikit-learn gives get_params/set_params/clone, `score`, input validation and tags
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError:  # pragma: no cover - scikit-learn is a dependency
    raise

# Loaded once per process and shared by every classifier (and every clone of one).
_BACKBONES: dict[str, Any] = {}
_REASONERS: dict[str, Any] = {}


class TartClassifier(ClassifierMixin, BaseEstimator):
    """Few-shot classifier: frozen backbone -> PCA/whitening -> pretrained reasoner (no training).

    backbone: registry name / HF id / folder (loaded on first fit, shared process-wide), a
        loaded Backbone, or None for precomputed embeddings.
    reasoner: a shipped name ("v1", "v2"), a checkpoint directory, a `Reasoner`, or None for
        the shipped default.
    d: PCA dims (<= the reasoner's d; default 16). eps: whitening epsilon.
    embed_batch_size: backbone batch size.
    allow_small_k: k <= d works with k-1 PCA directions (True) or is an error (False).
    multiclass: C > 2 classes: "auto" (native when the reasoner takes C classes, else one-vs-rest),
        "native" or "ovr".
    reduction: how the context is reduced (`methods.REDUCTIONS`): None for the one the reasoner was
        trained on (v1: "whiten", the paper's), "scaled" (the `tart_scaled` method's) or "standardized"
        (`tart_standardized`'s: per-feature standardisation first, for causal LMs' pooled states).
    """

    def __init__(self, backbone: Any = "minilm-l6", reasoner: Any = None, d: int = 16, eps: float = DEFAULT_EPS,
                 embed_batch_size: int = 16, allow_small_k: bool = True, multiclass: str = "auto",
                 reduction: Optional[str] = None):
        self.backbone = backbone
        self.reasoner = reasoner
        self.d = d
        self.eps = eps
        self.embed_batch_size = embed_batch_size
        self.allow_small_k = allow_small_k
        self.multiclass = multiclass
        self.reduction = reduction

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.input_tags.allow_nan = False
        if self.backbone is not None:  # raw inputs of the backbone's modality, not a feature matrix
            tags.input_tags.two_d_array = False
            tags.input_tags.string = True
        return tags

    # ------------------------------------------------------------------ helpers

    def _get_backbone(self) -> Any:
        if self.backbone is None or not isinstance(self.backbone, str):
            return self.backbone
        if self.backbone not in _BACKBONES:
            from pipeline.backbones import load_backbone

            _BACKBONES[self.backbone] = load_backbone(self.backbone)
        return _BACKBONES[self.backbone]

    def _get_reasoner(self) -> Any:
        if self.reasoner is not None and not isinstance(self.reasoner, (str, bytes)) and hasattr(self.reasoner, "predict_proba"):
            return self.reasoner
        key = str(self.reasoner)
        if key not in _REASONERS:
            from pipeline.reasoner import load_reasoner

            _REASONERS[key] = load_reasoner(self.reasoner)
        return _REASONERS[key]

    def _validate_embeddings(self, X: Any, reset: bool) -> np.ndarray:
        """backbone=None: X is a feature matrix, validated as scikit-learn validates one."""
        if isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
            raise MethodError("backbone=None expects precomputed embeddings (n, dim), got texts; "
                              "pass backbone='minilm-l6' (or another) to embed texts")
        return validate_data(self, X, reset=reset, dtype=np.float64)

    def _embed(self, X: Any, reset: bool) -> np.ndarray:
        bb = self._get_backbone()
        if bb is None:
            return X if reset else self._validate_embeddings(X, reset=False)
        if isinstance(X, str):
            raise MethodError("X must be a sequence of inputs, not a single string; wrap it in a list")
        items = list(X) if not isinstance(X, np.ndarray) else X
        if len(items) == 0:
            return np.zeros((0, bb.dim))
        kind = getattr(bb, "kind", "")
        inputs = adapter(BACKBONE_KIND_MODALITY[kind]) if kind in BACKBONE_KIND_MODALITY else None
        if inputs is None or not inputs.accepts(items[0]):
            raise MethodError(f"backbone {getattr(bb, 'name', bb)!r} ({kind}) cannot embed inputs of type "
                              f"{type(items[0]).__name__}; texts go to text backbones, images to vision ones, "
                              f"audio clips to audio ones")
        return np.asarray(inputs.embed(bb, items, self.embed_batch_size), dtype=np.float64)

    # ------------------------------------------------------------------ sklearn API

    def fit(self, X: Any, y: Any) -> "TartClassifier":
        if y is None:
            raise ValueError("TartClassifier requires y to be passed, but the target y is None")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if y.ndim != 1:
            raise MethodError(f"y must be 1-D (k,); got shape {y.shape}")
        check_classification_targets(y)
        if self.backbone is None:  # sklearn's validation of a feature matrix, before anything else
            X = self._validate_embeddings(X, reset=True)
        n = len(X) if hasattr(X, "__len__") else None
        if n is not None and n != len(y):
            raise MethodError(f"X has {n} examples but y has {len(y)} labels")
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise MethodError(f"TartClassifier needs at least 2 classes in y; got {len(classes)} class "
                              f"({classes.tolist()})")
        reasoner = self._get_reasoner()
        if self.multiclass not in MULTICLASS_MODES:
            raise MethodError(f"multiclass={self.multiclass!r}: expected one of {', '.join(MULTICLASS_MODES)}")
        if self.multiclass == "native" and len(classes) > reasoner.classes:
            raise MethodError(f"y has {len(classes)} classes; this reasoner classifies at most {reasoner.classes} "
                              f"natively (multiclass='native'): use multiclass='auto' or 'ovr' (one-vs-rest), or "
                              f"a reasoner trained with more classes")
        # what tart needs of k and d lives in the method registry (the grid asks the same)
        get_method("tart").check_context(len(y), dims=self.d, reasoner_d=reasoner.d, reasoner_max_k=reasoner.max_k,
                                         allow_small_k=self.allow_small_k)
        E = self._embed(X, reset=True)
        if E.shape[0] != len(y):
            raise MethodError(f"X has {E.shape[0]} examples but y has {len(y)} labels")
        self.whitening_ = fit_whitening(E, d=self.d, eps=self.eps, allow_small_k=self.allow_small_k,
                                        reduction=self.reduction or reasoner.reduction)
        self.classes_ = classes
        self.y_context_ = y_index.astype(np.int64)
        self.z_context_ = self.whitening_.transform(E).astype(np.float32)
        self.embedding_dim_ = E.shape[1]
        return self

    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "whitening_")
        except NotFittedError:
            raise NotFittedError("this TartClassifier is not fitted yet; call fit(X, y) with k labelled examples") from None

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted()
        E = self._embed(X, reset=False)
        C = len(self.classes_)
        if E.shape[0] == 0:
            return np.zeros((0, C))
        if E.shape[1] != self.embedding_dim_:
            raise MethodError(f"X has {E.shape[1]} features; the classifier was fitted on {self.embedding_dim_}")
        if not np.isfinite(E).all():
            raise MethodError("X contains NaN or infinite values")
        Zq = self.whitening_.transform(E).astype(np.float32)
        reasoner = self._get_reasoner()
        if C == 2:
            p1 = reasoner.predict_proba(self.z_context_[None], self.y_context_[None], Zq[None],
                                        float64=True)[0].astype(np.float64)
            return np.stack([1.0 - p1, p1], axis=1)
        return classify_classes(reasoner, self.z_context_, self.y_context_, Zq, C, mode=self.multiclass, float64=True)

    def predict(self, X: Any) -> np.ndarray:
        self._check_fitted()
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
