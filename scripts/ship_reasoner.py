"""Export a training checkpoint as a shipped reasoner folder (`pipeline/assets/<folder>/`).

    python scripts/ship_reasoner.py CHECKPOINT_DIR pipeline/assets/reasoner_v2 [--max-k 64]

The weights are stored in float16 (loaded back into float32; half the bytes) and, with
--max-k, the position table is cut to the contexts the reasoner was trained on
(max_points = max_k + 1), so that `Reasoner.max_k`, the grid and `TartClassifier` refuse
larger k instead of running the model where it never learned. The training config, step and
metrics history travel with it (config.json, train_metrics.jsonl); the model card
(README.md) is written by hand from the measurements.
"""

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from pipeline.reasoner import ReasonerModel, load_model, read_checkpoint_config, save_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--max-k", type=int, default=None, help="largest context trained (cuts the position table)")
    a = p.parse_args()
    meta = read_checkpoint_config(a.checkpoint)
    model = load_model(a.checkpoint)
    cfg = model.cfg
    if a.max_k is not None:
        if not 1 <= a.max_k < cfg.max_points:
            sys.exit(f"--max-k {a.max_k}: expected 1 <= max_k < max_points={cfg.max_points}")
        cfg = replace(cfg, max_points=a.max_k + 1)
        state = model.state_dict()
        state["pos.weight"] = state["pos.weight"][: 2 * cfg.max_points]
        model = ReasonerModel(cfg)
        model.load_state_dict(state, strict=True)
    out = Path(a.out)
    extra = {k: v for k, v in meta.items() if k not in ("architecture", "reasoner")}
    save_checkpoint(model.to(torch.float16), out, extra=extra)
    hist = Path(a.checkpoint) / "metrics.jsonl"
    if hist.is_file():
        shutil.copyfile(hist, out / "train_metrics.jsonl")
    print(json.dumps({"out": str(out), "reasoner": cfg.__dict__, "step": meta.get("step")}))


if __name__ == "__main__":
    main()
