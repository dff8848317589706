"""The model registry in the loop: the reasoner goes in as an MLflow Model, grids take `models:/NAME@ALIAS`.

Real parts only: a private sqlite MLflow store with its artifacts in a temp folder, the
session's local Ray, a real Ray Train fit (the roll-out). The registry's local copies go to a
private cache ($TART_REASONER_CACHE), set after the shared Ray may have started: the Ray
workers that run tart cells do not see it, so the roll-out also proves that a cell finds its
registry reasoner through the folder the driver resolved, not through its own environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline import registry, tracking
from pipeline.config import load_config
from pipeline.grid import GridError, GridSpec, expand, expand_grid, read_results, run_grid
from pipeline.grid.spec import reasoner_digest

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def env(tmp_path_factory, mlflow_template):
    import shutil

    root = tmp_path_factory.mktemp("registry")
    shutil.copyfile(mlflow_template, root / "mlflow.db")  # what the mlflow_sqlite fixture does, module-scoped
    keys = ("TART_MLFLOW_ARTIFACTS", "TART_REASONER_CACHE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ["TART_MLFLOW_ARTIFACTS"] = str(root / "mlartifacts")
    os.environ["TART_REASONER_CACHE"] = str(root / "reasoners")
    yield {"root": root, "uri": f"sqlite:///{root}/mlflow.db"}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _client(env):
    from mlflow.tracking import MlflowClient

    return MlflowClient(env["uri"], registry_uri=env["uri"])


@pytest.fixture(scope="module")
def shipped(env):
    """The shipped default reasoner registered as `shipped`, alias champion (version 1)."""
    from pipeline.reasoner import default_checkpoint_dir

    return registry.register_checkpoint(default_checkpoint_dir(), "shipped", "champion", env["uri"])


def _spec(env, tmp_path, **over) -> GridSpec:
    base = ["name=reg", "datasets=[sms_spam]", "backbones=[minilm-l6]", "methods=[tart,lr_probe]", "ks=[18,32]",
            "seeds=[0]", "test_size=30", "train_size=64", "executor=local", f"storage={tmp_path}/grids",
            f"mlflow_uri={env['uri']}"]
    return load_config(GridSpec, None, base + [f"{k}={v}" for k, v in over.items()])


# ----------------------------------------------------------------------------- the MLflow Model


def test_pyfunc_from_the_registry_predicts_what_the_reasoner_predicts(env, shipped, tmp_path):
    import mlflow

    from pipeline.reasoner import load_reasoner

    mlflow.set_registry_uri(env["uri"])
    model = mlflow.pyfunc.load_model("models:/shipped@champion")
    inputs = model.metadata.get_input_schema()
    assert inputs.input_names() == ["x_context", "y_context", "x_query"]
    assert model.metadata.get_output_schema().input_names() == ["p"]
    rng = np.random.default_rng(7)
    reasoner = load_reasoner()
    for d in (16, 8):  # the trained d, and a smaller one (zero-padded by the reasoner)
        xc = rng.standard_normal((3, 40, d)).astype(np.float32)
        yc = (xc[:, :, 0] > 0).astype(np.float32)
        xq = rng.standard_normal((3, 9, d)).astype(np.float32)
        got = model.predict({"x_context": xc, "y_context": yc, "x_query": xq})
        assert got.shape == (3, 9)
        np.testing.assert_array_equal(got, reasoner.predict_proba(xc, yc, xq))
    assert 0.6 < float(((got >= 0.5) == (xq[:, :, 0] > 0)).mean())  # it really reasons over the context

    # the version: its weights digest (the grid's reasoner digest), the model card, no pickle
    mv = _client(env).get_model_version_by_alias("shipped", "champion")
    assert mv.tags[registry.DIGEST_TAG] == shipped.digest == reasoner_digest("default")
    assert mv.description.startswith("# Model card")
    local = Path(mlflow.artifacts.download_artifacts("models:/shipped/1", dst_path=str(tmp_path / "dl")))
    card = (local / "artifacts" / "reasoner" / "README.md").read_text()
    assert card.startswith("# Model card: the default TART reasoner")
    assert load_reasoner(local / "artifacts" / "reasoner").meta["architecture"] == "tart-reasoner-v1"
    assert not list(local.rglob("*.pkl")), sorted(p.name for p in local.rglob("*"))  # model from code


def test_registering_the_same_weights_again_reuses_the_version(env, shipped):
    from pipeline.reasoner import default_checkpoint_dir

    again = registry.register_checkpoint(default_checkpoint_dir(), "shipped", "candidate", env["uri"])
    assert again.reused and again.version == shipped.version == "1"
    model = _client(env).get_registered_model("shipped")
    assert {a: str(v) for a, v in model.aliases.items()} == {"champion": "1", "candidate": "1"}
    assert len(_client(env).search_model_versions("name = 'shipped'")) == 1


# ----------------------------------------------------------------------------- grids with models:/ reasoners


def test_a_registry_reasoner_has_the_cells_of_its_weights(env, shipped, tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.runtime._CPU_BF16", False)  # ids as on a CPU without native bf16
    folder_cells = expand(_spec(env, tmp_path, reasoners="[default]"))
    grid = expand_grid(_spec(env, tmp_path, reasoners="[models:/shipped@champion]"))
    # the same weights: the same cell ids (the reference is not part of the id, the digest is)
    assert sorted(c.cell_id for c in grid.cells) == sorted(c.cell_id for c in folder_cells)
    tart = [c for c in grid.cells if c.method == "tart"]
    assert len(tart) == 2 and {c.reasoner for c in tart} == {"models:/shipped/1"}  # the pinned version
    assert {c.reasoner_digest for c in tart} == {shipped.digest}
    [(index, res)] = grid.registry
    assert (index, res.name, res.version, res.alias, res.digest) == (0, "shipped", "1", "champion", shipped.digest)
    # the local copy: one cache entry named by the digest, no temp folder left, a marker saying what it is
    cache = registry.cache_dir()
    assert sorted(p.name for p in cache.iterdir()) == [shipped.digest]
    assert Path(res.folder) == cache / shipped.digest and (cache / shipped.digest / registry.CACHE_MARK).is_file()
    # a second expansion finds it there (no download: the folder is the same, untouched)
    mtime = (cache / shipped.digest / registry.CACHE_MARK).stat().st_mtime_ns
    expand(_spec(env, tmp_path, reasoners="[models:/shipped/1]"))
    assert (cache / shipped.digest / registry.CACHE_MARK).stat().st_mtime_ns == mtime
    # two references to one version give its cells once
    both = expand(_spec(env, tmp_path, reasoners="[models:/shipped@champion,models:/shipped/1]"))
    assert len(both) == len(grid.cells)


def test_a_version_registered_as_a_raw_folder_resolves_too(env, shipped, tmp_path):
    """Versions registered before the pyfunc hold the checkpoint folder itself (no MLmodel)."""
    import mlflow

    from pipeline.reasoner import default_checkpoint_dir

    tracking.connect(env["uri"])
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("tart-train", env["uri"])) as run:
        mlflow.log_artifacts(str(default_checkpoint_dir()), artifact_path="reasoner")
    source = f"{run.info.artifact_uri}/reasoner"
    assert tracking.register_version("legacy", source, "champion", run_id=run.info.run_id) == "1"  # no digest tag
    res = registry.resolve("models:/legacy@champion", env["uri"])
    assert (res.version, res.digest) == ("1", shipped.digest)  # hashed after the download: the same cache entry
    assert Path(res.folder) == registry.cache_dir() / shipped.digest


def test_a_node_without_the_copy_fetches_the_pinned_version(env, shipped, tmp_path, monkeypatch):
    """A worker whose node shares neither the driver's folder nor its cache fetches the version the
    driver pinned, through its own $MLFLOW_TRACKING_URI, and checks the digest."""
    monkeypatch.setenv("TART_REASONER_CACHE", str(tmp_path / "other-node"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/tart/mlflow.db")  # a store this node cannot use
    with pytest.raises(registry.RegistryError, match=r"is not on this node .* put \$TART_REASONER_CACHE"):
        registry.local_folder("models:/shipped/1", shipped.digest, hint=str(tmp_path / "driver-only"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["uri"])
    folder = registry.local_folder("models:/shipped/1", shipped.digest, hint=str(tmp_path / "driver-only"))
    assert folder == tmp_path / "other-node" / shipped.digest and registry.weights_digest(folder) == shipped.digest
    with pytest.raises(registry.RegistryError, match="another store than the grid's mlflow_uri"):
        registry.local_folder("models:/shipped/1", "0" * 16)


def test_bad_registry_references_are_reported_with_the_other_problems(env, shipped, tmp_path, capsys):
    from pipeline.grid import main

    bad = dict(reasoners="[models:/shipped@nosuch,models:/nosuch@champion,models:/shipped/7,models:/shipped,default]",
               methods="[tart,lr_probe,nosuch]")
    with pytest.raises(GridError) as e:
        expand(_spec(env, tmp_path, **bad))
    msg = str(e.value)
    for needle in ("reasoner 'models:/shipped@nosuch': registered model 'shipped' has no alias 'nosuch' "
                   "(its aliases: @candidate -> version 1, @champion -> version 1)",
                   "reasoner 'models:/nosuch@champion': no registered model 'nosuch' in the registry at sqlite:///",
                   "reasoner 'models:/shipped/7': registered model 'shipped' has no version 7 (versions: 1)",
                   "reasoner 'models:/shipped': 'models:/shipped' is not a registry reference: expected "
                   "models:/NAME@ALIAS or models:/NAME/VERSION",
                   "method 'nosuch' is unknown", "5 problem(s)"):
        assert needle in msg, msg
    # the same through `tart grid --dry-run`: exit 2, every problem named, nothing written
    args = ["--dry-run", "name=reg", "datasets=[sms_spam]", "backbones=[minilm-l6]", "ks=[18]", "seeds=[0]",
            "test_size=30", "train_size=64", f"storage={tmp_path}/grids", f"mlflow_uri={env['uri']}"]
    assert main(args + [f"{k}={v}" for k, v in bad.items()]) == 2
    err = capsys.readouterr().err
    assert "has no alias 'nosuch'" in err and "has no version 7" in err and "method 'nosuch' is unknown" in err
    assert not (tmp_path / "grids").exists()
    assert main(args + ["reasoners=[models:/shipped@champion]"]) == 0
    out = capsys.readouterr().out
    assert f"reasoner models:/shipped@champion = shipped version 1 (weights {shipped.digest})" in out
    assert "grid reg: 2 valid cells" in out


def test_an_unusable_registry_store_is_a_validation_problem(env, tmp_path):
    spec = _spec(env, tmp_path, reasoners="[models:/tart-reasoner@champion]", mlflow_uri="sqlite:////proc/tart/mlflow.db")
    with pytest.raises(GridError, match=r"reasoner 'models:/tart-reasoner@champion': MLflow sqlite store "
                                        r"sqlite:////proc/tart/mlflow.db: cannot create its directory"):
        expand(spec)


# ----------------------------------------------------------------------------- the runbook's roll-out


TINY = ["size=tiny", "task.points=34", "model.max_points=34", "eval_ks=[8,16]", "eval_episodes=32", "batch_size=8",
        "lr=1e-3", "warmup_steps=2", "curriculum.interval=3", "log_every=1", "eval_every=3", "checkpoint_every=3",
        "cpus_per_worker=0.5", "steps=6"]


@pytest.mark.slow  # a Ray Train fit
def test_roll_a_new_reasoner_to_champion(ray_local, env, sms_minilm_cache, tmp_path, capsys):
    """runbook.md "Roll a new reasoner to @champion": train -> registered -> @champion -> grid on
    models:/tart-reasoner@champion -> a second version becomes champion -> the same grid re-runs only
    its tart cells -> compare shows both reasoners side by side."""
    import mlflow

    from pipeline.compare import main as compare
    from pipeline.reasoner import default_checkpoint_dir
    from pipeline.train import TrainConfig, train

    client = _client(env)
    # 1. train and register (alias candidate), 2. promote
    rep = train(load_config(TrainConfig, None, [*TINY, "name=rollout", f"storage={tmp_path}/train",
                                                f"mlflow_uri={env['uri']}", "register_as=tart-reasoner"]))
    v1, d1 = rep["model_version"], registry.weights_digest(rep["final_dir"])
    assert str(client.get_model_version_by_alias("tart-reasoner", "candidate").version) == v1
    assert client.get_model_version("tart-reasoner", v1).description.startswith("# Model card: TART reasoner `rollout` (step 6)")
    client.set_registered_model_alias("tart-reasoner", "champion", v1)

    # 3. the nightly grid on @champion
    spec = _spec(env, tmp_path, name="rollout", reasoners="[models:/tart-reasoner@champion]", executor="ray",
                 cpus_per_cell=0.5, cache_uri=sms_minilm_cache)
    first = run_grid(spec)
    assert (first["cells_run"], first["cells_failed"], first["cells_skipped"]) == (4, 0, 0), first
    df = read_results(spec)
    tart = df[df["method"] == "tart"]
    assert set(tart["reasoner"]) == {f"models:/tart-reasoner/{v1}"} and set(tart["reasoner_digest"]) == {d1}
    tags = client.get_run(first["parent_run_id"]).data.tags
    assert (tags["tart.reasoner.0.ref"], tags["tart.reasoner.0.version"], tags["tart.reasoner.0.alias"],
            tags["tart.reasoner.0.digest"]) == ("models:/tart-reasoner@champion", v1, "champion", d1)
    cells = Path(spec.storage) / spec.name / "cells"
    probe_files = {p: p.stat().st_mtime_ns for p in cells.glob("*.parquet")
                   if p.stem in set(df[df["method"] == "lr_probe"]["cell_id"])}
    assert len(probe_files) == 2

    # 4. a second version through the same registering function training uses, then promoted
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("tart-train", env["uri"]), run_name="second"):
        second = registry.log_reasoner(default_checkpoint_dir(), register_as="tart-reasoner", alias="candidate")
    v2, d2 = second.version, second.digest
    assert v2 == str(int(v1) + 1) and d2 != d1
    client.set_registered_model_alias("tart-reasoner", "champion", v2)

    # 5. the same grid again: only the tart cells run; the lr_probe cells are done and untouched
    again = run_grid(spec)
    assert (again["cells_run"], again["cells_failed"], again["cells_skipped"]) == (2, 0, 2), again
    assert {p: p.stat().st_mtime_ns for p in probe_files} == probe_files
    df = read_results(spec)
    tart = df[df["method"] == "tart"]
    assert sorted(tart["reasoner"]) == sorted([f"models:/tart-reasoner/{v1}"] * 2 + [f"models:/tart-reasoner/{v2}"] * 2)
    assert tart.groupby("reasoner_digest")["k"].apply(sorted).to_dict() == {d1: [18, 32], d2: [18, 32]}
    assert client.get_run(again["parent_run_id"]).data.tags["tart.reasoner.0.version"] == v2

    # 6. compare (from MLflow, as `tart compare` runs): both reasoners, side by side with the baseline
    capsys.readouterr()
    assert compare([f"mlflow_uri={env['uri']}", "grids=[rollout]", f"out={tmp_path}/compare"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| sms_spam | minilm-l6 |")]
    labels = {(line.split(" | ")[2], line.split(" | ")[3]) for line in table}
    assert labels == {(m, k) for m in (f"tart@tart-reasoner/{v1}", f"tart@tart-reasoner/{v2}", "lr_probe")
                      for k in ("18", "32")}, out
    for v in (v1, v2):
        assert f"Average gain of tart@tart-reasoner/{v} over lr_probe" in out, out
    shipped = next(line for line in table if line.split(" | ")[2:4] == [f"tart@tart-reasoner/{v2}", "32"])
    assert float(shipped.split(" | ")[4].split(" ")[0]) > 0.7  # the shipped reasoner classifies spam
