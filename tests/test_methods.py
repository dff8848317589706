"""Methods of stage 4's inner loop: whitening, tart / lr_probe / lr_full, with the real reasoner."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.methods import EMBEDDINGS, TEXTS, MethodError, fit_whitening, get_method, known_methods, run_method
from pipeline.reasoner import load_reasoner


@pytest.fixture(scope="module")
def reasoner():
    return load_reasoner()


def gaussian_task(rng, n, dim=64, sep=2.0, signal_dims=16):
    """Two Gaussian classes in `dim` dims: class means differ along a few random directions.

    Noise is anisotropic (a few high-variance nuisance directions), like real embeddings.
    """
    mu = np.zeros(dim)
    mu[:signal_dims] = rng.normal(size=signal_dims)
    mu *= sep / np.linalg.norm(mu)
    scales = np.ones(dim)
    scales[signal_dims : signal_dims + 4] = 3.0  # nuisance directions PCA will also pick up
    rot = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    y = rng.permutation(np.arange(n) % 2)
    X = (rng.normal(size=(n, dim)) * scales + np.where(y[:, None] == 1, mu, -mu)) @ rot.T + 5.0
    return X, y


def test_registry_lists_methods():
    assert {"tart", "lr_probe", "lr_full"} <= set(known_methods())
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        run_method("nope", np.zeros((20, 3)), np.arange(20) % 2, np.zeros((1, 3)))


def test_registry_describes_every_method_icl_included():
    assert known_methods(runs_on=EMBEDDINGS) == ["lr_full", "lr_probe", "lr_scaled", "lr_standardized", "tart", "tart_ovr",
                                                 "tart_pca8x2", "tart_scaled", "tart_standardized"]
    assert known_methods(runs_on=TEXTS) == ["icl", "icl_calibrated", "setfit"]  # the peers: tests/test_setfit.py
    assert known_methods(needs_reasoner=True) == ["tart", "tart_ovr", "tart_pca8x2", "tart_scaled", "tart_standardized"]
    icl = get_method("icl")
    assert icl.needs_causal and icl.protocol == "prompt" and icl.modalities == ("text",)
    assert icl.accepts("causal", "text") and icl.accepts(None, "text")  # an HF id may be a causal LM
    assert not icl.accepts("encoder", "text") and not icl.accepts("causal", "audio")
    assert callable(icl.load_runner())
    with pytest.raises(MethodError, match="'icl' runs on the raw texts"):
        run_method("icl", np.zeros((20, 3)), np.arange(20) % 2, np.zeros((1, 3)))
    # what tart needs, in one place: k > d (its reasoner's d) and k within the reasoner's trained context
    tart = get_method("tart")
    assert tart.context_problems(32, reasoner_d=16, reasoner_max_k=257) == []
    assert any("k=16 <= d=16" in p for p in tart.context_problems(16, reasoner_d=16))
    assert any("k=300 exceeds" in p for p in tart.context_problems(300, reasoner_d=16, reasoner_max_k=257))
    assert any("larger than" in p for p in tart.context_problems(64, dims=32, reasoner_d=16))
    assert get_method("lr_probe").dims() == 16 and get_method("lr_full").dims() is None
    assert get_method("lr_full").context_problems(4) == []


def test_whitening_is_white_on_context_and_fits_context_only():
    rng = np.random.default_rng(0)
    Xc = rng.normal(size=(40, 64)) * np.linspace(0.1, 5, 64) + 3
    w = fit_whitening(Xc, d=16)
    Z = w.transform(Xc)
    assert Z.shape == (40, 16)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(np.cov(Z, rowvar=False), np.eye(16), atol=1e-4)
    # queries do not change the fit: a transform of far-away queries is just the same affine map
    Xq = rng.normal(size=(7, 64)) * 100
    np.testing.assert_allclose(w.transform(np.vstack([Xc[:3], Xq]))[:3], Z[:3])
    # deterministic
    np.testing.assert_array_equal(fit_whitening(Xc, d=16).transform(Xq), w.transform(Xq))


def test_scaled_reduction_keeps_the_spectrum_ignores_row_norms_and_has_a_probe(reasoner):
    rng = np.random.default_rng(1)
    Xc = rng.normal(size=(40, 64)) * np.linspace(5, 0.1, 64) + 3
    Xq = rng.normal(size=(9, 64)) * np.linspace(5, 0.1, 64) + 3
    w, white = fit_whitening(Xc, d=16, reduction="scaled"), fit_whitening(Xc, d=16)
    Z = w.transform(Xc)
    var = Z.var(0, ddof=1)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(var.mean(), 1.0, atol=1e-4)  # one scale (less eps): the mean coordinate variance is 1
    assert np.all(np.diff(var) <= 1e-9) and var[0] > 2 * var[-1]  # the PCA spectrum survives, in order
    np.testing.assert_allclose(var / var[0], w.variances / w.variances[0], rtol=1e-9)
    # rows are L2-normalised first: rescaling an example does not move its features
    np.testing.assert_allclose(w.transform(Xq * 7.5), w.transform(Xq), atol=1e-12)
    np.testing.assert_allclose(fit_whitening(Xc * 3, d=16, reduction="scaled").transform(Xq), w.transform(Xq),
                               atol=1e-9)
    assert not np.allclose(np.abs(white.transform(Xq)), np.abs(w.transform(Xq)), atol=1e-3)
    with pytest.raises(MethodError, match="reduction='pca': expected one of whiten, scaled, standardized"):
        fit_whitening(Xc, d=16, reduction="pca")
    # lr_scaled is lr_probe on these features; tart can be asked for them, and reads its reasoner's by default
    y = (Xc[:, 0] > 3).astype(int)
    np.testing.assert_array_equal(run_method("lr_scaled", Xc, y, Xq), run_method("lr_probe", Xc, y, Xq, reduction="scaled"))
    assert not np.allclose(run_method("lr_scaled", Xc, y, Xq), run_method("lr_probe", Xc, y, Xq))
    with pytest.raises(MethodError, match="fits reduction='scaled' by definition"):
        run_method("lr_scaled", Xc, y, Xq, reduction="whiten")
    assert reasoner.reduction == "whiten"
    np.testing.assert_array_equal(run_method("tart", Xc, y, Xq, reasoner=reasoner),
                                  run_method("tart", Xc, y, Xq, reasoner=reasoner, reduction="whiten"))
    from pipeline.reasoner import Reasoner

    scaled = Reasoner(reasoner.model, meta={"train_config": {"task": {"family": "embedding",
                                                                       "prior": {"reduction": "scaled"}}}})
    assert scaled.reduction == "scaled"
    np.testing.assert_array_equal(run_method("tart_scaled", Xc, y, Xq, reasoner=reasoner),
                                  run_method("tart", Xc, y, Xq, reasoner=scaled))
    np.testing.assert_array_equal(run_method("tart", Xc, y, Xq, reasoner=scaled),
                                  run_method("tart", Xc, y, Xq, reasoner=reasoner, reduction="scaled"))


def test_standardized_reduction_is_scaled_on_standardised_features_and_ignores_a_huge_feature(reasoner):
    # a causal LM's pooled states: a few features with far more variance than the rest, the class elsewhere
    rng = np.random.default_rng(3)
    n, D = 400, 96
    y = np.tile([0, 1], n // 2)
    X = rng.normal(size=(n, D))
    X[:, 5] += 1.5 * (2 * y - 1)  # the class signal, in one ordinary feature
    X[:, :2] *= 60.0  # two huge, classless features
    X[:, -1] = 2.0  # and a constant one
    Xc, yc, Xq, yq = X[:40], y[:40], X[40:], y[40:]
    w = fit_whitening(Xc, d=16, reduction="standardized")
    # the definition: each feature centred and divided by sqrt(var + median var) on the context, then `scaled`
    var = Xc.var(0, ddof=1)
    sd = np.sqrt(var + np.median(var))
    sd[sd == 0] = 1.0
    ref = fit_whitening((Xc - Xc.mean(0)) / sd, d=16, reduction="scaled")
    np.testing.assert_allclose(w.transform(Xq), ref.transform((Xq - Xc.mean(0)) / sd), atol=1e-10)
    assert np.isfinite(w.transform(Xq)).all()
    np.testing.assert_allclose(fit_whitening(Xc * 4 - 1, d=16, reduction="standardized").transform(Xq * 4 - 1),
                               w.transform(Xq), atol=1e-9)  # one affine map of every feature changes nothing
    # the huge features own scaled's leading directions, not the standardized ones
    assert np.abs(fit_whitening(Xc, d=16, reduction="scaled").components[:2, :2]).max(axis=1).min() > 0.9
    assert np.abs(w.components[:, :2]).max() < 0.5
    acc = lambda m: float((((run_method(m, Xc, yc, Xq, reasoner=reasoner) > 0.5) == yq)).mean())
    assert acc("tart_standardized") > acc("tart_scaled") + 0.1 and acc("tart_standardized") > 0.65  # 0.71 vs 0.54 here
    # the method pair, as for scaled: tart and lr_probe asked for the reduction, and no other reduction
    np.testing.assert_array_equal(run_method("tart_standardized", Xc, yc, Xq, reasoner=reasoner),
                                  run_method("tart", Xc, yc, Xq, reasoner=reasoner, reduction="standardized"))
    np.testing.assert_array_equal(run_method("lr_standardized", Xc, yc, Xq),
                                  run_method("lr_probe", Xc, yc, Xq, reduction="standardized"))
    for m in ("tart_standardized", "lr_standardized"):
        with pytest.raises(MethodError, match="fits reduction='standardized' by definition"):
            run_method(m, Xc, yc, Xq, reasoner=reasoner, reduction="scaled")


def test_whitening_degenerate_inputs_stay_finite():
    rng = np.random.default_rng(1)
    Xc = rng.normal(size=(32, 64))
    Xc[:, :10] = 7.0  # constant columns
    Xc[16:] = Xc[:16]  # every row duplicated: rank 15 < d=16
    w = fit_whitening(Xc, d=16)
    Xq = rng.normal(size=(5, 64)) * 10
    Z, Zq = w.transform(Xc), w.transform(Xq)
    assert np.isfinite(Z).all() and np.isfinite(Zq).all()
    assert w.n_informative == 15  # the empty direction is mapped to 0, not amplified
    assert np.abs(Zq).max() < 1e3
    # all rows identical: nothing to whiten, everything maps to 0 (finite)
    w0 = fit_whitening(np.ones((20, 8)), d=16)
    assert w0.n_informative == 0 and np.all(w0.transform(Xq[:, :8]) == 0)
    # embeddings with fewer dims than d: the output keeps d columns, the rest 0
    w3 = fit_whitening(rng.normal(size=(20, 3)), d=16)
    assert w3.transform(rng.normal(size=(4, 3))).shape == (4, 16) and w3.n_informative == 3


def test_whitening_small_k_errors_unless_allowed():
    X = np.random.default_rng(2).normal(size=(16, 64))
    with pytest.raises(MethodError, match=r"k=16 context points for d=16.*k > d"):
        fit_whitening(X, d=16)
    w = fit_whitening(X, d=16, allow_small_k=True)
    assert w.n_informative == 15 and np.isfinite(w.transform(X)).all()


def test_tart_close_to_lr_probe_on_gaussian_classes(reasoner):
    rng = np.random.default_rng(3)
    acc = {m: [] for m in ("tart", "lr_probe", "lr_full")}
    for _ in range(6):
        X, y = gaussian_task(rng, 32 + 400)
        Xc, yc, Xq, yq = X[:32], y[:32], X[32:], y[32:]
        for m in acc:
            p = run_method(m, Xc, yc, Xq, reasoner=reasoner)
            assert p.shape == (400,) and np.all((p >= 0) & (p <= 1))
            acc[m].append(((p >= 0.5) == yq).mean())
    mean = {m: float(np.mean(v)) for m, v in acc.items()}
    print("gaussian 64-d, k=32, 6 episodes x 400 queries:", mean)
    assert mean["lr_probe"] > 0.8  # learnable from 32 points (Bayes accuracy ~0.98); measured 0.888
    assert mean["tart"] > 0.8  # measured 0.886
    assert abs(mean["tart"] - mean["lr_probe"]) < 0.05


def test_tart_batched_equals_per_query(reasoner):
    rng = np.random.default_rng(4)
    X, y = gaussian_task(rng, 32 + 12)
    Xc, yc, Xq = X[:32], y[:32], X[32:]
    batched = run_method("tart", Xc, yc, Xq, reasoner=reasoner)
    single = np.array([run_method("tart", Xc, yc, Xq[i : i + 1], reasoner=reasoner)[0] for i in range(len(Xq))])
    np.testing.assert_allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((32, 8)), np.arange(32) % 3, np.zeros((2, 8))), "binary 0/1"),
        ((np.zeros((32, 8)), np.arange(31) % 2, np.zeros((2, 8))), "32 rows but yc has 31"),
        ((np.zeros((32, 8)), np.arange(32) % 2, np.zeros((2, 9))), "8 features, Xq has 9"),
        ((np.zeros((32,)), np.arange(32) % 2, np.zeros((2, 8))), "must be 2-D"),
        ((np.full((32, 8), np.nan), np.arange(32) % 2, np.zeros((2, 8))), "NaN"),
    ],
)
def test_bad_inputs_raise_clear_errors(reasoner, args, match):
    for m in ("tart", "lr_probe", "lr_full"):
        with pytest.raises(MethodError, match=match):
            run_method(m, *args, reasoner=reasoner)


def test_k_not_above_d_and_k_too_large(reasoner):
    rng = np.random.default_rng(5)
    with pytest.raises(MethodError, match="k > d"):
        run_method("tart", rng.normal(size=(16, 32)), np.arange(16) % 2, rng.normal(size=(2, 32)), reasoner=reasoner)
    with pytest.raises(MethodError, match="k > d"):
        run_method("lr_probe", rng.normal(size=(12, 32)), np.arange(12) % 2, rng.normal(size=(2, 32)))
    big = reasoner.max_k + 1
    with pytest.raises(MethodError, match=f"k={big}.*at most {reasoner.max_k}"):
        run_method("tart", rng.normal(size=(big, 32)), np.arange(big) % 2, rng.normal(size=(2, 32)), reasoner=reasoner)
    with pytest.raises(MethodError, match="needs a reasoner"):
        run_method("tart", rng.normal(size=(20, 32)), np.arange(20) % 2, rng.normal(size=(2, 32)))
    with pytest.raises(MethodError, match="unknown option"):
        run_method("lr_full", rng.normal(size=(20, 32)), np.arange(20) % 2, rng.normal(size=(2, 32)), d=4)


def test_one_class_context_error_or_constant(reasoner):
    rng = np.random.default_rng(6)
    Xc, Xq = rng.normal(size=(20, 32)), rng.normal(size=(3, 32))
    for m in ("tart", "lr_probe", "lr_full"):
        with pytest.raises(MethodError, match="one-class context: all 20 context labels are 1"):
            run_method(m, Xc, np.ones(20), Xq, reasoner=reasoner)
        np.testing.assert_allclose(run_method(m, Xc, np.ones(20), Xq, reasoner=reasoner, one_class="constant"),
                                   21 / 22)
        np.testing.assert_allclose(run_method(m, Xc, np.zeros(20), Xq, reasoner=reasoner, one_class="constant"),
                                   1 / 22)


def test_degenerate_context_runs_finite_through_all_methods(reasoner):
    rng = np.random.default_rng(7)
    X, y = gaussian_task(rng, 40)
    X[:, :20] = 1.0
    X[20:] = X[:20]
    y[20:] = y[:20]
    for m in ("tart", "lr_probe", "lr_full"):
        p = run_method(m, X[:32], y[:32], X[32:], reasoner=reasoner)
        assert np.isfinite(p).all() and np.all((p >= 0) & (p <= 1))


def _blobs(C: int, per: int, q_per: int, seed: int = 0, D: int = 48, spread: float = 1.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(C, D)) * spread
    yc, yq = np.repeat(np.arange(C), per), np.repeat(np.arange(C), q_per)
    return centres[yc] + rng.normal(size=(len(yc), D)), yc, centres[yq] + rng.normal(size=(len(yq), D)), yq


@pytest.mark.parametrize("method", ["tart", "tart_standardized", "lr_probe", "lr_standardized", "lr_full"])
def test_multi_class_methods_give_distributions_well_above_chance(reasoner, method):
    Xc, yc, Xq, yq = _blobs(C=5, per=9, q_per=20)
    p = run_method(method, Xc, yc, Xq, reasoner=reasoner, n_classes=5)
    assert p.shape == (100, 5) and np.allclose(p.sum(axis=1), 1.0) and (p >= 0).all()
    assert (p.argmax(axis=1) == yq).mean() > 0.8  # chance: 0.2
    binary = run_method(method, Xc[yc < 2], yc[yc < 2], Xq, reasoner=reasoner)
    assert binary.shape == (100,)  # two classes: P(y=1) as before


def test_multi_class_input_errors(reasoner):
    Xc, yc, Xq, _ = _blobs(C=3, per=8, q_per=2)
    with pytest.raises(MethodError, match="binary 0/1.*n_classes"):
        run_method("lr_probe", Xc, yc, Xq)
    with pytest.raises(MethodError, match=r"class indices 0\.\.2"):
        run_method("lr_probe", Xc, yc + 1, Xq, n_classes=3)
    assert all(get_method(m).multiclass for m in ("tart", "lr_probe", "lr_full", "icl"))


def test_multi_class_cell_metrics():
    from pipeline.grid.results import cell_metrics

    y = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
    m = cell_metrics(y, p)
    assert m["accuracy"] == 0.75
    assert abs(m["nll"] + np.mean(np.log([0.8, 0.7, 0.6, 0.2]))) < 1e-12
    # class 0: P=2 (one right), T=1 -> F1 2/3; class 1: 1; class 2: P=1, T=2 -> 2/3
    assert abs(m["macro_f1"] - (2 / 3 + 1 + 2 / 3) / 3) < 1e-12
    assert np.isnan(m["auc"]) and 0 <= m["ece"] <= 1
    b = cell_metrics(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4]))
    assert abs(b["nll"] + np.mean(np.log([0.8, 0.9, 0.4]))) < 1e-12 and b["accuracy"] == 2 / 3


def test_tart_pca8x2_is_tart_on_8_whitened_dims_each_read_twice(reasoner):
    """The reference's image/audio setting: 8 PCA dims duplicated to the reasoner's 16 inputs."""
    from pipeline.methods import fit_whitening

    rng = np.random.default_rng(3)
    Xc, yc = gaussian_task(rng, 32)
    Xq, _ = gaussian_task(rng, 10)
    p = run_method("tart_pca8x2", Xc, yc, Xq, reasoner=reasoner)
    w = fit_whitening(Xc, d=8)
    Zc, Zq = w.transform(Xc).astype(np.float32), w.transform(Xq).astype(np.float32)
    ref = reasoner.predict_proba(np.hstack([Zc, Zc])[None], yc[None], np.hstack([Zq, Zq])[None])[0]
    np.testing.assert_allclose(p, ref, atol=1e-6)
    assert np.abs(p - run_method("tart", Xc, yc, Xq, reasoner=reasoner, d=8)).max() > 1e-4  # not zero-padded tart
    assert get_method("tart_pca8x2").dims() == 8 and get_method("tart_pca8x2").needs_reasoner
    run_method("tart_pca8x2", Xc[:10], yc[:10], Xq, reasoner=reasoner)  # k > 8 is enough
    with pytest.raises(MethodError, match="k=8 <= d=8"):
        run_method("tart_pca8x2", Xc[:8], yc[:8], Xq, reasoner=reasoner)
    with pytest.raises(MethodError, match="fits d=8"):
        run_method("tart_pca8x2", Xc, yc, Xq, reasoner=reasoner, d=4)
