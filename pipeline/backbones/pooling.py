"""How a backbone turns its token (patch, frame) states into one vector per example.

A pooling is a mode, optionally followed by "+normalize" (unit L2 norm):

    mean            mean over the example's own tokens (the default)
    last            the last real token
    cls             the first token (BERT-style [CLS])
    max             the element-wise max over the example's own tokens
    mean_sqrt_len   the sum over the tokens divided by sqrt(their count)

and `auto` follows a sentence-transformers folder: its `modules.json` names a Pooling module
(whose config.json says the mode) and, often, a Normalize module; all-MiniLM-L6-v2, for one, is
"mean+normalize". A folder without that config pools "mean". `auto` is resolved before anything
is embedded (`resolve_pooling`), and what it resolved to is what backbones, cache keys and
manifests record, so two poolings never share a cache entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .errors import BackboneError

MODES = ("mean", "last", "cls", "max", "mean_sqrt_len")
NORMALIZE = "+normalize"
AUTO = "auto"
# sentence-transformers' Pooling config flags -> our modes (weighted mean has no equivalent here)
_ST_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
             "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len", "pooling_mode_lasttoken": "last"}


def split_pooling(pooling: str) -> tuple[str, bool]:
    """(mode, normalise?) of a resolved pooling name."""
    if pooling.endswith(NORMALIZE):
        return pooling[: -len(NORMALIZE)], True
    return pooling, False


def pooling_problem(pooling: str) -> Optional[str]:
    """None if `pooling` is a valid pooling name, else what is wrong with it (for the caller's error)."""
    if pooling == AUTO or split_pooling(str(pooling))[0] in MODES:
        return None
    return (f"pooling={pooling!r}: expected one of {', '.join(MODES)} (each optionally +normalize, e.g. "
            f"mean+normalize) or auto (the folder's sentence-transformers pooling, else mean)")


def check_pooling(pooling: str) -> None:
    """BackboneError unless `pooling` is a valid pooling name."""
    problem = pooling_problem(pooling)
    if problem:
        raise BackboneError(problem)


def _read_file(location: str, local: bool, name: str) -> Optional[str]:
    """Text of `name` in a model folder or HF repo; None if it has no such file (or it is not cached offline)."""
    if local:
        p = Path(location) / name
        return p.read_text() if p.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(location, name)).read_text()
    except Exception:  # no such file in the repo, or offline and not cached: no sentence-transformers config
        return None


def sentence_transformers_pooling(location: str, local: bool = True) -> Optional[str]:
    """The pooling a sentence-transformers folder (or HF repo) declares, e.g. "mean+normalize"; None
    if it declares none. A Pooling config with no mode this module implements is refused by name."""
    modules_text = _read_file(location, local, "modules.json")
    if modules_text is None:
        return None
    modules = json.loads(modules_text)
    types = [str(m.get("type", "")) for m in modules]
    pool = next((m for m in modules if str(m.get("type", "")).endswith("models.Pooling")), None)
    if pool is None:
        return None
    cfg_text = _read_file(location, local, f"{pool.get('path') or '1_Pooling'}/config.json")
    if cfg_text is None:
        raise BackboneError(f"{location}: modules.json names a Pooling module at {pool.get('path')!r} "
                            f"but its config.json is missing")
    cfg = json.loads(cfg_text)
    modes = [mode for flag, mode in _ST_FLAGS.items() if cfg.get(flag)]
    unsupported = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in _ST_FLAGS)
    if len(modes) != 1 or unsupported:
        raise BackboneError(f"{location}: its sentence-transformers Pooling config asks for "
                            f"{modes + unsupported or 'no mode'}; pooling=auto supports exactly one of "
                            f"{', '.join(_ST_FLAGS)}. Pass an explicit pooling ({', '.join(MODES)}) instead")
    normalise = any(t.endswith("models.Normalize") for t in types)
    return modes[0] + (NORMALIZE if normalise else "")


def resolve_pooling(location: str, local: bool, pooling: str) -> str:
    """A valid `pooling` (`check_pooling`) with `auto` replaced by what the folder declares (or
    "mean"); others unchanged."""
    if pooling != AUTO:
        return pooling
    return sentence_transformers_pooling(location, local) or "mean"


def pool_states(h: Any, mask: Any, pooling: str) -> Any:
    """(B, D) vectors from token states `h` (B, T, D) and the 0/1 mask of real tokens (B, T);
    real tokens are left-aligned (right padding), as `Backbone.embed_texts` builds batches."""
    import torch

    mode, normalise = split_pooling(pooling)
    m = mask.unsqueeze(-1).to(h.dtype)
    n = m.sum(1).clamp_min(1.0)
    if mode == "mean":
        v = (h * m).sum(1) / n
    elif mode == "mean_sqrt_len":
        v = (h * m).sum(1) / n.sqrt()
    elif mode == "max":
        v = h.masked_fill(m == 0, torch.finfo(h.dtype).min).amax(1)
    elif mode == "cls":
        v = h[:, 0]
    elif mode == "last":
        v = h[torch.arange(h.shape[0]), mask.sum(1).long() - 1]
    else:
        raise BackboneError(pooling_problem(pooling) or f"pooling={pooling!r}: not implemented")
    return torch.nn.functional.normalize(v, dim=-1) if normalise else v
