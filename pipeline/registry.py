"""The model registry in the loop: reasoners go in as MLflow Models, grids take them out by `models:/` URI.

- `log_reasoner(folder, ...)`: inside an active MLflow run, log a reasoner checkpoint folder
  (model.safetensors + config.json) as an MLflow Model: the pyfunc of `pipeline.reasoner_model`
  with its signature, the folder as its `reasoner` artifact and the model card as that folder's
  README.md. With `register_as`, the model becomes a new version of that registered model
  (tagged with its weights digest, the card as its description) and `alias` points at it; a
  version with the same weights is reused, not registered twice. `tart train` calls it;
  `register_checkpoint(folder, name, alias)` does it for any checkpoint folder, in a run of its own.
- `resolve(ref, tracking_uri)`: `models:/NAME@ALIAS` or `models:/NAME/VERSION` -> the version it
  names now (`ResolvedReasoner`: name, version, alias, digest) and a local copy of its checkpoint
  folder. A grid resolves each of its registry reasoners once per launch; its cells then name the
  pinned version (`models:/NAME/VERSION`) and carry the digest, so moving an alias re-runs only
  the cells of the reasoner that changed.
- The local copies: `<cache>/<digest>/` with cache = $TART_REASONER_CACHE, default
  $TART_CACHE/reasoners (~/.cache/tart/reasoners), keyed by the weights digest (sha256 of
  model.safetensors, 16 hex: the digest in every cell id). A version is downloaded to a temp
  folder next to it, checked (a TART checkpoint, the digest its registry tag states) and renamed
  into place, so a killed download leaves nothing that looks finished. On a multi-node cluster
  put the cache on storage every node mounts; a node without the copy fetches the pinned version
  itself through $MLFLOW_TRACKING_URI (`local_folder`).

mlflow is imported inside the functions that use it (~4 s), so `pipeline.grid` stays light.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .backbones import tart_cache_dir
from .tracking import connect, redact, register_version

logger = logging.getLogger(__name__)

SCHEME = "models:/"
DIGEST_TAG = "tart.weights_digest"  # on every registered version: the digest of its weights
MODEL_NAME = "reasoner_model"  # the logged MLflow Model's name in its run
ARTIFACT = "reasoner"  # the checkpoint folder's key among the model's artifacts (= pipeline.reasoner_model.ARTIFACT)
WEIGHTS_FILE = "model.safetensors"  # pipeline.reasoner's file names (that module imports torch)
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
CACHE_MARK = "tart_registry.json"  # written last into a cache entry: what it is a copy of
_URI = re.compile(r"^models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))$")


class RegistryError(ValueError):
    """A `models:/` reference that does not resolve to a TART reasoner; the message says why."""


@dataclass(frozen=True)
class ResolvedReasoner:
    """What one `models:/` reference resolved to, and where its checkpoint folder is on this machine."""

    ref: str  # as written (models:/NAME@ALIAS or models:/NAME/VERSION)
    name: str
    version: str
    alias: Optional[str]
    digest: str
    folder: str

    @property
    def pinned(self) -> str:
        """The version itself (what cells and results rows record): models:/NAME/VERSION."""
        return f"{SCHEME}{self.name}/{self.version}"


@dataclass(frozen=True)
class LoggedReasoner:
    model_uri: str  # models:/<model id> of the logged MLflow Model (models:/NAME/VERSION when reused)
    digest: str
    version: Optional[str] = None  # the registered version (None: not registered)
    reused: bool = False  # the registered model already had a version with these weights


# ----------------------------------------------------------------------------- references and digests


def is_registry_uri(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith(SCHEME)


def parse_uri(ref: str) -> tuple[str, Optional[str], Optional[str]]:
    """`models:/NAME@ALIAS` -> (NAME, ALIAS, None); `models:/NAME/VERSION` -> (NAME, None, VERSION)."""
    m = _URI.match(ref.strip())
    if m is None:
        raise RegistryError(f"{ref!r} is not a registry reference: expected models:/NAME@ALIAS or "
                            "models:/NAME/VERSION (VERSION a number), e.g. models:/tart-reasoner@champion")
    return m["name"], m["alias"], m["version"]


def weights_digest(folder: str | os.PathLike) -> str:
    """sha256 (16 hex) of a checkpoint folder's model.safetensors: the reasoner digest of cell ids."""
    h = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where registry reasoners are copied: $TART_REASONER_CACHE, default $TART_CACHE/reasoners."""
    env = os.environ.get("TART_REASONER_CACHE")
    return Path(env) if env else tart_cache_dir() / "reasoners"


def cached(digest: str) -> Optional[Path]:
    """The complete cache entry of `digest` (its weights re-hashed: an edited copy does not count), or None."""
    folder = cache_dir() / digest
    try:
        return folder if (folder / CACHE_MARK).is_file() and weights_digest(folder) == digest else None
    except OSError:
        return None


# ----------------------------------------------------------------------------- resolving models:/ references


def _client(tracking_uri: Optional[str]):
    uri = connect(tracking_uri)  # TrackingError (unreachable / unusable store) goes to the caller as is
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri), uri


def _not_found(e: Exception) -> bool:
    return getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _model_version(client, uri: str, name: str, alias: Optional[str], version: Optional[str]):
    """The ModelVersion a reference names, or RegistryError saying what the registry has instead."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if not _not_found(e):
            raise RegistryError(f"registry at {redact(uri)}: {e}") from None
        known = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise RegistryError(f"no registered model {name!r} in the registry at {redact(uri)} "
                            f"(registered: {', '.join(known) or 'none'})") from None
    if alias is not None:
        aliases = dict(model.aliases or {})
        if alias not in aliases:
            have = ", ".join(f"@{a} -> version {v}" for a, v in sorted(aliases.items())) or "none"
            raise RegistryError(f"registered model {name!r} has no alias {alias!r} (its aliases: {have})")
        version = str(aliases[alias])
    try:
        return client.get_model_version(name, version)
    except MlflowException as e:
        if not _not_found(e):
            raise RegistryError(f"registry at {redact(uri)}: {e}") from None
        have = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise RegistryError(f"registered model {name!r} has no version {version} "
                            f"(versions: {', '.join(map(str, have)) or 'none'})") from None


def resolve(ref: str, tracking_uri: Optional[str] = None) -> ResolvedReasoner:
    """Resolve `ref` against the registry at `tracking_uri` and make sure its checkpoint is in the cache.

    RegistryError for a malformed reference, an unknown model, alias or version, or a version that
    is not a TART reasoner; TrackingError when the store is unreachable.
    """
    name, alias, version = parse_uri(ref)
    client, uri = _client(tracking_uri)
    mv = _model_version(client, uri, name, alias, version)
    folder, digest = _fetch(name, mv)
    logger.debug(f"[registry] {ref} -> {name} version {mv.version} (weights {digest}) at {folder}")
    return ResolvedReasoner(ref=ref, name=name, version=str(mv.version), alias=alias, digest=digest,
                            folder=str(folder))


def _checkpoint_in(download: Path) -> Path:
    """The checkpoint folder inside a downloaded version: the MLflow Model's artifacts/reasoner/, or the
    version itself (versions registered before the pyfunc: the raw checkpoint folder)."""
    for folder in (download / "artifacts" / ARTIFACT, download):
        if (folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file():
            return folder
    raise RegistryError(f"it holds no TART reasoner checkpoint ({WEIGHTS_FILE} + {CONFIG_FILE} in "
                        f"artifacts/{ARTIFACT}/ or at its root)")


def _quiet_downloads() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in job logs


def _fetch(name: str, mv) -> tuple[Path, str]:
    """Version `mv` of `name` in the cache (downloaded if missing): (its folder, its weights digest)."""
    tagged = (mv.tags or {}).get(DIGEST_TAG)
    if tagged and (hit := cached(tagged)) is not None:
        return hit, tagged
    import mlflow  # loaded by connect

    _quiet_downloads()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-v{mv.version}-", dir=root))  # same filesystem: rename is atomic
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{SCHEME}{name}/{mv.version}",
                                                         dst_path=str(tmp / "download")))
        try:
            folder = _checkpoint_in(local)
        except RegistryError as e:
            raise RegistryError(f"version {mv.version} of {name!r} ({mv.source}): {e}") from None
        digest = weights_digest(folder)
        if tagged and digest != tagged:
            raise RegistryError(f"version {mv.version} of {name!r}: its weights hash to {digest}, but the version's "
                                f"{DIGEST_TAG} tag says {tagged} (a corrupted or replaced artifact)")
        (folder / CACHE_MARK).write_text(json.dumps(
            {"name": name, "version": str(mv.version), "source": mv.source, "digest": digest,
             "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2, sort_keys=True))
        final = root / digest
        if cached(digest) is None:
            shutil.rmtree(final, ignore_errors=True)  # an incomplete or edited copy: replace it
            try:
                os.rename(folder, final)
            except OSError:
                if cached(digest) is None:  # not a concurrent fetch that got there first
                    raise
        return final, digest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_folder(pinned: str, digest: str, hint: Optional[str] = None) -> Path:
    """The checkpoint folder of a resolved registry reasoner on THIS node (a cell's worker).

    `hint`: where the driver put it (present when the node shares the driver's cache); else this
    node's cache; else the pinned version is fetched through $MLFLOW_TRACKING_URI and checked
    against `digest`.
    """
    if hint and (Path(hint) / WEIGHTS_FILE).is_file():
        return Path(hint)
    hit = cached(digest)
    if hit is not None:
        return hit
    try:
        res = resolve(pinned)
    except Exception as e:  # noqa: BLE001 - one message naming both ways to fix it
        raise RegistryError(
            f"reasoner {pinned} (weights {digest}) is not on this node ({hint or cache_dir()} missing) and the "
            f"registry of $MLFLOW_TRACKING_URI could not provide it ({e}); put $TART_REASONER_CACHE (or $TART_CACHE) "
            "on storage every node mounts, or set MLFLOW_TRACKING_URI on the workers") from None
    if res.digest != digest:
        raise RegistryError(f"reasoner {pinned}: this node's registry holds weights {res.digest}, the grid resolved "
                            f"{digest}: the workers' $MLFLOW_TRACKING_URI is another store than the grid's mlflow_uri")
    return Path(res.folder)


def launch_tags(resolved: list[tuple[int, ResolvedReasoner]]) -> dict[str, str]:
    """Tags for a grid launch's MLflow run: per registry reasoner (by its index in `reasoners:`),
    the reference as written and the name, version, alias and digest it resolved to."""
    tags = {}
    for i, r in resolved:
        tags.update({f"tart.reasoner.{i}.ref": r.ref, f"tart.reasoner.{i}.name": r.name,
                     f"tart.reasoner.{i}.version": r.version, f"tart.reasoner.{i}.digest": r.digest})
        if r.alias:
            tags[f"tart.reasoner.{i}.alias"] = r.alias
    return tags


# ----------------------------------------------------------------------------- logging and registering


def _requirements() -> list[str]:
    """What loading the model needs, pinned to this environment (MLflow's own inference loads the model
    in a subprocess: seconds per log). The `pipeline` package itself must be installed too."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "torch", "numpy", "safetensors"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")  # no local tag (+cpu): any build of it
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _example(d: int) -> dict[str, Any]:
    """A one-episode input (2 context pairs, 1 query): MLflow runs the model on it when logging."""
    import numpy as np

    return {"x_context": np.zeros((1, 2, d), np.float32), "y_context": np.array([[0.0, 1.0]], np.float32),
            "x_query": np.zeros((1, 1, d), np.float32)}


def _version_with_digest(client, name: str, digest: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    same = [v for v in versions if (v.tags or {}).get(DIGEST_TAG) == digest]
    return min(same, key=lambda v: int(v.version)) if same else None


def log_reasoner(folder: str | os.PathLike, *, card: Optional[str] = None, register_as: Optional[str] = None,
                 alias: Optional[str] = None, description: str = "", tags: Optional[dict] = None) -> LoggedReasoner:
    """Log checkpoint `folder` as an MLflow Model of the active run; with `register_as`, register it and
    point `alias` at the version. `card`: the model card (markdown; default: the folder's README.md)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from . import reasoner_model

    _quiet_downloads()  # MLflow downloads the model again to check it on the input example
    folder = Path(folder)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    digest = weights_digest(folder)
    if card is None and (folder / CARD_FILE).is_file():
        card = (folder / CARD_FILE).read_text()
    client = MlflowClient()
    if register_as:
        same = _version_with_digest(client, register_as, digest)
        if same is not None:  # a re-submitted run, or a checkpoint registered before: one version per weights
            if alias:
                client.set_registered_model_alias(register_as, alias, same.version)
            logger.info(f"[registry] {register_as} version {same.version} already holds weights {digest}")
            return LoggedReasoner(f"{SCHEME}{register_as}/{same.version}", digest, str(same.version), reused=True)
    with tempfile.TemporaryDirectory(prefix="tart-model-") as tmp:
        ckpt = Path(tmp) / ARTIFACT
        ckpt.mkdir()
        for f in folder.iterdir():
            if f.is_file() and f.name != CACHE_MARK:
                shutil.copyfile(f, ckpt / f.name)
        if card:
            (ckpt / CARD_FILE).write_text(card)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=reasoner_model.__file__,  # "models from code": no pickle
            artifacts={ARTIFACT: str(ckpt)}, signature=reasoner_model.SIGNATURE,
            input_example=_example(int(meta["reasoner"]["d"])), pip_requirements=_requirements(),
            metadata={DIGEST_TAG: digest, "architecture": meta.get("architecture"), "reasoner": meta.get("reasoner")},
        )
    if not register_as:
        return LoggedReasoner(info.model_uri, digest)
    version = register_version(
        register_as, info.model_uri, alias, run_id=info.run_id, model_id=info.model_id,
        description=description, version_description=card or "",
        tags={DIGEST_TAG: digest, **(tags or {})},
    )
    return LoggedReasoner(info.model_uri, digest, version)


def register_checkpoint(folder: str | os.PathLike, register_as: str, alias: str, tracking_uri: Optional[str] = None,
                        experiment: str = "tart-train", card: Optional[str] = None) -> LoggedReasoner:
    """`log_reasoner` for a checkpoint folder outside training (the shipped reasoner, a run's final/):
    in a run of its own in `experiment` (tagged tart.stage=register), registered under `register_as`."""
    import mlflow

    from .tracking import ensure_experiment

    uri = connect(tracking_uri)
    with mlflow.start_run(experiment_id=ensure_experiment(experiment, uri), run_name=f"register-{register_as}",
                          tags={"tart.stage": "register", "tart.source": str(Path(folder).resolve())}):
        return log_reasoner(folder, card=card, register_as=register_as, alias=alias)
