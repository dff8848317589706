"""From a name to a model: registry name, local folder or HF id; its config, kind and revision.

Nothing here loads weights: `backbone_info(name)` gives (kind, revision) from config.json
alone, and `inspect_backbone` is the check every loader runs first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .cache import CACHE_META, content_hash, read_cache_meta
from .errors import BackboneError
from .registry import REGISTRY, known_backbones

VISION_MODEL_TYPES = {
    "vit", "deit", "beit", "dinov2", "dinov2_with_registers", "swin", "swinv2", "convnext", "convnextv2",
    "clip_vision_model", "siglip_vision_model", "vit_mae", "vit_msn", "data2vec-vision", "levit", "mobilevit",
    "efficientnet", "resnet", "regnet", "poolformer", "pvt", "segformer", "yolos", "dpt", "hiera",
}
AUDIO_MODEL_TYPES = {"whisper", "wav2vec2", "hubert", "wavlm", "data2vec-audio", "audio-spectrogram-transformer"}


def _looks_like_hf_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and "/" in name and not name.startswith((".", "/", "~"))


@dataclass(frozen=True)
class Resolved:
    name: str
    location: str  # local folder or HF id
    local: bool
    revision: str
    kind: str | None  # None: infer from config


def resolve(name_or_path: str) -> Resolved:
    if name_or_path in REGISTRY:
        src = REGISTRY[name_or_path]
        folder = src.folder()
        meta_path = folder / CACHE_META
        rev = read_cache_meta(folder).get("revision") if meta_path.is_file() else None
        return Resolved(name_or_path, str(folder), True, rev or content_hash(folder), src.kind)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return Resolved(str(path), str(path.resolve()), True, content_hash(path), None)
    if path.exists():
        raise BackboneError(f"backbone {name_or_path!r} is a file; expected a model folder (config.json + *.safetensors)")
    if _looks_like_hf_id(name_or_path):
        return Resolved(name_or_path, name_or_path, False, "", None)
    raise BackboneError(
        f"unknown backbone {name_or_path!r}; known: {', '.join(known_backbones())} "
        f"(or an HF model id like owner/name, or a local model folder)"
    )


def raw_config(res: Resolved) -> tuple[dict, str]:
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


@dataclass(frozen=True)
class HubProbe:
    """What the hub says of a model id: its kind, or a problem; `checked` False: offline / unreachable."""

    checked: bool
    kind: str | None = None
    problem: str | None = None


def probe_hub(name: str, timeout_s: float = 10.0) -> HubProbe:
    """Fetch an HF id's config.json (a few KB) to tell a mistyped id before any work.

    Registry names and local folders are not hub ids (checked=True, nothing to say). With
    HF_HUB_OFFLINE=1, or when the hub cannot be reached, nothing is decided (checked=False):
    a cluster node may still reach it, or have it cached.
    """
    if name in REGISTRY or Path(name).expanduser().exists() or not _looks_like_hf_id(name):
        return HubProbe(True)
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if constants.HF_HUB_OFFLINE:
        return HubProbe(False)
    try:
        path = hf_hub_download(name, "config.json", etag_timeout=timeout_s)
    except GatedRepoError:
        return HubProbe(True, problem=f"backbone {name!r}: the hub model is gated (accept its terms and set HF_TOKEN)")
    except RepositoryNotFoundError:
        return HubProbe(True, problem=f"backbone {name!r}: the hub has no model with that id (or it is private)")
    except RevisionNotFoundError as e:
        return HubProbe(True, problem=f"backbone {name!r}: {e}")
    except EntryNotFoundError:
        return HubProbe(True, problem=f"backbone {name!r}: the hub repository has no config.json; not an HF model")
    except Exception:  # noqa: BLE001 - unreachable, timed out, proxy: undecided, not wrong
        return HubProbe(False)
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return HubProbe(True, problem=f"backbone {name!r}: its config.json does not parse ({e})")
    return HubProbe(True, kind=infer_kind(cfg))


def check_safetensors(res: Resolved) -> None:
    if not res.local:
        return  # use_safetensors=True makes from_pretrained refuse pickle weights on the hub
    folder = Path(res.location)
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        raise BackboneError(
            f"{folder}: no *.safetensors weights"
            + (f" (found {', '.join(sorted(pickles))}: pickle formats are refused; convert to safetensors)" if pickles else "")
        )


def infer_kind(cfg: dict) -> str:
    mt = str(cfg.get("model_type", "")).lower()
    archs = [str(a) for a in cfg.get("architectures") or []]
    if mt in AUDIO_MODEL_TYPES:
        return "audio"
    if mt in VISION_MODEL_TYPES or ("image_size" in cfg and "num_channels" in cfg and "vocab_size" not in cfg):
        return "vision"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or cfg.get("is_decoder"):
        return "causal"
    return "encoder"


def backbone_info(name: str) -> tuple[str, str]:
    """(kind, revision) of a backbone without loading its weights; BackboneError if unknown."""
    res = resolve(name)
    if res.kind == "audio":
        return "audio", res.revision
    cfg, revision = raw_config(res)
    return res.kind or infer_kind(cfg), revision or res.revision


def inspect_backbone(name_or_path: str, trust_remote_code: bool) -> tuple[Resolved, dict, str, str]:
    """(resolved, config.json, revision, kind) of a backbone to load; refuses remote code unless trusted."""
    res = resolve(name_or_path)
    cfg, revision = raw_config(res)
    if cfg.get("auto_map") and not trust_remote_code:
        raise BackboneError(
            f"backbone {res.name!r} needs custom code from its repository (config.json has auto_map: "
            f"{sorted(cfg['auto_map'])}); refusing to run it. Pass trust_remote_code=True only if you trust it."
        )
    return res, cfg, revision, res.kind or infer_kind(cfg)
