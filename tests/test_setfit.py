"""SetFit and contextual calibration as methods: the registry, the grid's validation and cells, and
SetFit itself with the real offline MiniLM (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.grid import GridError, GridSpec, expand
from pipeline.methods import TEXTS, get_method, known_methods, table_label


@pytest.fixture(scope="module")
def encoder():
    from pipeline.setfit_baseline import load_encoder

    return load_encoder("minilm-l6", device="cpu")


# A task whose sentences are mostly frame: the label (a fruit vs a vehicle) is two words of ~25, so
# frozen sentence embeddings are dominated by which frame a sentence uses; fine-tuning on pairs fixes that.
FRAMES = ["In the quarterly board meeting on Tuesday the finance committee briefly mentioned {} before moving on "
          "to the budget review.",
          "According to the long annual report published by the regional office last spring, {} came up once in "
          "a footnote.",
          "During the three-hour municipal council session, someone in the back row whispered about {} while the "
          "mayor spoke."]
FRUIT = ["a banana", "an apple", "a ripe mango", "some cherries", "a pear", "a bunch of grapes", "a lemon", "a peach",
         "a plum", "a kiwi"]
VEHICLE = ["a truck", "a bicycle", "a motorbike", "a bus", "a tractor", "a scooter", "a van", "a taxi", "a lorry",
           "a tram"]


def frame_task(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    r = np.random.default_rng(seed)
    y = r.permutation(np.arange(n) % 2)
    return [r.choice(FRAMES).format(r.choice(FRUIT if t else VEHICLE)) for t in y], y


def _spec(tmp_path, **over) -> GridSpec:
    base = ["name=t", "datasets=[sms_spam]", "ks=[18]", "seeds=[0]", "test_size=20", "train_size=64",
            "executor=local", f"storage={tmp_path}/grids", f"cache_uri={tmp_path}/emb",
            f"mlflow_uri=sqlite:///{tmp_path}/mlflow.db"]
    return load_config(GridSpec, None, base + [f"{k}={v}" for k, v in over.items()])


def test_registry_describes_the_peer_methods():
    assert {"icl_calibrated", "setfit"} <= set(known_methods(runs_on=TEXTS))
    assert known_methods(tuned=True) == ["setfit"]
    icl, cal, sf = get_method("icl"), get_method("icl_calibrated"), get_method("setfit")
    # calibrated icl: icl's runner (one LM load and one scoring shared), prompted, its own option
    assert cal.runner == icl.runner and cal.protocol == icl.protocol == "prompt" and cal.prompted and icl.prompted
    assert cal.options == {"calibrate": True} and icl.options == {}
    assert cal.accepts("causal", "text") and not cal.accepts("encoder", "text") and cal.multiclass
    # setfit: text encoders only, tuned, float32 whatever the grid's dtype, no prompt
    assert sf.accepts("encoder", "text") and sf.accepts(None, "text")  # an HF id may be an encoder
    assert not sf.accepts("causal", "text") and not sf.accepts("encoder", "audio") and not sf.accepts("vision", "image")
    assert sf.tuned and sf.dtype == "float32" and not sf.prompted and not sf.needs_reasoner
    assert callable(sf.load_runner()) and callable(cal.load_runner())
    assert table_label("setfit") == "setfit (tuned)" and table_label("icl_calibrated") == "icl_calibrated"
    assert table_label("lr_probe/vanilla") == "lr_probe/vanilla"


def test_a_method_on_the_wrong_backbone_kinds_gets_no_cells_and_a_warning(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="pipeline.grid.spec"):
        cells = expand(_spec(tmp_path, methods="[setfit,icl_calibrated]", backbones="[smollm2-135m]"))
    assert {c.method for c in cells} == {"icl_calibrated"}
    assert "method 'setfit' runs on encoder backbones with text inputs" in caplog.text, caplog.text
    assert "sms_spam (text) x smollm2-135m (causal)" in caplog.text and "'icl_calibrated' runs on" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline.grid.spec"):
        cells = expand(_spec(tmp_path, methods="[lr_probe,icl_calibrated]", backbones="[minilm-l6]"))
    assert {c.method for c in cells} == {"lr_probe"}
    assert "method 'icl_calibrated' runs on causal backbones with text inputs" in caplog.text
    # with a backbone of each kind, each method gets the backbones it runs on
    cells = expand(_spec(tmp_path, methods="[setfit,icl,icl_calibrated]", backbones="[smollm2-135m,minilm-l6]"))
    assert {(c.method, c.backbone) for c in cells} == {("setfit", "minilm-l6"), ("icl", "smollm2-135m"),
                                                     ("icl_calibrated", "smollm2-135m")}


def test_peer_cells_leave_the_icl_cells_as_they_were(tmp_path):
    over = dict(backbones="[smollm2-135m,minilm-l6]", ks="[18,32]", seeds="[0,1]", icl_max_chars=200,
                dtype="bfloat16")
    alone = {c.cell_id for c in expand(_spec(tmp_path, methods="[icl,lr_probe]", **over))}
    both = expand(_spec(tmp_path, methods="[icl,icl_calibrated,setfit,lr_probe]", **over))
    assert alone == {c.cell_id for c in both if c.method in ("icl", "lr_probe")}
    cal = [c for c in both if c.method == "icl_calibrated"]
    assert len(cal) == 4 and {c.protocol for c in cal} == {"prompt"} and {c.prompt_max_chars for c in cal} == {200}
    sf = [c for c in both if c.method == "setfit"]
    # setfit builds no prompt (icl_max_chars is not its) and trains in float32 (the grid's bf16 is not its)
    assert len(sf) == 4 and {(c.protocol, c.prompt_max_chars, c.dtype) for c in sf} == {("finetune", None, "float32")}
    assert {c.backbone_dtype for c in sf} == {"float32"}


@pytest.mark.slow  # 8 fine-tuning steps: 13 s on a busy box, 100 s on a saturated one
def test_setfit_beats_its_untuned_encoder_with_the_same_head(encoder):
    from pipeline.setfit_baseline import SetFitConfig, fit_predict

    X, y = frame_task(16, seed=1)
    Q, yq = frame_task(60, seed=2)
    cfg = SetFitConfig(num_iterations=4)  # 128 pairs, 8 steps: SetFit's recipe, shortened for the test
    before = [p.detach().clone() for p in encoder.parameters()][:3]
    frozen = fit_predict(encoder, X, y, Q, seed=0, tune=False, config=cfg)
    tuned = fit_predict(encoder, X, y, Q, seed=0, config=cfg)
    acc_frozen, acc_tuned = ((frozen >= 0.5) == yq).mean(), ((tuned >= 0.5) == yq).mean()
    print(f"frame task k=16: LR head on frozen MiniLM {acc_frozen:.2f}, SetFit {acc_tuned:.2f}")
    assert acc_frozen <= 0.9  # the frames dominate the frozen embeddings (0.83 here)
    assert acc_tuned >= 0.95 and acc_tuned >= acc_frozen + 0.1  # (1.00 here)
    assert tuned.shape == (60,) and np.all((tuned >= 0) & (tuned <= 1))
    # the shared encoder is untouched: each episode fine-tunes a copy
    assert all(np.array_equal(a.numpy(), b.detach().numpy()) for a, b in zip(before, encoder.parameters()))


@pytest.mark.slow  # four short fine-tunings
def test_setfit_is_deterministic_per_seed_and_takes_several_classes(encoder, capfd):
    from pipeline.setfit_baseline import SetFitConfig, SetFitError, fit_predict

    X, y = frame_task(8, seed=3)
    Q, _ = frame_task(12, seed=4)
    cfg = SetFitConfig(num_iterations=3)  # 48 pairs, 3 steps (the first is warm-up at learning rate 0)
    capfd.readouterr()
    a = fit_predict(encoder, X, y, Q, seed=0, config=cfg)
    out, err = capfd.readouterr()
    # a fine-tune prints nothing (in a grid, Ray forwards a worker's prints to the driver's console):
    # no transformers log dicts ({'train_runtime': ...}), no pin_memory warning, no progress bars
    assert "train_runtime" not in out + err and "embedding_loss" not in out + err, out + err
    assert "pin_memory" not in err and "it/s" not in err, err
    b = fit_predict(encoder, X, y, Q, seed=0, config=cfg)
    c = fit_predict(encoder, X, y, Q, seed=1, config=cfg)
    np.testing.assert_array_equal(a, b)
    # the seed drives the training (batch order, dropout); the pairs come from SetFit's own fixed sampler
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, fit_predict(encoder, X, y, Q, seed=0, tune=False, config=cfg))  # it trained
    y3 = np.arange(9) % 3
    p3 = fit_predict(encoder, X + [X[0]], y3, Q, seed=0, n_classes=3, config=SetFitConfig(num_iterations=1))
    assert p3.shape == (12, 3) and np.allclose(p3.sum(axis=1), 1.0)
    with pytest.raises(SetFitError, match="one-class context"):
        fit_predict(encoder, X[:3], [1, 1, 1], Q, seed=0, config=cfg)


@pytest.mark.slow  # a SetFit fine-tuning with SetFit's own recipe (20 iterations) through the grid on Ray
def test_setfit_grid_on_ray_records_rows_and_a_marked_compare_table(tmp_path, ray_local, mlflow_sqlite):
    # one seed: per-seed determinism and several seeds' contexts are test_setfit_is_deterministic_per_seed_*'s;
    # k=8: SetFit's recipe on 320 pairs (20 steps) instead of k=18's 720, the same path through Ray at ~2/3 the time
    from pipeline.compare import markdown_table, summarize
    from pipeline.grid import read_results, run_grid

    mlflow_sqlite(tmp_path / "mlflow.db")
    spec = _spec(tmp_path, methods="[setfit,lr_full]", backbones="[minilm-l6]", seeds="[0]", ks="[8]", executor="ray")
    s = run_grid(spec)
    assert s["cells_run"] == 2 and s["cells_failed"] == 0 and s["mlflow_unlogged"] == 0
    df = read_results(spec)
    sf = df[df["method"] == "setfit"]
    assert len(sf) == 1 and (sf["runtime_s"] > 0).all() and (sf["accuracy"] > 0.6).all()
    lr = df[df["method"] == "lr_full"].set_index("seed")
    for _, row in sf.iterrows():  # the same test set as the other methods, in the same order
        assert list(row["test_ids"]) == list(lr.loc[row["seed"], "test_ids"])
    table = markdown_table(summarize(df))
    assert "| setfit (tuned) |" in table and "| lr_full |" in table
    assert run_grid(spec)["cells_run"] == 0  # idempotent
