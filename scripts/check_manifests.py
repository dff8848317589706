#!/usr/bin/env python3
"""Strict offline check of Kubernetes manifests against the KubeRay CRD schemas, as
`kubectl apply --validate=strict` and the KubeRay operator would judge them.

- RayCluster / RayJob / RayCronJob: validated with jsonschema against the CRD's
  `spec.versions[].schema.openAPIV3Schema` of the manifest's apiVersion, unknown fields rejected
  (additionalProperties false on every object schema with properties and without
  x-kubernetes-preserve-unknown-fields). That covers the embedded pod templates: the CRDs carry
  Kubernetes' whole PodTemplateSpec schema. Fields whose schema has CEL rules
  (x-kubernetes-validations) cannot be evaluated here and are reported when used.
- batch/v1 CronJob: its CronJobSpec/JobSpec fields against a list of the real API's fields, and
  its pod template against the same PodTemplateSpec schema (taken from the RayCluster CRD).
- metadata (ObjectMeta, not in the CRDs): name rules, including KubeRay's length limits.
- What the KubeRay operator rejects after the API server accepted it (a port of the rules in
  ray-operator/controllers/ray/utils/validation.go that these manifests can meet): one of
  rayClusterSpec / clusterSelector, clusterSelector naming ray.io/cluster, TTL only with
  shutdownAfterJobFinishes, positive deadlines, runtimeEnvYAML a YAML mapping, no resources in
  both rayStartParams and the group, a standard 5-field cron schedule, a known timeZone.
  With Ray importable, each runtimeEnvYAML is also parsed by ray.runtime_env.RuntimeEnv.

  python scripts/check_manifests.py cluster/*.yaml
  git show HEAD:cluster/raycronjob-nightly-grid.yaml | python scripts/check_manifests.py -
CRDs: --crds DIR, else $KUBERAY_CRDS, else ../shared/data/kuberay-crds-v1.7 next to the repository, else the
gzipped copies in tests/data/kuberay-crds-v1.7 (so a clean clone validates without outside data).
Exit 0: no problem; 1: problems (one line each); 2: no CRD schemas found.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD_SUBDIR = Path("shared") / "data" / "kuberay-crds-v1.7"
VENDORED = ROOT / "tests" / "data" / "kuberay-crds-v1.7"  # the same CRDs, gzipped: a clean clone has them
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
# KubeRay's name limits (utils/constant.go): a RayJob's cluster is <name>-<5 chars>, a RayCronJob's
# RayJobs are <name>-<5 chars>
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 47 - 6}
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
OBJECT_META = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}


class NoSchemas(Exception):
    pass


def crd_dir(explicit: str | None = None) -> Path | None:
    for cand in (explicit, os.environ.get("KUBERAY_CRDS"), ROOT.parent / CRD_SUBDIR, ROOT / CRD_SUBDIR, VENDORED):
        if cand and any((Path(cand) / f"ray.io_rayclusters.yaml{z}").is_file() for z in ("", ".gz")):
            return Path(cand)
    return None


def _yaml_load(text: str):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 3 MB: the C loader is 10x faster
    return yaml.load(text, Loader=loader)


def strict(schema):
    """A copy of an OpenAPI v3 schema that rejects unknown fields; defaulted fields are not required
    (the API server fills them before validating)."""
    if not isinstance(schema, dict):
        return schema
    s = {k: v for k, v in schema.items() if k != "description"}
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
        req = [r for r in s.get("required", []) if "default" not in s["properties"].get(r, {})]
        if req:
            s["required"] = req
        else:
            s.pop("required", None)
        if not s.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
    for k in ("items", "additionalProperties", "not"):
        if isinstance(s.get(k), dict):
            s[k] = strict(s[k])
    for k in ("anyOf", "allOf", "oneOf"):
        if k in s:
            s[k] = [strict(x) for x in s[k]]
    return s


def _cel(validator, rules, instance, schema):
    """x-kubernetes-validations: CEL that jsonschema cannot run. Transition rules (oldSelf) only
    matter on update; any other rule on a field that is set is reported, not silently passed."""
    from jsonschema import ValidationError

    live = [r["rule"] for r in rules if "oldSelf" not in r.get("rule", "")]
    if live:
        yield ValidationError(f"sets a field with CEL rules this offline check cannot evaluate: {live}")


def _validator_class():
    from jsonschema import Draft4Validator, validators

    return validators.extend(Draft4Validator, {"x-kubernetes-validations": _cel})


# batch/v1 field names (Kubernetes 1.33 API reference); nested objects not listed are checked as objects only
_INT0 = {"type": "integer", "minimum": 0}
_OBJ = {"type": "object"}


def _cronjob_schema(pod_template: dict) -> dict:
    job_spec = {"type": "object", "additionalProperties": False, "required": ["template"], "properties": {
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1}, "backoffLimit": _INT0,
        "backoffLimitPerIndex": _INT0, "completionMode": {"enum": ["NonIndexed", "Indexed"]},
        "completions": _INT0, "managedBy": {"type": "string"}, "manualSelector": {"type": "boolean"},
        "maxFailedIndexes": _INT0, "parallelism": _INT0, "podFailurePolicy": _OBJ,
        "podReplacementPolicy": {"enum": ["TerminatingOrFailed", "Failed"]}, "selector": _OBJ,
        "successPolicy": _OBJ, "suspend": {"type": "boolean"}, "template": pod_template,
        "ttlSecondsAfterFinished": _INT0}}
    spec = {"type": "object", "additionalProperties": False, "required": ["schedule", "jobTemplate"], "properties": {
        "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]}, "failedJobsHistoryLimit": _INT0,
        "jobTemplate": {"type": "object", "additionalProperties": False, "required": ["spec"],
                        "properties": {"metadata": pod_template["properties"]["metadata"], "spec": job_spec}},
        "schedule": {"type": "string"}, "startingDeadlineSeconds": _INT0, "successfulJobsHistoryLimit": _INT0,
        "suspend": {"type": "boolean"}, "timeZone": {"type": "string", "minLength": 1}}}
    return {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"enum": ["batch/v1"]}, "kind": {"enum": ["CronJob"]}, "metadata": _OBJ,
                           "spec": spec}}


class Checker:
    def __init__(self, crds: str | Path | None = None):
        d = crd_dir(str(crds) if crds else None)
        if d is None:
            raise NoSchemas(f"no KubeRay CRDs found (--crds DIR, $KUBERAY_CRDS, or ../{CRD_SUBDIR})")
        self.crd_dir = d
        self.schemas: dict[tuple[str, str], dict] = {}
        for f in sorted([*d.glob("*.yaml"), *d.glob("*.yaml.gz")]):
            crd = _yaml_load(gzip.decompress(f.read_bytes()).decode() if f.suffix == ".gz" else f.read_text())
            if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                if v.get("served", True):
                    self.schemas[(f"{group}/{v['name']}", kind)] = strict(v["schema"]["openAPIV3Schema"])
        if not self.schemas:
            raise NoSchemas(f"{d}: no CustomResourceDefinition in it")
        pod = self.schemas[("ray.io/v1", "RayCluster")]["properties"]["spec"]["properties"]["headGroupSpec"][
            "properties"]["template"]
        self.schemas[("batch/v1", "CronJob")] = _cronjob_schema(copy.deepcopy(pod))
        self._validators: dict = {}

    def _validator(self, key):
        if key not in self._validators:
            self._validators[key] = _validator_class()(self.schemas[key])
        return self._validators[key]

    # ------------------------------------------------------------------ one document
    def check_doc(self, doc, where: str = "") -> list[str]:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            return []  # not a Kubernetes object (a runtime env, the cluster launcher's config)
        kind, api = doc["kind"], doc["apiVersion"]
        name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
        at = f"{where}: {kind}/{name}" if where else f"{kind}/{name}"
        key = (api, kind)
        if key not in self.schemas:
            return [f"{at}: no schema for apiVersion {api} kind {kind} (known: {sorted(self.schemas)})"]
        out = []
        for e in sorted(self._validator(key).iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
            path = ".".join(str(p) for p in e.absolute_path) or "(top)"
            out.append(f"{at}: {path}: {e.message}")
        out += [f"{at}: {p}" for p in self._metadata(doc.get("metadata"), kind)]
        spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
        if kind == "RayCluster":
            out += [f"{at}: spec: {p}" for p in cluster_spec_rules(spec)]
        elif kind == "RayJob":
            out += [f"{at}: spec: {p}" for p in job_spec_rules(spec)]
        elif kind == "RayCronJob":
            out += [f"{at}: spec: {p}" for p in cron_rules(spec, "RayCronJob")]
            jt = spec.get("jobTemplate") if isinstance(spec.get("jobTemplate"), dict) else {}
            out += [f"{at}: spec.jobTemplate: {p}" for p in job_spec_rules(jt)]
        elif kind == "CronJob":
            out += [f"{at}: spec: {p}" for p in cron_rules(spec, "CronJob")]
            pod = (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            if pod.get("restartPolicy") not in ("OnFailure", "Never"):
                out.append(f"{at}: spec.jobTemplate.spec.template.spec.restartPolicy: a Job's pods need "
                           f"OnFailure or Never, not {pod.get('restartPolicy')!r}")
        return out

    @staticmethod
    def _metadata(meta, kind: str) -> list[str]:
        if not isinstance(meta, dict):
            return ["metadata: missing"]
        out = [f"metadata: unknown field {k!r}" for k in meta if k not in OBJECT_META]
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            out.append("metadata.name: missing (kubectl apply needs a name)")
        else:
            limit = MAX_NAME.get(kind, 253)
            pattern = DNS1035 if kind in KUBERAY_KINDS else DNS1123_SUBDOMAIN
            if not pattern.fullmatch(name):
                out.append(f"metadata.name {name!r}: not a DNS-1035 label" if kind in KUBERAY_KINDS
                           else f"metadata.name {name!r}: not a DNS-1123 subdomain")
            if kind == "CronJob":
                limit = 52  # its Jobs are <name>-<11 digits>
            if len(name) > limit:
                out.append(f"metadata.name {name!r}: {len(name)} characters, {kind} allows {limit}")
        for field in ("labels", "annotations"):
            vals = meta.get(field) or {}
            if not isinstance(vals, dict):
                out.append(f"metadata.{field}: not a mapping")
                continue
            for k, v in vals.items():
                if not isinstance(v, str):
                    out.append(f"metadata.{field}.{k}: value {v!r} is not a string")
                elif field == "labels" and (len(v) > 63 or not LABEL_VALUE.fullmatch(v)):
                    out.append(f"metadata.labels.{k}: {v!r} is not a valid label value")
        return out

    # ------------------------------------------------------------------ files
    def check_text(self, text: str, where: str) -> list[str]:
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            return [f"{where}: not YAML: {e}"]
        out = []
        for i, doc in enumerate(d for d in docs if d is not None):
            out += self.check_doc(doc, where if len(docs) == 1 else f"{where}[{i}]")
        return out

    def check_file(self, path: Path) -> list[str]:
        return self.check_text(Path(path).read_text(), str(path))


# ---------------------------------------------------------------------- the operator's own rules
_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def cluster_spec_rules(spec: dict) -> list[str]:
    out = []
    head = spec.get("headGroupSpec") or {}
    if not (((head.get("template") or {}).get("spec") or {}).get("containers")):
        out.append("headGroupSpec should have at least one container")
    groups = [("Head", head)] + [(g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs") or []]
    for name, g in groups:
        if name != "Head" and not (((g.get("template") or {}).get("spec") or {}).get("containers")):
            out.append(f"worker group {name}: workerGroupSpec should have at least one container")
        params = g.get("rayStartParams") or {}
        if any(params.get(p) for p in _RESOURCE_PARAMS) and g.get("resources"):
            out.append(f"group {name}: resources set in both rayStartParams and resources")
        if "labels" in params:
            out.append(f"group {name}: rayStartParams['labels'] is not supported (use the group's labels)")
        if g.get("suspend") and spec.get("enableInTreeAutoscaling"):
            out.append(f"worker group {name} cannot be suspended with the autoscaler enabled")
    return out


def job_spec_rules(spec: dict) -> list[str]:
    out = []
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    selector = spec.get("clusterSelector") or {}
    if spec.get("suspend") and not shutdown:
        out.append("a RayJob with shutdownAfterJobFinishes false cannot be suspended")
    ttl = spec.get("ttlSecondsAfterFinished", 0) or 0
    if ttl < 0:
        out.append("ttlSecondsAfterFinished must not be negative")
    if not shutdown and ttl > 0:
        out.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if "deletionStrategy" in spec:
        out.append("deletionStrategy needs the operator's RayJobDeletionPolicy feature gate")
    if selector:
        if not selector.get("ray.io/cluster"):
            out.append("clusterSelector must name the cluster under the key ray.io/cluster")
        if spec.get("suspend"):
            out.append("clusterSelector mode does not support suspend")
        if spec.get("submissionMode") == "SidecarMode":
            out.append("clusterSelector is not supported in SidecarMode")
        if spec.get("rayClusterSpec"):
            out.append("both clusterSelector and rayClusterSpec: the operator uses the selected cluster and ignores "
                       "rayClusterSpec")
    elif not spec.get("rayClusterSpec"):
        out.append("one of rayClusterSpec or clusterSelector must be set")
    if spec.get("submissionMode") == "InteractiveMode" and (spec.get("backoffLimit") or 0) > 0:
        out.append("backoffLimit is incompatible with InteractiveMode")
    for k in ("activeDeadlineSeconds",):
        if k in spec and not (isinstance(spec[k], int) and spec[k] > 0):
            out.append(f"{k} must be a positive integer")
    if (spec.get("backoffLimit") or 0) < 0:
        out.append("backoffLimit must not be negative")
    if isinstance(spec.get("rayClusterSpec"), dict):
        out += [f"rayClusterSpec: {p}" for p in cluster_spec_rules(spec["rayClusterSpec"])]
    if "runtimeEnvYAML" in spec:
        out += [f"runtimeEnvYAML: {p}" for p in runtime_env_problems(spec["runtimeEnvYAML"])]
    return out


def runtime_env_problems(text) -> list[str]:
    if not isinstance(text, str):
        return ["not a string"]
    try:
        env = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [f"not YAML: {e}"]
    if env is None:
        return []
    if not isinstance(env, dict):
        return [f"not a mapping: {type(env).__name__}"]
    try:
        from ray.runtime_env import RuntimeEnv
    except ImportError:
        return []
    try:
        RuntimeEnv(**env)
    except Exception as e:  # Ray's own parser: unknown fields, bad pip/env_vars/working_dir shapes
        return [f"Ray rejects it: {type(e).__name__}: {e}"]
    return []


_CRON_FIELDS = [("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
                ("month", 1, 12, {m: i + 1 for i, m in enumerate(
                    "jan feb mar apr may jun jul aug sep oct nov dec".split())}),
                ("day of week", 0, 6, {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())})]
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def cron_problems(schedule) -> list[str]:
    """A standard 5-field cron expression (what robfig/cron ParseStandard and Kubernetes accept)."""
    if not isinstance(schedule, str) or not schedule.strip():
        return ["schedule: missing"]
    s = schedule.strip()
    if s.startswith("TZ=") or s.startswith("CRON_TZ="):
        return [f"schedule {s!r}: give the time zone in timeZone, not in the schedule"]
    if s in _DESCRIPTORS or s.startswith("@every "):
        return []
    fields = s.split()
    if len(fields) != 5:
        return [f"schedule {s!r}: {len(fields)} fields, a standard cron expression has 5"]
    out = []
    for text, (name, lo, hi, names) in zip(fields, _CRON_FIELDS):
        for part in text.split(","):
            rng, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                out.append(f"schedule {s!r}: {name} step {step!r}")
            if rng in ("*", "?"):
                continue
            bounds = rng.split("-")
            if len(bounds) > 2:
                out.append(f"schedule {s!r}: {name} {part!r}")
                continue
            vals = []
            for b in bounds:
                v = names.get(b.lower()) if b.lower() in names else (int(b) if b.isdigit() else None)
                if v is None or not lo <= v <= hi:
                    out.append(f"schedule {s!r}: {name} {b!r} is not in {lo}-{hi}")
                vals.append(v)
            if len(vals) == 2 and None not in vals and vals[0] > vals[1]:
                out.append(f"schedule {s!r}: {name} range {part!r} runs backwards")
    return out


def cron_rules(spec: dict, kind: str) -> list[str]:
    out = cron_problems(spec.get("schedule"))
    tz = spec.get("timeZone")
    if tz is not None:
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(tz)
        except Exception:
            out.append(f"timeZone {tz!r} is not a time zone of the IANA database")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="manifest files, or - for stdin")
    ap.add_argument("--crds", help="folder with the KubeRay CRD YAML files")
    a = ap.parse_args(argv)
    try:
        checker = Checker(a.crds)
    except NoSchemas as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = []
    for f in a.files:
        problems += checker.check_text(sys.stdin.read(), "<stdin>") if f == "-" else checker.check_file(Path(f))
    for p in problems:
        print(p)
    print(f"{len(a.files)} file(s), {len(problems)} problem(s) (CRDs: {checker.crd_dir})", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
