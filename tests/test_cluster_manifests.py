"""Cluster and scheduling manifests (cluster/) and grid configs (configs/grids/) are well formed.

Static checks only (no cluster, no hub): every YAML parses, each manifest kind carries
the fields its controller needs, secrets come from the cluster (never from a file in the
repo), and every `python -m jobs.X` a manifest runs names an existing jobs/X.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.grid import GridSpec

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml")) + sorted(CLUSTER.glob("*.yml"))
JOB_REF = re.compile(r"python3?\s+-m\s+jobs\.([A-Za-z_][A-Za-z0-9_]*)")


def _load(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _docs(kind: str) -> list[tuple[Path, dict]]:
    out = []
    for p in YAMLS:
        for d in _load(p):
            if isinstance(d, dict) and d.get("kind") == kind:
                out.append((p, d))
    return out


def _containers(pod_template: dict) -> list[dict]:
    return (pod_template.get("spec") or {}).get("containers") or []


def _cron_fields_ok(schedule: str) -> bool:
    return len(schedule.split()) == 5 or schedule.startswith("@")


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    head = spec.get("headGroupSpec")
    assert head and _containers(head.get("template", {})), f"{where}: headGroupSpec with a container"
    groups = spec.get("workerGroupSpecs")
    assert groups, f"{where}: workerGroupSpecs"
    gpu_groups = []
    for g in groups:
        assert g.get("groupName"), f"{where}: a worker group without groupName"
        cs = _containers(g.get("template", {}))
        assert cs, f"{where}: worker group {g.get('groupName')} has no container"
        if any("nvidia.com/gpu" in ((c.get("resources") or {}).get("limits") or {}) for c in cs):
            gpu_groups.append(g["groupName"])
    assert gpu_groups, f"{where}: no worker group has an nvidia.com/gpu limit"
    # the tracking URI (it may hold credentials) comes from a Secret, never inline
    envs = [e for c in _containers(head["template"]) for e in c.get("env") or []]
    for g in groups:
        envs += [e for c in _containers(g.get("template", {})) for e in c.get("env") or []]
    ml = [e for e in envs if e.get("name") == "MLFLOW_TRACKING_URI"]
    assert ml, f"{where}: MLFLOW_TRACKING_URI is not set on any container"
    for e in ml:
        assert "value" not in e and "secretKeyRef" in (e.get("valueFrom") or {}), \
            f"{where}: MLFLOW_TRACKING_URI must come from valueFrom.secretKeyRef"


def test_cluster_dir_has_manifests():
    assert YAMLS, "no YAML manifests under cluster/"
    kinds = {d.get("kind") for p in YAMLS for d in _load(p) if isinstance(d, dict)}
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob"} <= kinds, kinds


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_yaml_parses(path):
    docs = _load(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path.name}: expected mapping document(s)"


def test_raycluster():
    docs = _docs("RayCluster")
    assert docs
    for p, d in docs:
        assert d["apiVersion"] == "ray.io/v1", p.name
        assert d["metadata"]["name"]
        _check_ray_cluster_spec(d["spec"], p.name)


def test_rayjob():
    docs = _docs("RayJob")
    assert docs
    for p, d in docs:
        assert d["apiVersion"] == "ray.io/v1", p.name
        s = d["spec"]
        assert JOB_REF.search(s["entrypoint"]), f"{p.name}: entrypoint does not run a jobs.* module"
        assert s.get("shutdownAfterJobFinishes") is True, p.name
        assert int(s["activeDeadlineSeconds"]) > 0, p.name
        if "rayClusterSpec" in s:
            _check_ray_cluster_spec(s["rayClusterSpec"], p.name)
        if "runtimeEnvYAML" in s:
            assert isinstance(yaml.safe_load(s["runtimeEnvYAML"]), dict), f"{p.name}: runtimeEnvYAML"


def test_raycronjob():
    docs = _docs("RayCronJob")
    assert docs
    for p, d in docs:
        assert d["apiVersion"] == "ray.io/v1", p.name
        s = d["spec"]
        assert len(s["schedule"].split()) == 5, f"{p.name}: schedule {s['schedule']!r}"
        jt = s["jobTemplate"]
        assert JOB_REF.search(jt["entrypoint"]), p.name
        assert jt.get("shutdownAfterJobFinishes") is True, p.name
        assert int(jt["activeDeadlineSeconds"]) > 0, p.name
        if "rayClusterSpec" in jt:
            _check_ray_cluster_spec(jt["rayClusterSpec"], p.name)
        if "runtimeEnvYAML" in jt:
            assert isinstance(yaml.safe_load(jt["runtimeEnvYAML"]), dict), f"{p.name}: runtimeEnvYAML"


def test_kubernetes_cronjob_submits_with_an_idempotent_submission_id():
    docs = _docs("CronJob")
    assert docs
    for p, d in docs:
        assert d["apiVersion"] == "batch/v1", p.name
        s = d["spec"]
        assert len(s["schedule"].split()) == 5, p.name
        pod = s["jobTemplate"]["spec"]["template"]
        text = " ".join(" ".join(c.get("command") or []) + " " + " ".join(c.get("args") or [])
                        for c in _containers(pod))
        assert "ray job submit" in text, p.name
        assert "--submission-id" in text, f"{p.name}: a re-trigger must reuse the submission id"
        assert JOB_REF.search(text), p.name


def test_crontab_line():
    path = CLUSTER / "crontab.txt"
    assert path.is_file()
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines, "crontab.txt has no cron line"
    for ln in lines:
        fields = ln.split()
        assert len(fields) > 5, ln
        sched = fields[:5]
        for f in sched:
            assert re.fullmatch(r"[0-9*/,\-]+", f), f"cron field {f!r} in {ln!r}"
        cmd = " ".join(fields[5:])
        assert "ray job submit" in cmd and "--submission-id" in cmd, ln
        assert JOB_REF.search(cmd), ln


def test_cluster_launcher():
    path = CLUSTER / "cluster-launcher.yaml"
    d = _load(path)[0]
    assert d["cluster_name"]
    assert d["provider"]["type"]
    nodes = d["available_node_types"]
    assert d["head_node_type"] in nodes
    for name, node in nodes.items():
        assert "node_config" in node and "resources" in node, name


def test_runtime_env_has_no_secrets():
    path = CLUSTER / "runtime_env.yaml"
    d = _load(path)[0]
    assert isinstance(d["pip"], list) and d["pip"] and all(isinstance(x, str) for x in d["pip"])
    assert isinstance(d["env_vars"], dict)
    assert all(isinstance(v, str) for v in d["env_vars"].values()), "env_vars values must be strings"
    secretish = re.compile(r"MLFLOW_TRACKING_(URI|PASSWORD|TOKEN|USERNAME)|SECRET|(^|_)TOKEN($|_)|PASSWORD|API_KEY|ACCESS_KEY",
                           re.IGNORECASE)
    for k, v in d["env_vars"].items():
        assert not secretish.search(k), f"runtime_env.yaml sets {k}: secrets come from the cluster"
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", v), f"{k} holds credentials in a URI"
    assert "working_dir" not in d or not str(d["working_dir"]).startswith("/"), "no machine-local working_dir"


def _manifest_texts() -> list[tuple[str, str]]:
    files = YAMLS + [CLUSTER / "crontab.txt"]
    return [(p.name, p.read_text()) for p in files if p.is_file()]


def test_every_referenced_job_module_exists():
    refs = []
    for name, text in _manifest_texts():
        for m in JOB_REF.finditer(text):
            refs.append((name, m.group(1)))
    assert refs
    missing = [(n, j) for n, j in refs if not (ROOT / "jobs" / f"{j}.py").is_file()]
    assert not missing, f"manifests run jobs that do not exist: {missing}"


def test_every_referenced_config_exists():
    missing = []
    for name, text in _manifest_texts():
        for m in re.finditer(r"(configs/[A-Za-z0-9_./-]+\.ya?ml)", text):
            if not (ROOT / m.group(1)).is_file():
                missing.append((name, m.group(1)))
    assert not missing, f"manifests name configs that do not exist: {missing}"


GRID_CONFIGS = sorted((ROOT / "configs" / "grids").glob("*.yaml"))


@pytest.mark.parametrize("path", GRID_CONFIGS, ids=[p.name for p in GRID_CONFIGS])
def test_grid_configs_load(path):
    spec = load_config(GridSpec, path)  # typed load: unknown keys / wrong types raise ConfigError
    spec.validate()
    assert spec.name and spec.datasets and spec.backbones


def test_paper_grid_shape():
    """configs/grids/paper.yaml: the paper's grid (not expanded here: it needs the hub)."""
    from pipeline.datasets import _SPEC_FIELDS, load_dataset_spec

    path = ROOT / "configs" / "grids" / "paper.yaml"
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and ("jobs.grid" in first or "tart grid" in first), first
    spec = load_config(GridSpec, path)
    assert len(spec.datasets) >= 12
    for d in spec.datasets:
        assert isinstance(d, dict) and d["name"], d
        unknown = set(d.get("options") or {}) - _SPEC_FIELDS
        assert not unknown, f"{d['name']}: unknown dataset options {unknown}"
        if not d["name"].startswith("/"):  # HF ids: the spec checks need no hub (files live on the cluster)
            ds = load_dataset_spec(d["name"], **d["options"], test_size=spec.test_size, train_size=spec.train_size)
            assert ds.source == "hf", d["name"]
    assert set(spec.methods) == {"tart", "icl", "lr_probe", "lr_full"}
    assert spec.ks == [18, 32, 48, 64, 128, 256] and spec.seeds == [0, 1, 2, 3, 4]
    assert spec.gpus_per_actor == 1 and spec.gpus_per_icl_task == 1 and spec.test_size == 500 and spec.train_size == 512
    assert all("/" in b for b in spec.backbones)  # HF ids
