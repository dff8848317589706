"""Validation before work: what one `embed()` call will embed, checked before any model loads.

`make_plan(cfg)` resolves the backbone (kind, revision) without loading weights, resolves the
dtype for the device, loads the requested splits and checks that the dataset's modality is
the one the backbone embeds and that vanilla/loo get a causal LM. Unknown backbones or
datasets, missing columns and mismatches raise here, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import backbones
from ..datasets import load_examples
from ..modality import modality_of
from ..runtime import device_for, resolve_dtype
from .config import CONTEXT_PROTOCOLS, EmbedConfig, EmbedError


@dataclass
class Plan:
    examples: dict[str, Any]  # split -> datasets.Examples
    kind: str  # backbone kind (causal | encoder | vision | audio)
    revision: str  # backbone revision the driver resolved; every worker must load the same
    dtype: str  # resolved (never "auto")
    device: str
    pooling: str  # resolved (never "auto"): what the cache key and every embedder use


def make_plan(cfg: EmbedConfig) -> Plan:
    kind, revision = backbones.backbone_info(cfg.backbone)
    try:
        pooling = backbones.backbone_pooling(cfg.backbone, cfg.pooling, kind)
    except backbones.BackboneError as e:
        raise EmbedError(f"backbone {cfg.backbone!r}: {e}") from None
    if cfg.protocol in CONTEXT_PROTOCOLS and pooling not in ("mean", "last"):
        raise EmbedError(f"protocol={cfg.protocol} pools each example's span by mean or last; "
                         f"pooling={cfg.pooling!r} resolves to {pooling!r} for {cfg.backbone!r}")
    device = device_for(cfg.gpus_per_actor)
    dtype = resolve_dtype(cfg.dtype, device)
    splits = list(dict.fromkeys(cfg.splits))
    if cfg.protocol in CONTEXT_PROTOCOLS:
        if kind != "causal":
            raise EmbedError(f"protocol={cfg.protocol} needs a causal LM backbone; {cfg.backbone!r} is {kind}")
        splits = ["train", "test"]  # both are needed to build prompts for either
    want = modality_of(kind)
    examples = {}
    for s in splits:
        ex = load_examples(cfg.dataset, s, **cfg.dataset_options)
        if cfg.limit is not None and len(ex) > cfg.limit:
            ex = ex.subset(range(cfg.limit))
        if ex.modality != want:
            raise EmbedError(f"dataset {cfg.dataset!r} is {ex.modality} but backbone {cfg.backbone!r} ({kind}) needs {want}")
        examples[s] = ex
    return Plan(examples, kind, revision, dtype, device, pooling)
