"""`TartClassifier`: TART as a scikit-learn style few-shot classifier.

    clf = TartClassifier(backbone="minilm-l6").fit(texts_k, labels_k)   # k labelled examples
    clf.predict_proba(texts)  # (n, 2), columns in the order of clf.classes_
    clf.predict(texts)        # labels drawn from clf.classes_

`fit` does no training: it embeds the k examples with the frozen backbone, fits the
PCA + whitening on them (`pipeline.methods.fit_whitening`) and keeps them as the
reasoner's context. `predict_proba` embeds the queries, whitens them with the same
map and answers all of them in one batched reasoner call.

Inputs: those of the backbone's modality (`pipeline.modality`): texts (list of str) for
text backbones, images (list / array of HxW[xC]) for vision backbones, 16 kHz mono float
clips for audio backbones, or — with `backbone=None` — a numeric array (n, dim) of
precomputed embeddings. `backbone` may also be an already loaded `Backbone` object (shared,
not reloaded). Labels: any two distinct values (str, int, bool, ...); `classes_` is
their sorted array (as in scikit-learn) and classes_[1] is the "positive" class the
reasoner sees as y=1. One class only, three or more classes, k <= d or k above the
reasoner's trained context raise `MethodError` (a ValueError).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.methods import DEFAULT_EPS, MethodError, fit_whitening, get_method
from pipeline.modality import BACKBONE_KIND_MODALITY, adapter

try:  # scikit-learn gives get_params/set_params/clone and `score` (accuracy)
    from sklearn.base import BaseEstimator, ClassifierMixin
except ImportError:  # pragma: no cover - scikit-learn is a dependency
    BaseEstimator, ClassifierMixin = object, object


class TartClassifier(ClassifierMixin, BaseEstimator):
    """Few-shot binary classifier: frozen backbone -> PCA/whitening -> pretrained reasoner.

    backbone: registry name / HF id / folder (loaded on first fit), a loaded Backbone,
        or None for precomputed embeddings.
    reasoner: a `Reasoner`, a checkpoint directory, or None for the shipped default.
    d: PCA dims (<= the reasoner's d; default 16). eps: whitening epsilon.
    embed_batch_size: backbone batch size.
    """

    def __init__(self, backbone: Any = "minilm-l6", reasoner: Any = None, d: int = 16, eps: float = DEFAULT_EPS,
                 embed_batch_size: int = 16):
        self.backbone = backbone
        self.reasoner = reasoner
        self.d = d
        self.eps = eps
        self.embed_batch_size = embed_batch_size

    # ------------------------------------------------------------------ helpers

    def _get_backbone(self) -> Any:
        if self.backbone is None:
            return None
        if not isinstance(self.backbone, str):
            return self.backbone
        cached = getattr(self, "_backbone_obj", None)
        if cached is None or getattr(self, "_backbone_name", None) != self.backbone:
            from pipeline.backbones import load_backbone

            self._backbone_obj = load_backbone(self.backbone)
            self._backbone_name = self.backbone
        return self._backbone_obj

    def _get_reasoner(self) -> Any:
        if self.reasoner is not None and not isinstance(self.reasoner, (str, bytes)) and hasattr(self.reasoner, "predict_proba"):
            return self.reasoner
        cached = getattr(self, "_reasoner_obj", None)
        if cached is None or getattr(self, "_reasoner_src", None) != self.reasoner:
            from pipeline.reasoner import load_reasoner

            self._reasoner_obj = load_reasoner(self.reasoner)
            self._reasoner_src = self.reasoner
        return self._reasoner_obj

    def _embed(self, X: Any) -> np.ndarray:
        bb = self._get_backbone()
        if bb is None:
            if isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
                raise MethodError("backbone=None expects precomputed embeddings (n, dim), got texts; "
                                  "pass backbone='minilm-l6' (or another) to embed texts")
            try:
                E = np.asarray(X, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise MethodError(f"backbone=None expects a numeric array (n, dim) ({e})") from None
            if E.ndim != 2:
                raise MethodError(f"backbone=None expects embeddings of shape (n, dim); got {E.shape}")
            return E
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
        y = np.asarray(y)
        if y.ndim != 1:
            raise MethodError(f"y must be 1-D (k,); got shape {y.shape}")
        classes = np.unique(y)
        if len(classes) != 2:
            raise MethodError(
                f"TartClassifier is binary: y must hold exactly 2 distinct labels; got {len(classes)} "
                f"({classes[:5].tolist()}{' ...' if len(classes) > 5 else ''})"
            )
        reasoner = self._get_reasoner()
        n = len(X) if hasattr(X, "__len__") else None
        if n is not None and n != len(y):
            raise MethodError(f"X has {n} examples but y has {len(y)} labels")
        # what tart needs of k and d lives in the method registry (the grid asks the same)
        get_method("tart").check_context(len(y), dims=self.d, reasoner_d=reasoner.d, reasoner_max_k=reasoner.max_k)
        E = self._embed(X)
        if E.shape[0] != len(y):
            raise MethodError(f"X has {E.shape[0]} examples but y has {len(y)} labels")
        self.whitening_ = fit_whitening(E, d=self.d, eps=self.eps)
        self.classes_ = classes
        self.y_context_ = (y == classes[1]).astype(np.int64)
        self.z_context_ = self.whitening_.transform(E).astype(np.float32)
        self.n_features_in_ = E.shape[1]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "whitening_"):
            raise MethodError("this TartClassifier is not fitted yet; call fit(X, y) with k labelled examples")

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted()
        E = self._embed(X)
        if E.shape[0] == 0:
            return np.zeros((0, 2))
        if E.shape[1] != self.n_features_in_:
            raise MethodError(f"X has {E.shape[1]} features; the classifier was fitted on {self.n_features_in_}")
        if not np.isfinite(E).all():
            raise MethodError("X contains NaN or infinite values")
        Zq = self.whitening_.transform(E).astype(np.float32)
        p1 = self._get_reasoner().predict_proba(self.z_context_[None], self.y_context_[None], Zq[None])[0]
        p1 = p1.astype(np.float64)
        return np.stack([1.0 - p1, p1], axis=1)

    def predict(self, X: Any) -> np.ndarray:
        p = self.predict_proba(X)
        return self.classes_[(p[:, 1] >= 0.5).astype(np.int64)]
