import sys, json, torch
sys.path.insert(0, "/work/main")
from pipeline.config import load_config
from pipeline.train.config import TrainConfig
from pipeline.train.local import train_local
out = sys.argv[1]; over = sys.argv[2:]
import os; torch.set_num_threads(int(os.environ.get("THREADS", "2")))
cfg = load_config(TrainConfig, "configs/train/v2-multiclass-cpu.yaml", over)
print(json.dumps({"overrides": over}), flush=True)
r = train_local(cfg, out)
print(json.dumps({k: v for k, v in r.items() if k != "history"}), flush=True)
