#!/usr/bin/env bash
# The Ray Train GPU path on one GPU, for real: throughput (Ray Train + nccl vs the plain loop)
# and a worker failure injected mid-run that FailureConfig recovers from the last checkpoint,
# against an uninterrupted run of the same config (loss curves compared step by step).
#
#   bash bench/gpu_train_check.sh [OUT_DIR]
#
# Needs ray[train], mlflow(-skinny) and sqlalchemy/alembic importable (PYTHONPATH is fine).
# Writes bench_train_gpu.json, the two runs' reports and the loss comparison into OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/gpu_train_check}}
mkdir -p "$OUT_DIR"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYTHONPATH="$PWD:${PYTHONPATH:-}"
SCRATCH=$(mktemp -d /tmp/gpu_train_check.XXXX)
DB="sqlite:///$SCRATCH/mlflow.db"
export TART_MLFLOW_ARTIFACTS="$SCRATCH/mlartifacts"

nvidia-smi -L
python3 -c "import torch, ray, mlflow; print('torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__, 'cuda', torch.cuda.is_available())" || exit 3

[ -n "${SKIP_BENCH:-}" ] || {
echo "== 1. throughput: Ray Train (1 GPU worker, nccl) vs the plain loop, standard 12x8x256, bf16"
timeout 200 python3 bench/bench_train.py --gpu --size standard --batch 256 --points 258 --steps 60 \
    --log-every 20 --threads 4 --num-cpus "$(nproc)" --json "$OUT_DIR/bench_train_gpu.json"
}

# The shipped recipe (configs/train/default.yaml), shortened: 800 steps, checkpoints every 200.
# EXTRA: more key=value overrides (e.g. a CPU dry run: EXTRA="gpu=false size=tiny ...").
STEPS=${STEPS:-800} CKPT=${CKPT:-200} FAIL=${FAIL:-500}
COMMON=(--config configs/train/default.yaml steps=$STEPS checkpoint_every=$CKPT eval_every=$((2 * CKPT))
        log_every=$((CKPT / 4)) eval_episodes=128 "storage=$SCRATCH/runs" "mlflow_uri=$DB" register_as=null ${EXTRA:-})
echo "== 2. uninterrupted run"
timeout 200 python3 -m jobs.train "${COMMON[@]}" name=gpu-straight | tee "$OUT_DIR/straight.txt"
echo "== 3. the same run, its worker killed at step $FAIL (FailureConfig retries from the last checkpoint before it)"
timeout 200 python3 -m jobs.train "${COMMON[@]}" name=gpu-faulted fail_at_step=$FAIL | tee "$OUT_DIR/faulted.txt"

echo "== 4. loss curves from MLflow"
python3 - "$DB" "$OUT_DIR" <<'EOF'
import json, sys
from mlflow.tracking import MlflowClient

db, out = sys.argv[1], sys.argv[2]
c = MlflowClient(db)
curves = {}
for name in ("gpu-straight", "gpu-faulted"):
    exp = c.get_experiment_by_name("tart-train")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.info.run_name == name]
    assert len(runs) == 1, (name, len(runs))
    r = runs[0]
    curves[name] = {m.step: m.value for m in c.get_metric_history(r.info.run_id, "loss")}
    print(name, r.info.status, "tags:", {k: v for k, v in r.data.tags.items() if k.startswith("tart.")})
a, b = curves["gpu-straight"], curves["gpu-faulted"]
steps = sorted(set(a) & set(b))
diff = max(abs(a[s] - b[s]) for s in steps)
rep = {"steps_compared": len(steps), "max_abs_loss_diff": diff, "final_step": steps[-1],
       "final_loss_straight": a[steps[-1]], "final_loss_faulted": b[steps[-1]]}
print(json.dumps(rep, indent=2))
json.dump({"curves": curves, **rep}, open(f"{out}/loss_curves.json", "w"), indent=1)
EOF
ls "$SCRATCH/runs"/*/ 2>/dev/null | head -20
