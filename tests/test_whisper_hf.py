"""Whisper checkpoints through transformers (`HFWhisperBackbone`): HF ids and local folders.

No HF-format Whisper weights ship offline, so the model here is a small Whisper with seeded
random weights, saved as an HF folder (what `openai/whisper-*` snapshots hold) and converted
from that folder to CTranslate2 by CTranslate2's own converter. The two encoder paths must give
the same vectors for the same weights: that pins the transformers path (windows shorter than
30 s included) to the CTranslate2 one the shipped whisper-tiny-en takes.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from pipeline.backbones import AudioBackbone, BackboneError, HFWhisperBackbone, load_backbone

pytestmark = pytest.mark.timeout(300)
ct2 = pytest.importorskip("ctranslate2")

SR = 16000


@pytest.fixture(scope="module")
def whisper_folders(tmp_path_factory):
    """(HF folder, CTranslate2 folder) of one seeded tiny Whisper (d_model 64, 2 encoder layers)."""
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                        max_source_positions=1500, max_target_positions=64, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1)
    WhisperForConditionalGeneration(cfg).eval().save_pretrained(root / "hf")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "hf")
    TransformersConverter(str(root / "hf")).convert(str(root / "ct2"))
    return root / "hf", root / "ct2"


def _ct2_backbone(folder, window="auto") -> AudioBackbone:
    from transformers import WhisperFeatureExtractor

    model = ct2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    return AudioBackbone(name="tiny-random-ct2", revision="r", model=model, feature_extractor=WhisperFeatureExtractor(),
                         pooling="mean", location=str(folder), device="cpu", window=window)


def _clips():
    rng = np.random.default_rng(1)
    t = np.arange(SR * 3) / SR
    return [np.sin(2 * np.pi * 440 * t[: SR // 2]).astype(np.float32),  # 1 s window
            (0.1 * rng.standard_normal(27000)).astype(np.float32),  # 2 s window
            (np.sin(2 * np.pi * 220 * t) * 0.5).astype(np.float32)]  # 4 s window


def test_a_whisper_folder_loads_through_transformers(whisper_folders):
    hf, _ = whisper_folders
    bb = load_backbone(str(hf))
    assert isinstance(bb, HFWhisperBackbone) and bb.kind == "audio" and bb.modality == "audio"
    assert bb.dim == 64 and bb.revision  # the folder's content hash: a cache key tells checkpoints apart
    fp = bb.fingerprint
    assert fp["encoder"] == "transformers" and fp["dtype"] == "torch.float32" and fp["window"] == "auto"
    assert not any(n.startswith("decoder") for n, _ in bb.model.named_parameters())  # the encoder only
    bb.reset_counters()
    e = bb.embed_audio(_clips(), batch_size=8)
    assert e.shape == (3, 64) and np.isfinite(e).all()
    assert bb.forward_count == 3  # one pass per window (1 s, 2 s, 4 s)
    with pytest.raises(BackboneError, match="16000 Hz"):
        bb.embed_audio(_clips(), sampling_rate=8000)
    with pytest.raises(BackboneError, match="use embed_audio"):
        bb.embed_texts(["x"])


def test_short_windows_run_the_encoders_own_layers_as_its_forward_does(whisper_folders):
    """At 30 s the module-by-module path equals transformers' `WhisperEncoder.forward`."""
    import torch

    bb = load_backbone(str(whisper_folders[0]))
    feats = bb.feature_extractor(_clips(), sampling_rate=SR, return_tensors="pt").input_features
    with torch.inference_mode():
        library = bb._encoder_states(feats, full_forward=True)
        ours = bb._encoder_states(feats, full_forward=False)
    assert library.shape == (3, 1500, 64)
    torch.testing.assert_close(ours, library, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", ["auto", "30s"])
def test_transformers_and_ctranslate2_give_the_same_vectors(whisper_folders, window):
    hf, converted = whisper_folders
    ours = load_backbone(str(hf), audio_window=window).embed_audio(_clips())
    theirs = _ct2_backbone(converted, window).embed_audio(_clips())
    assert np.abs(theirs).max() > 0.1  # not a degenerate all-zero encoder
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-3)
    # a clip's vector does not depend on its batch (grouped by window, as the CTranslate2 path does)
    np.testing.assert_allclose(load_backbone(str(hf), audio_window=window).embed_audio(_clips()[1:2]), ours[1:2],
                               atol=1e-5)


def test_a_whisper_folder_as_the_embed_stage_backbone(whisper_folders, tmp_path):
    """The embed stage takes the folder like any backbone: entries keyed by its revision, reused."""
    import json
    from pathlib import Path

    from pipeline import embed as E
    from pipeline.datasets import load_examples

    opts = {"train_size": 8, "test_size": 6}
    cfg = E.EmbedConfig(dataset="spoken_digits", backbone=str(whisper_folders[0]), splits=["train", "test"],
                        dataset_options=opts, cache_uri=str(tmp_path / "cache"), executor="local", batch_size=4)
    first = E.embed(cfg, log=lambda *_: None)
    assert first.computed == 2
    for split in ("train", "test"):
        part = first.select(split)
        manifest = json.loads((Path(part.entries[0]["uri"]) / E.MANIFEST).read_text())
        # the stage's dtype `auto` is bfloat16 on a CPU with native bf16: compare at the dtype it ran
        bb = load_backbone(str(whisper_folders[0]), dtype=manifest["key"]["dtype"])
        assert manifest["revision"] == bb.revision and manifest["backbone"] == str(whisper_folders[0])
        np.testing.assert_allclose(part.X, bb.embed_audio(load_examples("spoken_digits", split, **opts).audios),
                                   atol=1e-5)
    again = E.embed(cfg, log=lambda *_: None)
    assert again.computed == 0 and again.forward_passes == 0


def test_audio_models_other_than_whisper_are_refused_by_name(tmp_path):
    from transformers import Wav2Vec2Config

    Wav2Vec2Config().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(BackboneError, match=r"audio model \(wav2vec2\).*Whisper"):
        load_backbone(str(tmp_path))
