"""Poolings, and `auto`: a sentence-transformers folder pooled as its own config says.

The reference is sentence-transformers itself (installed with setfit) on the same folder:
all-MiniLM-L6-v2 as shipped (mean + Normalize) and a copy whose Pooling config asks for CLS.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from pipeline import embed as E
from pipeline.backbones import BackboneError, backbone_pooling, load_backbone
from pipeline.backbones.pooling import pool_states, sentence_transformers_pooling
from pipeline.config import ConfigError

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("tart_cache")]

TEXTS = ["The weather is lovely today.", "ok", "Free entry in 2 a weekly competition to win cup final tickets!",
         "Can you pick up some milk on your way home tonight?"]


def _minilm_folder() -> Path:
    from pipeline.backbones.resolve import resolve

    return Path(resolve("minilm-l6").location)


def _copy_with_pooling(src: Path, dst: Path, flags: dict, normalize: bool) -> Path:
    """`src` with its Pooling config replaced by `flags` (and the Normalize module kept or dropped)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "1_Pooling" / "config.json").read_text())
    cfg.update({k: False for k in cfg if k.startswith("pooling_mode_")}, **flags)
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    modules = [m for m in json.loads((dst / "modules.json").read_text())
               if normalize or not m["type"].endswith("Normalize")]
    (dst / "modules.json").write_text(json.dumps(modules))
    return dst


def _sentence_transformers(folder: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)


def test_auto_follows_minilms_own_config_as_sentence_transformers_does():
    assert sentence_transformers_pooling(str(_minilm_folder())) == "mean+normalize"
    assert backbone_pooling("minilm-l6", "auto") == "mean+normalize"
    bb = load_backbone("minilm-l6", pooling="auto")
    assert bb.pooling == "mean+normalize" and bb.fingerprint["pooling"] == "mean+normalize"
    ours = bb.embed_texts(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, _sentence_transformers(_minilm_folder()), atol=2e-5)
    plain = load_backbone("minilm-l6").embed_texts(TEXTS)  # the default stays plain mean pooling
    assert load_backbone("minilm-l6").pooling == "mean" and not np.allclose(np.linalg.norm(plain, axis=1), 1.0)
    np.testing.assert_allclose(ours, plain / np.linalg.norm(plain, axis=1, keepdims=True), atol=1e-5)


def test_auto_takes_a_cls_config_and_no_normalize(tmp_path):
    folder = _copy_with_pooling(_minilm_folder(), tmp_path / "cls", {"pooling_mode_cls_token": True}, normalize=False)
    bb = load_backbone(str(folder), pooling="auto")
    assert bb.pooling == "cls"
    np.testing.assert_allclose(bb.embed_texts(TEXTS), _sentence_transformers(folder), atol=2e-5)


def test_auto_refuses_a_mode_it_does_not_implement_by_name(tmp_path):
    folder = _copy_with_pooling(_minilm_folder(), tmp_path / "w", {"pooling_mode_weightedmean_tokens": True},
                                normalize=True)
    with pytest.raises(BackboneError, match="pooling_mode_weightedmean_tokens.*explicit pooling"):
        load_backbone(str(folder), pooling="auto")
    assert load_backbone(str(folder), pooling="mean").pooling == "mean"  # an explicit pooling still loads


def test_a_folder_without_a_sentence_transformers_config_pools_mean(tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(_minilm_folder(), folder, ignore=shutil.ignore_patterns("modules.json", "1_Pooling"))
    assert sentence_transformers_pooling(str(folder)) is None
    assert load_backbone(str(folder), pooling="auto").pooling == "mean"
    assert backbone_pooling("smollm2-135m", "auto") == "mean"  # a causal LM without one


def test_pool_states_against_numpy():
    import torch

    rng = np.random.default_rng(0)
    h = rng.standard_normal((3, 5, 4)).astype(np.float32)
    lengths = [5, 2, 3]
    mask = np.array([[1] * n + [0] * (5 - n) for n in lengths])
    want = {
        "mean": [h[i, :n].mean(0) for i, n in enumerate(lengths)],
        "last": [h[i, n - 1] for i, n in enumerate(lengths)],
        "cls": [h[i, 0] for i in range(3)],
        "max": [h[i, :n].max(0) for i, n in enumerate(lengths)],  # padding never wins
        "mean_sqrt_len": [h[i, :n].sum(0) / np.sqrt(n) for i, n in enumerate(lengths)],
    }
    for mode, rows in want.items():
        got = pool_states(torch.from_numpy(h), torch.from_numpy(mask), mode).numpy()
        np.testing.assert_allclose(got, np.stack(rows), atol=1e-6, err_msg=mode)
        normed = pool_states(torch.from_numpy(h), torch.from_numpy(mask), mode + "+normalize").numpy()
        np.testing.assert_allclose(normed, got / np.linalg.norm(got, axis=1, keepdims=True), atol=1e-6)


def test_the_cache_key_records_what_auto_resolved_to(tmp_path):
    base = dict(dataset="sms_spam", dataset_options={"test_size": 20}, splits=["test"], backbone="minilm-l6",
                cache_uri=str(tmp_path), executor="local", batch_size=16, torch_threads=1, dtype="float32")
    mean = E.embed(E.EmbedConfig(**base), log=lambda _m: None)
    auto = E.embed(E.EmbedConfig(**base, pooling="auto"), log=lambda _m: None)
    assert auto.computed == 1 and auto.entries[0]["key_hash"] != mean.entries[0]["key_hash"]
    man = json.loads((Path(auto.entries[0]["uri"]) / E.MANIFEST).read_text())
    assert man["key"]["pooling"] == man["pooling"] == "mean+normalize"
    np.testing.assert_allclose(np.linalg.norm(auto.X, axis=1), 1.0, atol=1e-5)
    # naming the resolved pooling reads the same entry: `auto` itself is never part of a key
    again = E.embed(E.EmbedConfig(**base, pooling="mean+normalize"), log=lambda _m: None)
    assert again.computed == 0 and again.entries[0]["key_hash"] == auto.entries[0]["key_hash"]


def test_bad_poolings_fail_before_any_model_loads():
    with pytest.raises(ConfigError, match="pooling='median'"):
        E.EmbedConfig(pooling="median").validate()
    with pytest.raises(E.EmbedError, match="protocol=vanilla pools each example's span by mean or last"):
        E.embed(E.EmbedConfig(backbone="smollm2-135m", protocol="vanilla", pooling="cls", executor="local",
                              ks=[4], seeds=[0]), log=lambda _m: None)
    with pytest.raises(E.EmbedError, match=r"\(audio\) pools its encoder frames by mean or last"):
        E.embed(E.EmbedConfig(dataset="spoken_digits", backbone="whisper-tiny-en", pooling="max", executor="local"),
                log=lambda _m: None)
