"""Stage 2 `tart train`: Ray Train fault tolerance, resume, DDP, shards, MLflow, bad inputs.

Real local Ray (the module-scoped `ray_local` fixture) and a real sqlite MLflow store
in a temp dir. Only three TorchTrainer fits run in this module (each costs tens of
seconds of worker start-up on a busy 2-core box):

1. `fault`: a worker dies at step 4 (checkpoint at 3) under FailureConfig; compared with
   the same loop run uninterrupted in-process (`train_local`, no Ray).
2. the same run name re-run with more steps (a driver restart) resumes at the last step.
3. 2 DDP workers on CPU (gloo) reading shards written by `pipeline.generate`, through
   the CLI `main()`.
Everything else (bad inputs, config files, MLflow helpers) runs without a fit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import tracking
from pipeline.config import ConfigError, load_config
from pipeline.generate import GenerateConfig, ShardError, generate
from pipeline.reasoner import load_reasoner
from pipeline.synthetic import task_record
from pipeline.train import FINAL_DIR, TrainConfig, check_data, main, run_path, train, train_local

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "size=tiny", "task.points=34", "model.max_points=34", "eval_ks=[8,16]", "eval_episodes=32",
    "batch_size=8", "lr=1e-3", "warmup_steps=2", "curriculum.interval=3", "log_every=1",
    "eval_every=3", "checkpoint_every=3", "cpus_per_worker=0.5",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private MLflow store (sqlite) + artifact root + run storage for this module."""
    root = tmp_path_factory.mktemp("train")
    old = {k: os.environ.get(k) for k in ("TART_MLFLOW_ARTIFACTS", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")}
    os.environ["TART_MLFLOW_ARTIFACTS"] = str(root / "mlartifacts")
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    yield {"root": root, "uri": f"sqlite:///{root}/mlflow.db", "storage": str(root / "runs")}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def tiny_cfg(env, *overrides) -> TrainConfig:
    return load_config(TrainConfig, None, [*TINY, f"storage={env['storage']}", f"mlflow_uri={env['uri']}", *overrides])


def losses(history) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in history if "loss" in r}


@pytest.fixture(scope="module")
def fault_run(ray_local, env):
    cfg = tiny_cfg(env, "name=fault", "steps=6", "fail_at_step=4", "max_failures=2", "register_as=tart-test")
    return cfg, train(cfg)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "ep"
    cfg = load_config(GenerateConfig, None, [f"output={out}", "episodes=64", "shards=2", "task.d=8",
                                             "task.points=34", "executor=local"])
    generate(cfg, log=lambda *_: None)
    return str(out)


# ---------------------------------------------------------------- Ray Train fits


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_worker_failure_resumes_from_checkpoint_and_matches_uninterrupted(fault_run, env, tmp_path):
    cfg, rep = fault_run
    hist = [r for r in rep["history"] if "loss" in r]
    assert [r["step"] for r in hist] == [1, 2, 3, 4, 5, 6]
    # steps 1-3 ran in the first attempt; after the injected failure at step 4 the worker
    # group restarted from the step-3 checkpoint: the second attempt's first step is 4, not 1
    assert [r["segment_start"] for r in hist] == [0, 0, 0, 3, 3, 3]
    assert Path(run_path(cfg), "fault_injected").is_file()  # the marker lives in the run's storage
    assert rep["resumed_from"] is None and rep["metrics"]["step"] == 6

    # the same loop, uninterrupted, in this process (1 thread like a Ray worker)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = train_local(tiny_cfg(env, "name=base", "steps=6"), str(tmp_path / "base"))
    finally:
        torch.set_num_threads(threads)
    ref = losses(base["history"])
    got = losses(rep["history"])
    assert got.keys() == ref.keys()
    for s in ref:
        assert got[s] == pytest.approx(ref[s], abs=1e-5), f"step {s}"
    for k in ("synthetic_acc_k8", "synthetic_acc_k16"):
        assert rep["metrics"][k] == pytest.approx(base[k], abs=1e-6)
    # the exported final reasoner is the step-6 model and loads
    final = Path(rep["final_dir"])
    assert final == Path(run_path(cfg)) / FINAL_DIR
    r = load_reasoner(final)
    assert r.meta["step"] == 6 and r.model.cfg.n_layer == 3


@pytest.mark.slow  # needs the fault_run fit
@pytest.mark.timeout(120)
def test_mlflow_params_curves_artifact_and_registry(fault_run, env, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg, rep = fault_run
    mlflow.set_tracking_uri(env["uri"])
    client = MlflowClient(env["uri"], registry_uri=env["uri"])
    run = client.get_run(rep["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["model.n_layer"] == "3" and p["lr"] == "0.001" and p["steps"] == "6" and p["data"] == "online"
    assert "mlflow_uri" in p and "password" not in json.dumps(p).lower()
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in loss) == [1, 2, 3, 4, 5, 6]  # one point per step, no duplicate from the retry
    acc = client.get_metric_history(run.info.run_id, "synthetic_acc_k16")
    assert sorted(m.step for m in acc) == [3, 6]
    if tracking.system_metrics_available():
        assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "reasoner")}
    assert {"reasoner/model.safetensors", "reasoner/config.json", "reasoner/metrics.jsonl"} <= arts
    mv = client.get_model_version_by_alias("tart-test", "candidate")
    assert mv.run_id == run.info.run_id
    # the version is an MLflow Model (pyfunc, tests/test_registry.py) holding the checkpoint folder and its card
    local = Path(mlflow.artifacts.download_artifacts("models:/tart-test@candidate", dst_path=str(tmp_path / "dl")))
    assert (local / "MLmodel").is_file()
    assert load_reasoner(local / "artifacts" / "reasoner").meta["step"] == 6
    assert mv.tags["tart.weights_digest"] == run.data.tags["tart.weights_digest"]
    assert (local / "artifacts" / "reasoner" / "README.md").read_text().startswith("# Model card: TART reasoner `fault`")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_driver_restart_with_more_steps_resumes(fault_run, env):
    from mlflow.tracking import MlflowClient

    cfg, first = fault_run
    rep = train(tiny_cfg(env, "name=fault", "steps=9", "register_as=tart-test"))
    assert rep["resumed_from"] == 6
    hist = [r for r in rep["history"] if "loss" in r]
    assert [r["step"] for r in hist] == list(range(1, 10))
    assert [r["segment_start"] for r in hist][6:] == [6, 6, 6]
    assert losses(rep["history"])[6] == losses(first["history"])[6]  # history carried over, not recomputed
    # the same MLflow run continues; loss curve has every step exactly once
    client = MlflowClient(env["uri"], registry_uri=env["uri"])
    assert rep["mlflow_run_id"] == first["mlflow_run_id"]
    assert sorted(m.step for m in client.get_metric_history(rep["mlflow_run_id"], "loss")) == list(range(1, 10))
    assert client.get_run(rep["mlflow_run_id"]).data.tags["override.steps"] == "9"
    assert str(client.get_model_version_by_alias("tart-test", "candidate").version) == "2"
    assert load_reasoner(rep["final_dir"]).meta["step"] == 9
    # once finished, a re-run is a no-op (no worker starts)
    again = train(tiny_cfg(env, "name=fault", "steps=9"))
    assert again["resumed_from"] == 9 and again["metrics"]["step"] == 9


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_ddp_cpu_workers_from_generated_shards_via_cli(ray_local, env, shards, capsys):
    rc = main([*TINY, f"storage={env['storage']}", f"mlflow_uri={env['uri']}", "name=ddp", f"data={shards}",
               "workers=2", "micro_batch=2", "steps=4", "checkpoint_every=2", "model.d=16"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "checkpoint: " in out and "final reasoner: " in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["final_metrics"]["step"] == 4 and np.isfinite(summary["final_metrics"]["loss"])
    final = Path(env["storage"]) / "ddp" / FINAL_DIR
    r = load_reasoner(final)
    assert r.meta["train_config"]["workers"] == 2 and r.meta["train_config"]["data"] == shards
    rng = np.random.default_rng(0)
    p = r.predict_proba(rng.normal(size=(2, 8, 8)), rng.integers(0, 2, (2, 8)), rng.normal(size=(2, 3, 8)))
    assert p.shape == (2, 3) and np.all((p >= 0) & (p <= 1))
    # the global batch (8) is 2 workers x 2 micro-batches x 2: the loop saw all of it
    assert r.meta["train_config"]["batch_size"] == 8


# ---------------------------------------------------------------- bad input (no fit)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("bogus=1", "bogus"),
        ("model.bogus=1", "model.bogus"),
        ("eval_ks=[8,40]", "k=40"),
        ("task.points=40", "exceeds model.max_points=34"),
        ("batch_size=7", "not divisible"),
        ("size=huge", "size='huge'"),
        ("register_alias=latest", "reserves 'latest'"),
        ("fail_at_step=-1", "fail_at_step=-1"),
        ("cpus_per_worker=0", "cpus_per_worker"),
    ],
)
def test_bad_config_is_rejected(override, needle):
    with pytest.raises(ValueError) as e:
        load_config(TrainConfig, None, [*TINY, "workers=2", override])
    assert needle in str(e.value)


def test_cli_bad_key_exits_2_without_work(capsys):
    assert main(["bogus=1"]) == 2
    assert "unknown config key(s) bogus" in capsys.readouterr().err


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in ("--config", "--address", "name=", "storage=", "data=", "model.n_layer=", "curriculum.interval=",
                "micro_batch=0", "cpus_per_worker=0.5", "register_as=null", "fail_at_step=null"):
        assert key in out, key


def test_missing_and_corrupt_shards_fail_before_training(env, shards, tmp_path):
    cfg = tiny_cfg(env, "name=nope", f"data={tmp_path / 'no_such'}")
    with pytest.raises(ShardError, match="no _manifest.json"):
        train(cfg)  # raises in check_data, before Ray/MLflow are touched
    assert not (Path(env["storage"]) / "nope").exists()
    # corrupt a copy: same size, flipped bytes -> sha256 mismatch; truncated -> size mismatch
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    part = sorted(bad.glob("part-*.parquet"))[1]
    data = bytearray(part.read_bytes())
    data[100:110] = b"x" * 10
    part.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256"):
        check_data(tiny_cfg(env, f"data={bad}"), log=lambda *_: None)
    part.write_bytes(bytes(data[:-50]))
    with pytest.raises(ShardError, match="truncated"):
        check_data(tiny_cfg(env, f"data={bad}"), log=lambda *_: None)
    # shards wider than the model
    with pytest.raises(ConfigError, match="d=8"):
        check_data(tiny_cfg(env, f"data={shards}", "model.d=4", "task.d=4"), log=lambda *_: None)


@pytest.mark.slow  # needs the fault_run fit
@pytest.mark.timeout(60)
def test_checkpoint_of_another_architecture_is_refused(fault_run, env):
    cfg = tiny_cfg(env, "name=fault", "steps=20", "size=small")
    with pytest.raises(ConfigError, match="another reasoner architecture.*n_layer"):
        train(cfg)


def test_unreachable_tracking_server_is_a_clear_error():
    msgs = []
    with pytest.raises(tracking.TrackingError, match="unreachable after 3 attempts"):
        tracking.connect("http://127.0.0.1:9", retries=2, backoff_s=0.01, timeout_s=1, log=msgs.append)
    assert len(msgs) == 2  # two retries announced


def test_params_are_flattened_and_secrets_never_logged():
    flat = tracking.flatten_params({
        "lr": 0.001, "model": {"n_layer": 3}, "eval_ks": [8, 16], "register_as": None,
        "storage_options": {"aws_secret_access_key": "S3CR3T", "token": "T0K", "endpoint_url": "http://u:hunter2@h:9000"},
        "mlflow_password": "pw", "api_key": "k",
    })
    assert flat["lr"] == "0.001" and flat["model.n_layer"] == "3" and flat["eval_ks"] == "[8, 16]"
    assert flat["register_as"] == "null"
    blob = json.dumps(flat)
    for secret in ("S3CR3T", "T0K", "hunter2", "pw\"", "\"k\""):
        assert secret not in blob
    assert flat["storage_options.endpoint_url"] == "http://u:***@h:9000"
    assert tracking.resolve_tracking_uri("sqlite:///rel/m.db").startswith("sqlite:////")


def test_shipped_recipe_config_matches_the_shipped_reasoner():
    cfg = load_config(TrainConfig, REPO / "configs/train/default.yaml")
    shipped = json.loads((REPO / "pipeline/assets/reasoner/config.json").read_text())["train_config"]
    for key in ("batch_size", "lr", "warmup_steps", "steps", "schedule", "min_lr_ratio", "data", "model",
                "curriculum", "task", "eval_ks", "grad_clip", "weight_decay", "seed"):
        ours = getattr(cfg, key)
        ours = (task_record(ours) if key == "task" else ours.record() if key == "model"
                else ours.__dict__ if hasattr(ours, "__dict__") else ours)
        assert ours == shipped[key], key
    tiny = load_config(TrainConfig, REPO / "configs/train/tiny-cpu.yaml")
    assert tiny.accumulation == 2 and tiny.data != "online" and not tiny.gpu
    for f in ("default.yaml", "tiny-cpu.yaml"):
        assert (REPO / "configs/train" / f).read_text().startswith("# tart ")


def test_gpu_length_v2_recipe_is_the_task_cpu_run_p_trained():
    """configs/train/v2-d32-gpu.yaml is the recipe of CPU run P at GPU length: the same model shape and
    task (built here from the overrides P's log records on top of configs/train/v2-cpu.yaml), widened from
    v1, on a GPU; only the length and batch differ."""
    gpu = load_config(TrainConfig, REPO / "configs/train/v2-d32-gpu.yaml")
    run_p = json.loads((REPO / "docs/reasoner_runs/v2-cpu/P.log").read_text().splitlines()[0])["overrides"]
    task_overrides = [o for o in run_p if o.startswith(("model.", "task."))]
    cpu = load_config(TrainConfig, REPO / "configs/train/v2-cpu.yaml", task_overrides)
    assert task_record(gpu.task) == task_record(cpu.task)
    assert gpu.model.record() == cpu.model.record() and gpu.model.d == 32
    assert gpu.init_from == "v1" and gpu.gpu and gpu.steps * gpu.batch_size > 10 * 2400 * 64
    assert (REPO / "configs/train/v2-d32-gpu.yaml").read_text().startswith("# tart ")


def test_cpu_bf16_is_opt_in_and_follows_the_fp32_curve(env, tmp_path):
    """cpu_bf16=true runs the CPU forward under bf16 autocast: the same episodes give a loss curve
    that is not bit-identical to fp32's (the arithmetic really changed) yet stays within a few
    thousandths of it, and the synthetic evaluation agrees; the default stays fp32 on CPU."""
    assert TrainConfig().cpu_bf16 is False
    runs = {}
    for name, flag in (("fp32", "false"), ("bf16", "true")):
        cfg = tiny_cfg(env, f"name=prec-{name}", "steps=6", f"cpu_bf16={flag}", "system_metrics=false")
        runs[name] = train_local(cfg, str(tmp_path / name))["history"]
    a, b = losses(runs["fp32"]), losses(runs["bf16"])
    assert sorted(a) == sorted(b) == list(range(1, 7))
    diffs = [abs(a[s] - b[s]) for s in a]
    assert max(diffs) > 0, "bf16 autocast changed nothing: it did not run"
    assert max(diffs) < 0.005, (a, b)
    acc = lambda h: {k: v for r in h for k, v in r.items() if k.startswith("synthetic_acc_")}  # noqa: E731
    assert acc(runs["fp32"]).keys() == acc(runs["bf16"]).keys() and acc(runs["fp32"])
    for k, v in acc(runs["fp32"]).items():
        assert abs(v - acc(runs["bf16"])[k]) < 0.05, (k, v, acc(runs["bf16"])[k])


def test_train_state_loads_with_weights_only_and_restores_every_rng(env, tmp_path):
    """A checkpoint's train_state.pt holds no pickled numpy objects: it loads with
    weights_only=True (no code can run from a tampered file), and the RNG states it holds
    put python, numpy and torch back where they were. A file that needs a full unpickler
    is refused with an error naming it."""
    import random

    from pipeline.train import load_train_state, rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = rng_state()
    expect = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save({"step": 7, "rng": saved}, tmp_path / "train_state.pt")
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    state = load_train_state(tmp_path / "train_state.pt")
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expect
    assert state["step"] == 7

    with open(tmp_path / "old.pt", "wb") as f:  # an old-format state: a pickled numpy array
        torch.save({"rng": {"numpy": np.random.get_state()}}, f)
    with pytest.raises(ConfigError, match="old.pt"):
        load_train_state(tmp_path / "old.pt")

