"""A grid's spec and its cells: `GridSpec` (the YAML), `Cell` (one result), `expand` (spec -> cells).

Each cell has a content-addressed id, a hash of everything that decides its result (dataset
spec and split sizes, backbone, protocol, method, reasoner weights digest, k, seed, dtype,
CODE_VERSION): a re-run skips every cell whose id is in the results table. `expand`
validates the whole grid first and reports every problem at once (`GridError`), before any
work; what a method needs (a reasoner, a causal backbone, k above its PCA size) comes from
the method registry (`pipeline.methods`).

Reasoners are "default" (the shipped default), shipped names ("v1", "v2"), checkpoint folders, or model registry references
(`models:/NAME@ALIAS`, `models:/NAME/VERSION`). A reference is resolved once per expansion
(`expand_grid`; a launch expands once) to the version it names and a local copy
(`pipeline.registry`); its cells record the pinned version (`models:/NAME/VERSION`) and, like
every reasoner's, the weights digest that their ids hash, so moving an alias to new weights gives
new tart cells and leaves every other cell done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Iterator, Optional

from ..backbones import REGISTRY as BACKBONES
from ..backbones import known_backbones
from ..config import ConfigError
from ..datasets import DatasetError, load_examples
from ..methods import EMBEDDINGS, Method, get_method, known_methods
from ..modality import modality_of
from ..registry import RegistryError, ResolvedReasoner, is_registry_uri, local_folder, resolve, weights_digest
from ..runtime import DTYPES, resolve_dtype
from ..tracking import TrackingError

logger = logging.getLogger(__name__)

CODE_VERSION = "grid-v1"  # bump when a change alters cell results; part of every cell id
PROTOCOLS = ("stream", "vanilla", "loo")  # embedding protocols; vanilla/loo prompt a causal LM
NO_REASONER = "-"  # Cell.reasoner and reasoner_digest of methods without one (part of the cell ids)
DEFAULT_GRID = Path(__file__).resolve().parents[2] / "configs" / "grids" / "default.yaml"


class GridError(ValueError):
    """An invalid grid; the message lists every problem found."""


@dataclass
class GridSpec:
    """A grid as its YAML states it (`load_config(GridSpec, path, overrides)`); `expand` gives its cells."""

    name: str = "default"  # grid id: results live under <storage>/<name>/
    datasets: list[Any] = field(default_factory=lambda: ["sms_spam", "tweet_sentiment", "spoken_digits"])  # name or {name, options}
    backbones: list[str] = field(default_factory=lambda: ["smollm2-135m", "minilm-l6", "whisper-tiny-en"])
    methods: list[str] = field(default_factory=lambda: ["tart", "icl", "lr_probe"])
    # "default", checkpoint dirs, or registry references models:/NAME@ALIAS | models:/NAME/VERSION
    reasoners: list[str] = field(default_factory=lambda: ["default"])
    ks: list[int] = field(default_factory=lambda: [18, 32, 64])
    # other ks for some methods, e.g. {icl: [18, 32]} (an LM's context holds only so many examples)
    method_ks: dict[str, list[int]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    protocols: list[str] = field(default_factory=lambda: ["stream"])
    test_size: int = 100  # balanced test subsample per dataset
    train_size: int = 256  # balanced context pool per dataset (context sets are drawn from it)
    storage: str = "tart_runs/grids"
    cache_uri: str = ""  # embedding cache ("" = the embed stage default)
    mlflow_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    experiment: str = "tart-grid"
    executor: str = "ray"  # ray | local
    address: Optional[str] = None  # Ray address (None: local or the job's cluster)
    cpus_per_cell: float = 0.5
    embed_actors: int = 1
    embed_batch_size: int = 32
    # torch threads inside each embedding actor; null: as Ray sets them (one per requested CPU, so a
    # 0.5-CPU actor gets 1 thread). Embedding runs before the cells, so on a small CPU box it may use them all.
    embed_torch_threads: Optional[int] = None
    gpus_per_actor: float = 0.0  # per embedding actor
    gpus_per_icl_task: float = 0.0  # per ICL task (one seed of one dataset x causal backbone); > 0: the LM runs on it
    # CPUs per ICL task (its torch threads: Ray sets one per whole CPU). ICL is compute-bound: on a
    # CPU box, tasks sharing a core (0.5 CPU each) only slow each other down.
    cpus_per_icl_task: float = 1.0
    # queries per ICL forward pass. 8 suits a CPU; on a GPU 32 is 3x faster (H200, SmolLM2-sized
    # model, k=32/64: BENCHMARKS.md "ICL on a GPU"), as configs/grids/paper.yaml sets it.
    icl_batch_size: int = 8
    # icl: cut every example (context and query) to its first N characters, so that large-k prompts
    # fit the LM's context (validation reports those that do not); recorded in the icl cells' ids
    icl_max_chars: Optional[int] = None
    # weights/activations of the backbones (embedding and icl): auto = bfloat16 on GPU and on CPUs with
    # native bf16 (AVX512-BF16/AMX: 1.8-2.8x faster there, accuracy within 0.003; BENCHMARKS.md), else
    # float32. The driver resolves it (GPU if gpus_per_actor / gpus_per_icl_task > 0) into each cell.
    dtype: str = "auto"

    def validate(self) -> None:
        if self.executor not in ("ray", "local"):
            raise ConfigError(f"executor={self.executor!r}: expected ray or local")
        for name in ("datasets", "backbones", "methods", "reasoners", "ks", "seeds", "protocols"):
            if not getattr(self, name):
                raise ConfigError(f"grid {name} is empty: list at least one")
        if self.test_size < 2 or self.train_size < 2:
            raise ConfigError("test_size and train_size must be >= 2")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.cpus_per_cell <= 0 or self.cpus_per_icl_task <= 0:
            raise ConfigError(f"cpus_per_cell={self.cpus_per_cell}, cpus_per_icl_task={self.cpus_per_icl_task}: "
                              "expected > 0 (Ray schedules a task by the CPUs it asks for)")
        if self.gpus_per_actor < 0 or self.gpus_per_icl_task < 0:
            raise ConfigError("gpus_per_actor and gpus_per_icl_task must be >= 0")
        if self.icl_max_chars is not None and self.icl_max_chars < 1:
            raise ConfigError(f"icl_max_chars={self.icl_max_chars}: expected >= 1 or null")
        for m, ks in self.method_ks.items():
            if not isinstance(ks, list) or not ks or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
                raise ConfigError(f"method_ks.{m}={ks!r}: expected a non-empty list of integers")
        if self.embed_torch_threads is not None and self.embed_torch_threads < 1:
            raise ConfigError(f"embed_torch_threads={self.embed_torch_threads}: expected >= 1 or null")


@dataclass(frozen=True)
class Cell:
    """One result of a grid: a method on one (dataset, backbone, protocol, k, seed[, reasoner])."""

    dataset: str
    dataset_options: str  # canonical JSON of the dataset options (incl. train/test sizes)
    backbone: str
    protocol: str  # stream | vanilla | loo; a text method's own protocol ("prompt" for icl)
    method: str
    reasoner: str  # NO_REASONER for methods without a reasoner
    reasoner_digest: str
    k: int
    seed: int
    # the backbone dtype, resolved by the driver; "auto" = float32 (how ids read before bf16 was auto)
    dtype: str = "auto"
    # icl: every example cut to this many characters (the grid's icl_max_chars); None: as they are
    prompt_max_chars: Optional[int] = None

    @property
    def backbone_dtype(self) -> str:
        """The dtype the backbone runs in for this cell."""
        return "float32" if self.dtype == "auto" else self.dtype

    @property
    def cell_id(self) -> str:
        key = dict(dataclasses.asdict(self), code_version=CODE_VERSION)
        key.pop("reasoner")  # the path does not decide the result; the weights digest does
        if key["dtype"] == "auto":  # float32 as ids were before the option: those results stay valid
            key.pop("dtype")
        if key["prompt_max_chars"] is None:  # uncut, as ids were before the option
            key.pop("prompt_max_chars")
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def options(self) -> dict:
        return json.loads(self.dataset_options)

    @property
    def n_classes(self) -> int:
        """2, or the number of classes of a multi-class dataset (its `classes` option)."""
        classes = self.options.get("classes")
        return len(classes) if classes else 2

    @property
    def group(self) -> tuple:
        """Cells that share embeddings (or, for a text method, one backbone load)."""
        return (self.dataset, self.dataset_options, self.backbone, self.protocol)


def cell_dtype(dtype: str, gpus: float) -> str:
    """A cell's dtype: `dtype` resolved for the device its work gets (a GPU if `gpus` > 0).

    "auto" that resolves to float32 stays "auto", so the ids of earlier float32 results stay
    valid; one that resolves to bfloat16 becomes "bfloat16", the id an explicit bfloat16 gets.
    """
    resolved = resolve_dtype(dtype, "cuda" if gpus > 0 else "cpu")
    return "auto" if dtype == "auto" and resolved == "float32" else resolved


def reasoner_dir(ref: str) -> Path:
    """The folder of a folder reasoner ("default", or a shipped name such as "v1" / "v2", or a
    checkpoint folder); registry ones: `reasoner_folder`."""
    from ..reasoner import shipped_dir  # pipeline.reasoner imports torch (~3 s): only when asked

    return shipped_dir(ref)


def reasoner_digest(ref: str) -> str:
    """The weights digest of a folder reasoner (sha256 of its model.safetensors, 16 hex)."""
    return weights_digest(reasoner_dir(ref))


def reasoner_folder(ref: str, digest: str, hint: Optional[str] = None) -> Path:
    """The checkpoint folder of a cell's reasoner on this machine: a folder reasoner's own, a registry
    reasoner's local copy (`hint`: where the driver put it; see `pipeline.registry.local_folder`)."""
    return local_folder(ref, digest, hint) if is_registry_uri(ref) else reasoner_dir(ref)


@dataclass(frozen=True)
class _Reasoner:
    """What the grid needs of one reasoner checkpoint, read without loading it."""

    ref: str  # as the grid lists it
    digest: str
    d: int
    max_k: int
    cell_ref: str = ""  # what its cells record: the ref, or the pinned registry version
    resolved: Optional[ResolvedReasoner] = None  # registry reasoners: what the reference resolved to


@dataclass(frozen=True)
class _Dataset:
    name: str
    options: dict
    modality: Optional[str]  # None: it did not load (a problem is reported)
    n_classes: int = 2


# ----------------------------------------------------------------------------- validation, one axis each


def _check_methods(spec: GridSpec, problems: list[str]) -> list[Method]:
    known = known_methods()
    methods = []
    for m in spec.methods:
        if m in known:
            methods.append(get_method(m))
        else:
            problems.append(f"method {m!r} is unknown; known: {', '.join(known)}")
    return methods


def ks_of(spec: GridSpec, method: str) -> list[int]:
    """The ks a method runs at: its `method_ks` entry, else the grid's ks."""
    return list(spec.method_ks.get(method, spec.ks))


def all_ks(spec: GridSpec) -> list[int]:
    """Every k of the grid, in order: the grid's ks, then any only `method_ks` lists."""
    out = list(spec.ks)
    for ks in spec.method_ks.values():
        out += [k for k in ks if k not in out]
    return out


def _check_protocols_and_ks(spec: GridSpec, problems: list[str]) -> None:
    for p in spec.protocols:
        if p not in PROTOCOLS:
            problems.append(f"protocol {p!r} is unknown; known: {', '.join(PROTOCOLS)}")
    for k in all_ks(spec):
        if k % 2:
            problems.append(f"k={k}: context sets are class-balanced, so k must be even")
    for m in spec.method_ks:
        if m not in spec.methods:
            problems.append(f"method_ks names {m!r}, which is not a method of the grid ({', '.join(spec.methods)})")


def _check_backbones(spec: GridSpec, problems: list[str]) -> dict[str, Optional[str]]:
    """Each backbone's kind (None: an HF id / local folder whose kind is not known here). An HF id's
    config.json is fetched when the hub is reachable: a mistyped id is a problem now, not at embed time."""
    from ..backbones.resolve import probe_hub

    kinds = {}
    for b in spec.backbones:
        entry = BACKBONES.get(b)
        kinds[b] = entry.kind if entry is not None else None
        if b not in known_backbones() and not ("/" in b or os.path.isdir(b)):
            problems.append(f"backbone {b!r} is unknown; known: {', '.join(known_backbones())} (or an HF id / local folder)")
            continue
        if entry is None and not os.path.isdir(b):
            probe = probe_hub(b)
            if probe.problem:
                problems.append(probe.problem)
            elif not probe.checked:
                logger.info(f"[grid] backbone {b!r}: not checked against the hub (offline or unreachable)")
            kinds[b] = probe.kind or kinds[b]
    return kinds


def _check_reasoners(spec: GridSpec, methods: list[Method], problems: list[str]) -> dict[str, _Reasoner]:
    """The reasoner checkpoints (read only when a method of the grid needs one); registry references
    are resolved here, against the grid's mlflow_uri, once per expansion."""
    if not any(m.needs_reasoner for m in methods):
        return {}
    from ..reasoner import ReasonerError, read_checkpoint_config  # imports torch (~3 s): only grids that need it

    out = {}
    for r in spec.reasoners:
        try:
            res = resolve(r, spec.mlflow_uri) if is_registry_uri(r) else None
            folder = Path(res.folder) if res else reasoner_dir(r)
            meta = read_checkpoint_config(folder)["reasoner"]
            out[r] = _Reasoner(r, res.digest if res else weights_digest(folder), d=meta["d"],
                               max_k=meta["max_points"] - 1, cell_ref=res.pinned if res else r, resolved=res)
        except (ReasonerError, RegistryError, TrackingError, OSError) as e:
            problems.append(f"reasoner {r!r}: {e}")
    return out


def _distinct(reasoners: dict[str, _Reasoner]) -> list[_Reasoner]:
    """One reasoner per weights digest (two names for one checkpoint would give the same cells twice)."""
    out: dict[str, _Reasoner] = {}
    for r in reasoners.values():
        if r.digest in out:
            logger.info(f"[grid] reasoner {r.ref!r} has the weights of {out[r.digest].ref!r} ({r.digest}): "
                        "its cells are that reasoner's")
        out.setdefault(r.digest, r)
    return list(out.values())


def _check_context_sizes(spec: GridSpec, methods: list[Method], reasoners: dict[str, _Reasoner],
                         problems: list[str]) -> None:
    """Every k against every method's limits (its PCA size, its reasoner's trained context)."""
    found: list[str] = []
    for m in methods:
        limits = [dict(reasoner_d=r.d, reasoner_max_k=r.max_k, reasoner=f"reasoner {r.ref!r}")
                  for r in reasoners.values()] if m.needs_reasoner else [{}]
        for lim, k in product(limits, ks_of(spec, m.name)):
            found += [p for p in m.context_problems(k, **lim) if p not in found]  # reasoners of one d: once
    problems += found


def _dataset_entries(spec: GridSpec) -> list[tuple[str, dict]]:
    out = []
    for d in spec.datasets:
        if isinstance(d, str):
            name, opts = d, {}
        elif isinstance(d, dict) and "name" in d:
            name, opts = d["name"], dict(d.get("options") or {})
        else:
            raise GridError(f"grid datasets entry {d!r}: expected a name or a mapping with name and options")
        opts.setdefault("test_size", spec.test_size)
        opts.setdefault("train_size", spec.train_size)
        out.append((name, opts))
    return out


def _check_datasets(spec: GridSpec, problems: list[str]) -> list[_Dataset]:
    """Each dataset loads and its pool holds k/2 examples per class for the largest k."""
    try:
        entries = _dataset_entries(spec)
    except GridError as e:
        problems.append(str(e))
        return []
    out = []
    multiclass = [m for m in spec.methods if m in known_methods() and not get_method(m).multiclass]
    for name, opts in entries:
        modality, C = None, 2
        try:
            pool = load_examples(name, "train", **opts)
            modality, C = pool.modality, pool.n_classes
            need = max(all_ks(spec)) // C
            counts = pool.class_counts()
            if min(counts.values()) < need:
                problems.append(f"dataset {name!r}: k={max(all_ks(spec))} needs {need} context examples per class, "
                                f"the pool has {counts}")
            if C > 2:
                odd = [k for k in all_ks(spec) if k % C]
                if odd:
                    problems.append(f"dataset {name!r} has {C} classes: context sets hold k/{C} examples of each, "
                                    f"so every k must be a multiple of {C}; not {odd}")
                if multiclass:
                    problems.append(f"dataset {name!r} has {C} classes; method(s) {', '.join(multiclass)} "
                                    "take binary tasks only (drop them, or give the dataset two classes)")
        except (DatasetError, ValueError, OSError) as e:
            problems.append(f"dataset {name!r}: {e}")
        out.append(_Dataset(name, opts, modality, C))
    return out


def _fits(dataset: _Dataset, kind: Optional[str]) -> bool:
    """A dataset meets only the backbones of its modality (unknown kinds or modalities: any)."""
    return kind is None or dataset.modality is None or modality_of(kind) == dataset.modality


def _check_modalities(spec: GridSpec, datasets: list[_Dataset], kinds: dict[str, Optional[str]],
                      problems: list[str]) -> None:
    # a dataset that no backbone of the grid can embed is a mistake, not a skip
    for ds in datasets:
        if ds.modality is not None and not any(_fits(ds, kinds[b]) for b in spec.backbones):
            problems.append(f"dataset {ds.name!r} is {ds.modality}, but no backbone of the grid embeds {ds.modality} "
                            f"(backbones: {', '.join(f'{b} ({kinds[b]})' for b in spec.backbones)})")


def _check_method_fits(spec: GridSpec, methods: list[Method], datasets: list[_Dataset],
                       kinds: dict[str, Optional[str]], problems: list[str]) -> None:
    """A method that runs on none of the grid's (dataset, backbone) pairs (icl without a causal LM,
    setfit without a text encoder) gets no cells: said as a warning, not a problem, so that the
    default method list still works with any one backbone (`tart grid backbones=[minilm-l6]`)."""
    if not datasets or any(ds.modality is None for ds in datasets):
        return  # a dataset did not load: reported already
    pairs = [(ds, b) for ds, b in product(datasets, spec.backbones) if _fits(ds, kinds[b])]
    if not pairs:
        return  # reported by _check_modalities
    for m in methods:
        if not any(m.accepts(kinds[b], ds.modality) for ds, b in pairs):
            have = ", ".join(f"{ds.name} ({ds.modality}) x {b} ({kinds[b] or 'kind unknown'})" for ds, b in pairs)
            logger.warning(f"method {m.name!r} runs on {m.requirement()}, and no dataset x backbone of the grid is "
                           f"one ({have}): it gets no cells (add such a backbone, or drop the method)")


def _check_prompt_lengths(spec: GridSpec, methods: list[Method], datasets: list[_Dataset],
                          kinds: dict[str, Optional[str]], problems: list[str]) -> None:
    """Every icl prompt of the grid against its LM's context limit (`pipeline.icl_budget`): a prompt
    that does not fit is a deterministic failure, so it is reported now, not after the embeddings."""
    from ..icl_budget import grid_prompt_problems

    tokenizers: dict = {}  # one load per backbone for all the grid's prompted methods and datasets
    for m in methods:
        if m.runs_on == EMBEDDINGS or not m.prompted:
            continue
        for ds, backbone in product(datasets, spec.backbones):
            if ds.modality == "text" and kinds[backbone] in ("causal", None) and m.accepts(kinds[backbone], ds.modality):
                problems += grid_prompt_problems(ds.name, ds.options, backbone, ks_of(spec, m.name), spec.seeds,
                                                 spec.icl_max_chars, method=m.name, tokenizers=tokenizers)


# ----------------------------------------------------------------------------- expansion


@dataclass(frozen=True)
class Expansion:
    """A validated grid: its cells, and what each registry reference of `reasoners:` resolved to."""

    cells: list[Cell]
    registry: list[tuple[int, ResolvedReasoner]]  # (index in spec.reasoners, its resolution)


def expand(spec: GridSpec) -> list[Cell]:
    """All cells of the grid, after validating it as a whole (GridError lists every problem).

    Order: dataset, backbone, k, seed, method, then protocol and reasoner (the order cells run in).
    """
    return expand_grid(spec).cells


def expand_grid(spec: GridSpec) -> Expansion:
    """`expand`, plus the registry resolutions (a launch records them on its MLflow run)."""
    problems: list[str] = []
    methods = _check_methods(spec, problems)
    _check_protocols_and_ks(spec, problems)
    kinds = _check_backbones(spec, problems)
    reasoners = _check_reasoners(spec, methods, problems)
    _check_context_sizes(spec, methods, reasoners, problems)
    datasets = _check_datasets(spec, problems)
    _check_modalities(spec, datasets, kinds, problems)
    _check_method_fits(spec, methods, datasets, kinds, problems)
    if not problems:  # tokenises prompts: only a grid whose datasets and backbones are fine
        _check_prompt_lengths(spec, methods, datasets, kinds, problems)
    if problems:
        raise GridError(f"grid {spec.name!r} is invalid ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems))

    distinct = _distinct(reasoners)
    cells = []
    for ds, backbone in product(datasets, spec.backbones):
        if not _fits(ds, kinds[backbone]):
            continue
        for k, seed, method in product(all_ks(spec), spec.seeds, methods):
            if k in ks_of(spec, method.name) and method.accepts(kinds[backbone], ds.modality):
                base = Cell(dataset=ds.name, dataset_options=json.dumps(ds.options, sort_keys=True), backbone=backbone,
                            protocol="", method=method.name, reasoner=NO_REASONER, reasoner_digest=NO_REASONER,
                            k=k, seed=seed, dtype=_dtype_of(spec, method),
                            prompt_max_chars=spec.icl_max_chars if method.prompted else None)
                cells += _method_cells(spec, base, method, kinds[backbone], distinct)
    registry = [(spec.reasoners.index(r.ref), r.resolved) for r in reasoners.values() if r.resolved is not None]
    return Expansion(cells, registry)


def _dtype_of(spec: GridSpec, method: Method) -> str:
    """Embedding methods run on the embedding actors' device, text methods on their task's; a method
    with its own dtype (setfit trains in float32) always runs in it."""
    if method.dtype is not None:
        return method.dtype
    gpus = spec.gpus_per_actor if method.runs_on == EMBEDDINGS else spec.gpus_per_icl_task
    return cell_dtype(spec.dtype, gpus)


def _method_cells(spec: GridSpec, base: Cell, method: Method, kind: Optional[str],
                  reasoners: list[_Reasoner]) -> Iterator[Cell]:
    """The cells of one (dataset, backbone, k, seed, method): one per protocol x reasoner."""
    if method.protocol is not None:  # a text method runs under its own protocol only
        yield dataclasses.replace(base, protocol=method.protocol)
        return
    for protocol in spec.protocols:
        if protocol != "stream" and kind not in ("causal", None):
            continue  # vanilla / loo prompt the backbone: causal LMs only
        if method.needs_reasoner:
            for r in reasoners:
                yield dataclasses.replace(base, protocol=protocol, reasoner=r.cell_ref, reasoner_digest=r.digest)
        else:
            yield dataclasses.replace(base, protocol=protocol)
