"""A GGUF backbone's first load: the GGUF -> safetensors conversion, with its header parsed once.

transformers parses a GGUF's whole header (metadata and the tokenizer's vocabulary, string by string)
once for the tokenizer, once for the config and once for the weights, and the Gemma-3 build checks the
header once more (`registry.gguf_header`). `registry.gguf_parsed_once` lets those calls share one
parse. This converts each model into fresh temporary caches, alternating the shipped conversion with
the baseline (the same code with `gguf_parsed_once` as a no-op, i.e. the parses of before), and checks
that both write byte-identical weights.

    .venv/bin/python bench/bench_gguf_conversion.py [--models gemma3-270m smollm2-135m] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def convert(model: str, shared: bool) -> tuple[float, str]:
    """Seconds to build `model`'s backbone folder from its package into an empty cache, and the sha256
    of its weights file."""
    from pipeline.backbones import registry
    from pipeline.backbones.cache import file_sha256

    root = tempfile.mkdtemp(prefix="bench-gguf-")
    os.environ["TART_CACHE"] = root
    shipped = registry.gguf_parsed_once
    if not shared:
        registry.gguf_parsed_once = contextlib.nullcontext  # the baseline: every caller parses again
    try:
        t = time.perf_counter()
        folder = registry.REGISTRY[model].folder()
        seconds = time.perf_counter() - t
        return seconds, file_sha256(Path(folder) / "model.safetensors")
    finally:
        registry.gguf_parsed_once = shipped
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    for model in args.models:
        base, ours, digests = [], [], set()
        for _ in range(args.repeat):
            for shared, times in ((False, base), (True, ours)):
                s, digest = convert(model, shared)
                times.append(s)
                digests.add(digest)
        assert len(digests) == 1, f"{model}: the two conversions wrote different weights: {digests}"
        print(json.dumps({"model": model, "baseline_s": [round(x, 1) for x in base],
                          "parsed_once_s": [round(x, 1) for x in ours],
                          "speedup": round(min(base) / min(ours), 2), "weights_sha256": digests.pop()[:16]}),
              flush=True)


if __name__ == "__main__":
    main()
