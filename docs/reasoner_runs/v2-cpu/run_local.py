"""Runs one fine-tune of issue 15's v2 recipe in this process (the loop `tart train` runs), as the
runs in this folder were: python docs/reasoner_runs/v2-cpu/run_local.py OUT_DIR [overrides...]
THREADS (default 2) sets torch's threads; the overrides apply to configs/train/v2-cpu.yaml."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from pipeline.config import load_config  # noqa: E402
from pipeline.train.config import TrainConfig  # noqa: E402
from pipeline.train.local import train_local  # noqa: E402

out, over = sys.argv[1], sys.argv[2:]
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
cfg = load_config(TrainConfig, "configs/train/v2-cpu.yaml", over)
print(json.dumps({"overrides": over}), flush=True)
r = train_local(cfg, out)
print(json.dumps({k: v for k, v in r.items() if k != "history"}), flush=True)
