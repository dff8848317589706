"""The reasoner: batched queries, strict checkpoints, input checks, shipped quality."""

import json
import shutil

import numpy as np
import pytest
import torch

from pipeline import load_reasoner
from pipeline.reasoner import (
    ReasonerConfig,
    ReasonerError,
    ReasonerModel,
    default_checkpoint_dir,
    load_model,
    save_checkpoint,
)
from pipeline.synthetic import TaskSpec, sample_episodes_np
from pipeline.synthetic_eval import evaluate


@pytest.fixture(scope="module")
def shipped():
    return load_reasoner()


def _episode(rng, b=3, k=20, q=7, d=16):
    return rng.standard_normal((b, k, d)), rng.integers(0, 2, (b, k)), rng.standard_normal((b, q, d))


def test_batched_queries_equal_one_pass_per_query(shipped):
    xc, yc, xq = _episode(np.random.default_rng(0))
    batched = shipped.predict_proba(xc, yc, xq)
    single = np.concatenate([shipped.predict_proba(xc, yc, xq[:, i : i + 1]) for i in range(xq.shape[1])], 1)
    assert batched.shape == (3, 7)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # chunking the queries does not change answers either
    shipped.query_chunk = 2
    try:
        np.testing.assert_allclose(shipped.predict_proba(xc, yc, xq), batched, atol=1e-5)
    finally:
        shipped.query_chunk = 1024


def test_query_answer_equals_training_forward_at_next_x(shipped):
    """The batched query path is the causal model's logit at x_{k+1}, nothing else."""
    xc, yc, xq = _episode(np.random.default_rng(1), q=1)
    p = shipped.predict_proba(xc, yc, xq)[:, 0]
    x = torch.tensor(np.concatenate([xc, xq], 1), dtype=torch.float32)
    y = torch.tensor(np.concatenate([yc, np.zeros((3, 1))], 1), dtype=torch.float32)
    with torch.no_grad():
        ref = torch.sigmoid(shipped.model(x, y)[:, -1]).numpy()
    np.testing.assert_allclose(p, ref, atol=1e-5)


def test_queries_do_not_see_each_other(shipped):
    rng = np.random.default_rng(2)
    xc, yc, xq = _episode(rng, q=5)
    base = shipped.predict_proba(xc, yc, xq)
    xq2 = xq.copy()
    xq2[:, 1:] = rng.standard_normal(xq2[:, 1:].shape) * 5  # change every other query
    np.testing.assert_allclose(shipped.predict_proba(xc, yc, xq2)[:, 0], base[:, 0], atol=1e-5)


def test_smaller_d_is_zero_padded(shipped):
    xc, yc, xq = _episode(np.random.default_rng(3), d=8)
    pad = lambda a: np.concatenate([a, np.zeros(a.shape[:2] + (8,))], axis=2)
    np.testing.assert_allclose(shipped.predict_proba(xc, yc, xq), shipped.predict_proba(pad(xc), yc, pad(xq)), atol=1e-6)


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((1, 300, 16), (1, 300), (1, 2, 16)), "k=300 exceeds the reasoner's trained context: at most 257"),
        (((1, 20, 17), (1, 20), (1, 2, 17)), "d=17 is larger than the reasoner's trained d=16"),
        (((1, 20, 16), (1, 19), (1, 2, 16)), "inconsistent shapes"),
        (((20, 16), (20,), (2, 16)), r"expected x_context \(B, k, d\)"),
    ],
)
def test_bad_shapes_are_rejected(shipped, shapes, match):
    (c, y, q) = shapes
    with pytest.raises(ReasonerError, match=match):
        shipped.predict_proba(np.zeros(c), np.zeros(y), np.zeros(q))


def test_non_binary_labels_and_nans_are_rejected(shipped):
    xc, yc, xq = _episode(np.random.default_rng(4))
    with pytest.raises(ReasonerError, match="binary labels"):
        shipped.predict_proba(xc, yc + 1, xq)
    xc[0, 0, 0] = np.nan
    with pytest.raises(ReasonerError, match="NaN"):
        shipped.predict_proba(xc, yc, xq)


def test_checkpoint_round_trip_and_strict_loading(tmp_path):
    cfg = ReasonerConfig(d=4, max_points=10, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    model = ReasonerModel(cfg)
    save_checkpoint(model, tmp_path / "ok")
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["config.json", "model.safetensors"]
    back = load_model(tmp_path / "ok")
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])

    # weights of another architecture under this config: wrong shapes are named
    other = ReasonerModel(ReasonerConfig(d=4, max_points=10, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(other, tmp_path / "other")
    shutil.copy(tmp_path / "ok" / "config.json", tmp_path / "other" / "config.json")
    with pytest.raises(ReasonerError, match=r"of wrong shape e.g. \['blocks.0.fc.bias \(128,\) vs \(64,\)"):
        load_model(tmp_path / "other")

    # a config claiming more layers than the weights hold: missing keys are named
    bad = json.loads((tmp_path / "ok" / "config.json").read_text())
    bad["reasoner"]["n_layer"] = 2
    (tmp_path / "ok2").mkdir()
    shutil.copy(tmp_path / "ok" / "model.safetensors", tmp_path / "ok2" / "model.safetensors")
    (tmp_path / "ok2" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ReasonerError, match=r"missing e.g. \['blocks.1"):
        load_model(tmp_path / "ok2")

    # a foreign config.json (e.g. a HF model folder) is refused by architecture
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"architectures": ["GPT2Model"]}))
    with pytest.raises(ReasonerError, match="is not a TART reasoner"):
        load_model(tmp_path / "hf")

    # a corrupt weights file is an error naming the file, and the good checkpoint is untouched
    (tmp_path / "ok2" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "ok2" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ReasonerError, match="cannot read weights"):
        load_model(tmp_path / "ok2")
    load_model(tmp_path / "ok")

    with pytest.raises(ReasonerError, match="does not exist"):
        load_reasoner(tmp_path / "nowhere")


def test_shipped_checkpoint_is_small_and_documented():
    d = default_checkpoint_dir()
    assert (d / "model.safetensors").stat().st_size < 16 * 2**20
    card = (d / "README.md").read_text()
    for needle in ("n_layer", "steps", "seed", "logistic regression", "Bayes"):
        assert needle in card


@pytest.mark.slow
def test_shipped_reasoner_matches_logistic_regression(shipped):
    """The quality bar: within 3 points of LR fit on the k context points at k=32 and 64."""
    res = evaluate(shipped, ks=(32, 64), episodes=200, queries=16, seed=777)
    for k in (32, 64):
        row = res[k]
        assert row["reasoner"] >= row["logistic_regression"] - 0.03, (k, row)
        assert row["bayes"] > row["reasoner"]  # Bayes knows w: the ceiling
    assert res[64]["reasoner"] > res[32]["reasoner"]  # more context helps
