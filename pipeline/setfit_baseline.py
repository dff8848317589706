"""The SetFit baseline (Tunstall et al., 2022): few-shot classification by fine-tuning the encoder.

Per episode (k labelled texts of one (k, seed) context set, the same sets every other method
gets: `datasets.context_sets`):

1. a COPY of the sentence encoder (the backbone as a sentence-transformers model: its own
   pooling and normalisation modules, e.g. all-MiniLM-L6-v2's mean pooling + L2 norm) is
   fine-tuned contrastively on pairs of the k examples: same-label pairs with target cosine
   similarity 1, different-label pairs 0, CosineSimilarityLoss, one epoch over
   `num_iterations` x 2 x k pairs (SetFit's `num_iterations=20`: for every example, 20 positive
   and 20 negative pairs; the `setfit` package's pair sampler), batch 16, AdamW at 2e-5 with
   10% warm-up (SetFit's defaults);
2. a scikit-learn LogisticRegression head is fitted on the fine-tuned embeddings of the k
   examples, and the test set is classified with it.

The work is the `setfit` package's (`SetFitModel`, `Trainer`), wrapped so that nothing leaves
the episode: no checkpoint folder (`save_strategy="no"`, a temporary `output_dir`), no
reporting to MLflow or other trackers (`report_to="none"`), no progress bars. The encoder
is loaded once per (dataset, backbone) group and deep-copied per episode; training is seeded
with the cell's seed (`transformers.set_seed`), so a cell is reproducible on one machine
(tests/test_setfit.py). Training runs in float32 whatever the grid's dtype (the registry
entry's `dtype`), on the GPU a Ray task was given, else the CPU.

`fit_predict(encoder, texts, labels, queries, seed, tune=False)` is the same head on the
un-tuned encoder (what the fine-tuning adds is measured against it).

In the grid, `run_group` is the runner of the `setfit` entry of `methods.REGISTRY`; each
cell's `runtime_s` is its whole episode (copy, fine-tuning, head, test-set encoding).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)


class SetFitError(ValueError):
    """Bad SetFit input (a backbone that is no text encoder, one-class contexts); the message says which."""


@dataclass(frozen=True)
class SetFitConfig:
    """SetFit's defaults (setfit 1.x `TrainingArguments`), one epoch over a fixed number of pairs."""

    num_iterations: int = 20  # pairs: num_iterations x 2 x k (a positive and a negative per example each time)
    num_epochs: int = 1
    batch_size: int = 16
    body_learning_rate: float = 2e-5
    warmup_proportion: float = 0.1
    head_C: float = 1.0  # the LogisticRegression head's inverse regularisation (sklearn's default)
    head_max_iter: int = 1000


def load_encoder(backbone: str, device: Optional[str] = None) -> Any:
    """The backbone as a sentence-transformers model (from its local folder, or an HF id's cache)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from .backbones import backbone_info
    from .backbones.resolve import resolve

    kind, _ = backbone_info(backbone)
    if kind != "encoder":
        raise SetFitError(f"setfit fine-tunes a text encoder; backbone {backbone!r} is a {kind} model")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    _quiet()
    return SentenceTransformer(str(resolve(backbone).location), device=device)


def _quiet() -> None:
    """No progress bars or per-step info lines from the libraries SetFit drives (this process only)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights" when the encoder is read
    for name in ("setfit", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)


def fit_predict(encoder: Any, texts: Sequence[str], labels: Sequence[int], queries: Sequence[str], seed: int,
                n_classes: int = 2, tune: bool = True, config: SetFitConfig = SetFitConfig()) -> np.ndarray:
    """P(label=1) (q,) for two classes, else (q, n_classes) rows: SetFit on (texts, labels), or with
    `tune=False` the same LogisticRegression head on the un-tuned encoder. `encoder` is not modified
    (a copy is fine-tuned)."""
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.linear_model import LogisticRegression
    from transformers import PrinterCallback, set_seed

    y = np.asarray(labels, dtype=np.int64)
    if len(texts) != len(y) or len(y) == 0:
        raise SetFitError(f"{len(texts)} context texts for {len(y)} labels")
    if len(np.unique(y)) < 2:
        raise SetFitError(f"one-class context: all {len(y)} labels are {int(y[0])}; SetFit needs two classes")
    _quiet()
    set_seed(seed)
    head = LogisticRegression(C=config.head_C, max_iter=config.head_max_iter)
    model = SetFitModel(model_body=copy.deepcopy(encoder) if tune else encoder, model_head=head)
    x = [str(t) for t in texts]
    if tune:
        from datasets import Dataset

        with tempfile.TemporaryDirectory(prefix="setfit-") as tmp:
            args = TrainingArguments(output_dir=tmp, batch_size=config.batch_size, num_epochs=config.num_epochs,
                                     num_iterations=config.num_iterations, body_learning_rate=config.body_learning_rate,
                                     warmup_proportion=config.warmup_proportion, seed=seed, report_to="none",
                                     save_strategy="no", logging_strategy="no", logging_first_step=False,
                                     show_progress_bar=False)
            trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": x, "label": y.tolist()}))
            # Without progress bars transformers prints every log dict (the end-of-training runtime
            # summary too) through its PrinterCallback; Ray forwards those to the driver's console.
            trainer.remove_callback(PrinterCallback)
            if str(getattr(encoder, "device", "cpu")) == "cpu":
                trainer.st_trainer.args.dataloader_pin_memory = False  # pinning needs an accelerator
            trainer.train()  # the contrastive phase on the copy, then the head on its embeddings
    else:
        model.fit(x, y.tolist(), num_epochs=1, show_progress_bar=False)  # the head only (a sklearn head: no body step)
    p = np.asarray(model.predict_proba([str(t) for t in queries], as_numpy=True, show_progress_bar=False),
                   dtype=np.float64)
    out = np.zeros((p.shape[0], n_classes))
    out[:, head.classes_.astype(np.int64)] = p
    if tune:
        del model  # the fine-tuned copy
    return out[:, 1] if n_classes == 2 else out


def run_group(dataset: str, options: dict, backbone: str, dtype: str, episodes: Sequence[tuple],
              batch_size: int = 8, skip: Optional[Callable[[int], bool]] = None,
              config: SetFitConfig = SetFitConfig()) -> Iterator[Optional[dict]]:
    """SetFit on the (k, seed[, method]) `episodes` of one dataset with one encoder, loaded once and
    copied per episode. Yields per episode, in order, {probs, runtime_s, labels, ids} (the test
    split's), or None where `skip(i)`. `dtype` and `batch_size` (the grid's icl batch) are not used:
    training runs in float32 with SetFit's batch of pairs."""
    from .datasets import context_sets, load_examples

    pool = load_examples(dataset, "train", **options)
    test = load_examples(dataset, "test", **options)
    encoder = load_encoder(backbone)
    for i, episode in enumerate(episodes):
        if skip is not None and skip(i):
            yield None
            continue
        k, seed = int(episode[0]), int(episode[1])
        t0 = time.time()
        ctx = context_sets(pool.labels, [k], seed, n_classes=pool.n_classes)[k]
        p = fit_predict(encoder, [pool.texts[j] for j in ctx], pool.labels[ctx], test.texts, seed=seed,
                        n_classes=pool.n_classes, config=config)
        yield {"probs": np.asarray(p, dtype=np.float32), "runtime_s": time.time() - t0,
               "labels": test.labels, "ids": test.ids}
