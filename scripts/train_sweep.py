"""Train several reasoner recipes side by side on one GPU (each its own process).

Used to find and train the shipped reasoner on a lent GPU box that has torch but no
Ray: it calls the same `train_loop` as `tart train`, through `train_local`.

    python scripts/train_sweep.py OUT_DIR BUDGET_S name:key=v,key=v name2:...

Each variant trains for its `steps` (stopping early, with a checkpoint, once BUDGET_S
seconds are spent), then is scored on held-out synthetic episodes next to logistic
regression and Bayes.
"""

import json
import multiprocessing as mp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_variant(out_dir: str, budget: float, name: str, overrides: list[str]) -> None:
    import torch

    from pipeline.config import load_config
    from pipeline.reasoner import load_reasoner
    from pipeline.synthetic_eval import evaluate, format_table
    from pipeline.train import TrainConfig, train_local

    torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(out_dir) / name
    cfg = load_config(TrainConfig, None, overrides + [f"time_budget_s={budget}", "gpu=true"])
    print(f"[{name}] steps={cfg.steps}, interval={cfg.curriculum.interval}, budget {budget:.0f}s", flush=True)
    res = train_local(cfg, str(out / "run"), device="cuda")
    ckpts = sorted((out / "run").glob("checkpoint_*"))
    r = load_reasoner(ckpts[-1], device="cuda")
    ev = evaluate(r, (18, 32, 64, 128), episodes=500, queries=32)
    print(f"[{name}] final step {res.get('step')}\n" + format_table(ev), flush=True)
    (out / "eval.json").write_text(json.dumps({"variant": name, "overrides": overrides,
                                               "final": {k: v for k, v in res.items() if k != "history"},
                                               "eval": ev}, indent=2))


def main() -> None:
    out_dir, budget = sys.argv[1], float(sys.argv[2])
    variants = []
    for spec in sys.argv[3:]:
        name, _, rest = spec.partition(":")
        variants.append((name, [kv for kv in rest.split(",") if kv]))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_variant, args=(out_dir, budget, n, o)) for n, o in variants]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
