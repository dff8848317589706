"""Build a random-weight twin of a model: same config and tokenizer, weights drawn with seed 0
(a causal LM when the config names a *ForCausalLM architecture, else the bare encoder).

For timing on a machine that cannot hold the real weights (a lent GPU box gets at most
64 MiB of files): speed depends on the architecture and the token counts, not on the
weights. Predictions of a twin are meaningless; agreement between two code paths on the
same twin is not (both must score the same sequences the same way).

    python bench/random_twin.py SRC_FOLDER(config.json + tokenizer files) OUT_FOLDER
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(src: str, out: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    src_p, out_p = Path(src), Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    cfg = AutoConfig.from_pretrained(src_p)
    cfg.__dict__.pop("quantization_config", None)
    torch.manual_seed(0)
    causal = any(a.endswith("ForCausalLM") for a in (getattr(cfg, "architectures", None) or []))
    model = (AutoModelForCausalLM if causal else AutoModel).from_config(cfg)
    model.save_pretrained(out_p, safe_serialization=True)
    for f in src_p.iterdir():
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            shutil.copy(f, out_p / f.name)
    print(f"random twin of {src_p} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params) -> {out_p}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
