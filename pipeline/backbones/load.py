"""Loading a backbone: `load_backbone` (embeddings) and `load_causal_lm` (with its LM head)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..runtime import torch_dtype
from .model import AudioBackbone, Backbone, BackboneError, ConvBackbone, HFWhisperBackbone
from .pooling import AUTO, MODES, check_pooling, resolve_pooling
from .registry import REGISTRY
from .resolve import Resolved, backbone_info, check_safetensors, inspect_backbone, resolve

POOLINGS = MODES + (AUTO,)  # each mode also "+normalize" (pipeline.backbones.pooling)
FRAME_POOLINGS = ("mean", "last")  # what audio encoders pool over their frames


def _torch_dtype(dtype: Any) -> Any:
    try:
        return torch_dtype(dtype)
    except ValueError as e:
        raise BackboneError(str(e)) from None


def _load_ct2_whisper(res: Resolved, device: str, pooling: str, window: str = "auto") -> AudioBackbone:
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


def _load_hf_whisper(res: Resolved, revision: str, cfg: dict, dtype: Any, device: str, pooling: str, window: str,
                     trust_remote_code: bool) -> HFWhisperBackbone:
    """A Whisper checkpoint's encoder through transformers (the decoder is dropped after loading)."""
    from transformers import WhisperFeatureExtractor

    model = _load_hf_model(res, dtype, device, trust_remote_code)
    encoder = model.get_encoder()
    try:  # the checkpoint's own mel settings; older folders may lack preprocessor_config.json
        fe = WhisperFeatureExtractor.from_pretrained(res.location)
    except OSError:
        fe = WhisperFeatureExtractor(feature_size=int(cfg.get("num_mel_bins", 80)))
    if fe.feature_size != encoder.num_mel_bins:
        raise BackboneError(f"backbone {res.name!r}: its feature extractor gives {fe.feature_size} mel bins, "
                            f"its encoder takes {encoder.num_mel_bins}")
    return HFWhisperBackbone(name=res.name, revision=revision, model=encoder, feature_extractor=fe,
                             pooling=pooling, location=res.location, device=device, window=window)


def _load_efficientnet(res: Resolved, cfg: dict, device: str, dtype: Any, layer: int, pooling: str) -> ConvBackbone:
    """EfficientNet-Lite0 from a cache folder of `registry._efficientnet_lite0_folder` (safetensors, strict)."""
    if layer != -1 or pooling != "mean":
        raise BackboneError(f"backbone {res.name!r} embeds the global average pool of its last feature map only "
                            f"(layer=-1, pooling='mean'); got layer={layer}, pooling={pooling!r}")
    from safetensors.torch import load_file

    from .efficientnet import EfficientNetLite0, scale_pixels

    check_safetensors(res)
    model = EfficientNetLite0(padding=cfg.get("padding", "same"))
    try:
        model.load_state_dict(load_file(str(Path(res.location) / "model.safetensors")), strict=True)
    except (OSError, RuntimeError) as e:
        raise BackboneError(f"cannot load backbone {res.name!r} from {res.location}: {e}") from None
    model = _frozen(model.to(_torch_dtype(dtype)), device)
    return ConvBackbone(name=res.name, revision=res.revision, model=model, image_size=int(cfg["image_size"]),
                        scale=scale_pixels, dim=int(cfg["hidden_size"]), location=res.location, device=device)


NATIVE_VISION = {"efficientnet_lite0": _load_efficientnet}  # config model_type -> loader (not HF AutoModel)


def _effective_pooling(res: Resolved, kind: str, pooling: str) -> str:
    """A valid `pooling` resolved for this backbone: `auto` reads a text model's sentence-transformers
    config (images and audio have none: mean); audio encoders pool frames by mean or last only."""
    if kind in ("encoder", "causal"):
        return resolve_pooling(res.location, res.local, pooling)
    pooling = "mean" if pooling == AUTO else pooling
    if kind == "audio" and pooling not in FRAME_POOLINGS:
        raise BackboneError(f"backbone {res.name!r} (audio) pools its encoder frames by "
                            f"{' or '.join(FRAME_POOLINGS)}; got pooling={pooling!r}")
    return pooling


def backbone_pooling(name_or_path: str, pooling: str, kind: str | None = None) -> str:
    """What `load_backbone(name_or_path, pooling=pooling)` pools by, without loading weights
    (an embedding cache key records this, never `auto`). `kind`: the backbone's, if the caller
    already has it from `backbone_info`."""
    check_pooling(pooling)
    if kind is None:
        kind, _ = backbone_info(name_or_path)
    return _effective_pooling(resolve(name_or_path), kind, pooling)


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
    pooling: "mean" over the example's own tokens, "last" (last real token), "cls", "max",
    "mean_sqrt_len", each optionally "+normalize"; or "auto": as the folder's sentence-transformers
    config says (e.g. all-MiniLM-L6-v2: mean+normalize), else mean (`pipeline.backbones.pooling`).
    The backbone's `pooling` is the resolved name.
    audio_window: Whisper only: "auto" (shortest window that holds each clip) or "30s".
    """
    check_pooling(pooling)  # before any folder is resolved or built
    res, cfg, revision, kind = inspect_backbone(name_or_path, trust_remote_code)
    pooling = _effective_pooling(res, kind, pooling)
    if kind == "audio":
        if res.name in REGISTRY:
            return _load_ct2_whisper(res, device=device, pooling=pooling, window=audio_window)
        if cfg.get("model_type") == "whisper":
            return _load_hf_whisper(res, revision or res.revision, cfg, dtype, device, pooling, audio_window,
                                    trust_remote_code)
        raise BackboneError(
            f"backbone {res.name!r} is an audio model ({cfg.get('model_type')}); Whisper checkpoints (HF ids, "
            f"local folders) and the registered CTranslate2 Whisper "
            f"({', '.join(n for n, s in REGISTRY.items() if s.kind == 'audio')}) are supported"
        )
    if kind == "vision" and cfg.get("model_type") in NATIVE_VISION:
        return NATIVE_VISION[cfg["model_type"]](res, cfg, device, dtype, layer, pooling)
    model = _load_hf_model(res, dtype, device, trust_remote_code)
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if n_layers and not -(n_layers + 1) <= layer <= n_layers:
        raise BackboneError(f"layer={layer}: backbone {res.name!r} has hidden states 0..{n_layers} (or -1..-{n_layers + 1})")
    tokenizer = image_processor = None
    if kind == "vision":
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(res.location, trust_remote_code=trust_remote_code)
        max_len = 0
    else:
        tokenizer, max_len = _tokenizer(res, model, trust_remote_code, max_length)
    return Backbone(name=res.name, kind=kind, revision=revision or res.revision, model=model, tokenizer=tokenizer,
                    image_processor=image_processor, layer=layer, pooling=pooling, max_length=max_len,
                    location=res.location, device=device)


def _load_hf_model(res: Resolved, dtype: Any, device: str, trust_remote_code: bool) -> Any:
    """The AutoModel of `res`, complete (a missing tensor is refused, not random-initialised) and frozen."""
    check_safetensors(res)
    tdtype = _torch_dtype(dtype)
    try:
        from transformers import AutoModel

        model, info = AutoModel.from_pretrained(res.location, dtype=tdtype, use_safetensors=True,
                                                output_loading_info=True, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise BackboneError(f"cannot load backbone {res.name!r} from {res.location}: {type(e).__name__}: {e}") from None
    # a missing tensor would be silently random-initialised (the pooler head is never used)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        raise BackboneError(f"backbone {res.name!r}: checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:5]}")
    return _frozen(model, device)


def _tokenizer(res: Resolved, model: Any, trust_remote_code: bool, max_length: int | None) -> tuple[Any, int]:
    """(tokenizer with a pad token, token limit): `max_length` if given, else the least of the model's
    positions, the tokenizer's limit and a sentence-transformers model's trained length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(res.location, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked out anyway
    if max_length is not None:
        return tokenizer, int(max_length)
    limits = [x for x in (getattr(model.config, "max_position_embeddings", None),
                          getattr(tokenizer, "model_max_length", None)) if x and x < 1_000_000]
    max_len = min(limits) if limits else 512
    st_cfg = Path(res.location) / "sentence_bert_config.json" if res.local else None
    if st_cfg is not None and st_cfg.is_file():  # sentence-transformers models state their trained length
        max_len = min(max_len, int(json.loads(st_cfg.read_text()).get("max_seq_length") or max_len))
    return tokenizer, max_len


def _frozen(model: Any, device: str) -> Any:
    """`model` on `device`, in eval mode, without gradients (and native GQA attention on CPU)."""
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _native_gqa_on_cpu(device)
    return model


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
    res, _, _, kind = inspect_backbone(name_or_path, trust_remote_code)
    if kind != "causal":
        raise BackboneError(f"model {res.name!r} is a {kind} model, not a causal LM")
    check_safetensors(res)
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
    return tok, _frozen(model, device)
