"""TartClassifier: sklearn-style few-shot classifier with the real reasoner and MiniLM backbone."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.classifier import TartClassifier  # noqa: E402
from pipeline.methods import MethodError, run_method  # noqa: E402
from pipeline.reasoner import load_reasoner  # noqa: E402


@pytest.fixture(scope="module")
def reasoner():
    return load_reasoner()


SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def sms_minilm():
    """minilm-l6 embeddings of k=32 sms_spam context sets (seeds 0-2) and 100 balanced test SMS."""
    import torch

    torch.set_num_threads(2)
    from pipeline.backbones import load_backbone
    from pipeline.datasets import context_sets, load_examples

    pool = load_examples("sms_spam", split="train")
    test = load_examples("sms_spam", split="test", test_size=100)
    bb = load_backbone("minilm-l6")
    ctxs = {}
    for seed in SEEDS:
        ctx = context_sets(pool.labels, [32], seed=seed)[32]
        texts = [pool.texts[i] for i in ctx]
        ctxs[seed] = dict(texts=texts, y=pool.labels[ctx], Ec=bb.embed_texts(texts))
    return dict(bb=bb, ctxs=ctxs, names=pool.label_names, test=test, Eq=bb.embed_texts(test.texts))


def test_sms_spam_minilm_k32_accuracy(sms_minilm, reasoner):
    s = sms_minilm
    test = s["test"]
    names = np.array(s["names"])
    assert test.class_counts() == {0: 50, 1: 50}
    # seed 0 end to end: string labels ("ham"/"spam"), texts embedded by the backbone
    c0 = s["ctxs"][0]
    clf = TartClassifier(backbone=s["bb"], reasoner=reasoner).fit(c0["texts"], names[c0["y"]])
    assert list(clf.classes_) == ["ham", "spam"]
    proba = clf.predict_proba(test.texts)
    assert proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    assert set(clf.predict(test.texts)) <= {"ham", "spam"}
    # the same through precomputed embeddings (backbone=None)
    clf0 = TartClassifier(backbone=None, reasoner=reasoner).fit(c0["Ec"], c0["y"])
    np.testing.assert_allclose(clf0.predict_proba(s["Eq"]), proba, atol=1e-4)
    acc = {m: [] for m in ("tart", "lr_probe", "lr_full")}
    for seed in SEEDS:
        c = s["ctxs"][seed]
        pred = TartClassifier(backbone=None, reasoner=reasoner).fit(c["Ec"], c["y"]).predict(s["Eq"])
        acc["tart"].append(float((pred == test.labels).mean()))
        for m in ("lr_probe", "lr_full"):
            acc[m].append(float(((run_method(m, c["Ec"], c["y"], s["Eq"]) >= 0.5) == test.labels).mean()))
    print(f"sms_spam minilm-l6 k=32, 100 balanced queries, seeds {SEEDS}: {acc}")
    # measured: tart 0.78 / 0.89 / 0.93 (mean 0.867), lr_probe 0.83 / 0.90 / 0.95 (mean 0.893)
    assert np.mean(acc["tart"]) >= 0.8
    assert min(acc["tart"]) >= 0.7
    assert np.mean(acc["tart"]) >= np.mean(acc["lr_probe"]) - 0.06


def test_arbitrary_label_values_and_order(reasoner):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 24))
    y01 = (X[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(int)
    Xc, Xq = X[:40], X[40:]
    base = TartClassifier(backbone=None, reasoner=reasoner).fit(Xc, y01[:40]).predict_proba(Xq)
    for labels in ([-1, 7], [False, True], ["neg", "pos"]):
        yy = np.array(labels, dtype=object if isinstance(labels[0], str) else None)[y01[:40]]
        clf = TartClassifier(backbone=None, reasoner=reasoner).fit(Xc, yy)
        assert list(clf.classes_) == sorted(labels)
        np.testing.assert_allclose(clf.predict_proba(Xq), base, atol=1e-6)
        assert set(clf.predict(Xq)) <= set(labels)
    acc = (TartClassifier(backbone=None, reasoner=reasoner).fit(Xc, y01[:40]).predict(Xq) == y01[40:]).mean()
    assert acc >= 0.7
    # sklearn API niceties
    from sklearn.base import clone

    c = clone(TartClassifier(backbone=None, d=8))
    assert c.get_params()["d"] == 8


def test_classifier_bad_inputs(reasoner):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 24))
    clf = TartClassifier(backbone=None, reasoner=reasoner)
    with pytest.raises(MethodError, match="not fitted"):
        clf.predict(X)
    with pytest.raises(MethodError, match="exactly 2 distinct labels; got 1"):
        clf.fit(X, np.zeros(40))
    with pytest.raises(MethodError, match="got 3"):
        clf.fit(X, np.arange(40) % 3)
    with pytest.raises(MethodError, match=r"k=16 .* k > d"):
        clf.fit(X[:16], np.arange(16) % 2)
    with pytest.raises(MethodError, match="40 examples but y has 39"):
        clf.fit(X, np.arange(39) % 2)
    with pytest.raises(MethodError, match="expects precomputed embeddings"):
        clf.fit(["a text"] * 40, np.arange(40) % 2)
    with pytest.raises(MethodError, match="larger than the reasoner's trained d"):
        TartClassifier(backbone=None, reasoner=reasoner, d=32).fit(X, np.arange(40) % 2)
    clf.fit(X, np.arange(40) % 2)
    with pytest.raises(MethodError, match="24"):
        clf.predict(rng.normal(size=(3, 10)))
