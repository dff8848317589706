"""From a name to `Examples`: resolve the spec, read the source, binarise, split, subsample."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import OrderedDict
from typing import Any

import numpy as np

from ..modality import MODALITIES, InputError, adapter
from .builtin import BUILTINS, known_datasets
from .sources import read_file, read_hf
from .spec import SPEC_FIELDS, SPLITS, DatasetError, DatasetSpec, Examples, Raw

FILE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json")


def _is_file_source(name: str) -> bool:
    return name.lower().endswith(FILE_SUFFIXES) or os.path.exists(name)


def _looks_like_hf_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/"))


def load_dataset_spec(name: str | DatasetSpec, **opts: Any) -> DatasetSpec:
    """Resolve a registry name, HF id (`owner/name`) or local file to a checked `DatasetSpec`.

    Options override the built-in defaults; an unknown option or name is an error. For a
    built-in pair task (digits, mnist, spoken_digits) passing `positive_class` alone gives one-vs-rest.
    """
    if isinstance(name, DatasetSpec):
        return dataclasses.replace(name, **opts) if opts else name
    if isinstance(opts.get("classes"), list):  # from YAML / key=value: a tuple keeps the spec hashable
        opts = dict(opts, classes=tuple(opts["classes"]))
    if isinstance(opts.get("label_names"), list):
        opts = dict(opts, label_names=tuple(opts["label_names"]))
    unknown = sorted(set(opts) - SPEC_FIELDS)
    if unknown:
        raise DatasetError(f"unknown dataset option(s) {', '.join(unknown)}; known: {', '.join(sorted(SPEC_FIELDS))}")
    if name in BUILTINS:
        b = BUILTINS[name]
        base = dict(b.defaults)
        if "positive_class" in opts and "negative_class" not in opts and b.pair_task:
            base.pop("negative_class", None)  # one-vs-rest
        if {"positive_class", "negative_class", "classes"} & set(opts):
            base.pop("label_names", None)  # the default pair's words do not name another pair
        if "classes" in opts:  # a multi-class task replaces the default pair
            base.pop("positive_class", None), base.pop("negative_class", None)
        base.update(opts)
        spec = DatasetSpec(name=name, source="builtin", modality=b.modality, **base)
    elif os.path.isdir(name):  # a local folder of train/test files: `datasets` infers the splits
        spec = DatasetSpec(name=str(name), source="hf", **opts)
    elif _is_file_source(name):
        if not os.path.isfile(name):
            raise DatasetError(f"dataset file {name} does not exist")
        spec = DatasetSpec(name=str(name), source="file", **opts)
    elif _looks_like_hf_id(name) or opts.get("config_name"):
        spec = DatasetSpec(name=name, source="hf", **opts)
    else:
        raise DatasetError(
            f"unknown dataset {name!r}; known: {', '.join(known_datasets())} "
            f"(or an HF dataset id like owner/name, or a local {'/'.join(FILE_SUFFIXES)} file)"
        )
    _validate_spec(spec)
    return spec


def _validate_spec(spec: DatasetSpec) -> None:
    if spec.modality not in MODALITIES:
        raise DatasetError(f"modality {spec.modality!r}: expected one of {', '.join(MODALITIES)}")
    if not 0.0 < spec.test_fraction < 1.0:
        raise DatasetError(f"test_fraction={spec.test_fraction}: expected a number strictly between 0 and 1")
    C = 2
    if spec.classes is not None:
        classes = tuple(spec.classes)
        if len(classes) < 2 or len({str(c) for c in classes}) != len(classes):
            raise DatasetError(f"classes={spec.classes!r}: expected two or more different label values")
        if spec.positive_class is not None or spec.negative_class is not None:
            raise DatasetError("classes= (a multi-class task) cannot be combined with positive_class / negative_class")
        C = len(classes)
    for option in ("test_size", "train_size"):
        size = getattr(spec, option)
        if size is not None and (size < C or size % C):
            raise DatasetError(f"{option}={size}: expected a multiple of the {C} classes (the same number per class)")
    if spec.label_names is not None:
        names = tuple(spec.label_names)
        if len(names) != C or not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != C:
            raise DatasetError(f"label_names={spec.label_names!r}: expected {C} different non-empty words")
    if spec.negative_class is not None and spec.positive_class is None:
        raise DatasetError("negative_class needs positive_class as well")
    if spec.positive_class is not None and spec.positive_class == spec.negative_class:
        raise DatasetError(f"positive_class and negative_class are both {spec.positive_class!r}")


def _match(value: Any, target: Any, class_names: list[str] | None) -> bool:
    if value == target:
        return True
    if class_names and isinstance(value, (int, np.integer)) and 0 <= int(value) < len(class_names):
        return class_names[int(value)] == target  # target given by name of an integer class
    return str(value) == str(target)


def _binarise(raw: Raw, spec: DatasetSpec, where: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """-> (labels 0/1, or 0..C-1 for `classes`; row mask of kept rows; label names)."""
    values = raw.raw_labels
    distinct = sorted({str(v) for v in values})
    if spec.classes is not None:
        labels = np.full(len(values), -1, dtype=np.int64)
        for c, target in enumerate(spec.classes):
            hit = np.array([_match(v, target, raw.class_names) for v in values], dtype=bool)
            if not hit.any():
                raise DatasetError(f"{where}: classes entry {target!r} matches no label in column "
                                   f"{spec.label_field!r}; values: {', '.join(distinct[:20])}")
            labels[hit & (labels < 0)] = c
        names = tuple(spec.label_names) if spec.label_names is not None else tuple(
            _class_word(c, raw.class_names) for c in spec.classes)
        return labels, labels >= 0, tuple(str(n) for n in names)
    if spec.positive_class is not None:
        pos = np.array([_match(v, spec.positive_class, raw.class_names) for v in values], dtype=bool)
        if not pos.any():
            raise DatasetError(
                f"{where}: positive_class={spec.positive_class!r} matches no label in column "
                f"{spec.label_field!r}; values: {', '.join(distinct[:20])}"
            )
        if spec.negative_class is not None:
            neg = np.array([_match(v, spec.negative_class, raw.class_names) for v in values], dtype=bool)
            if not neg.any():
                raise DatasetError(
                    f"{where}: negative_class={spec.negative_class!r} matches no label in column "
                    f"{spec.label_field!r}; values: {', '.join(distinct[:20])}"
                )
            keep = pos | neg
        else:
            keep = np.ones(len(values), dtype=bool)
        labels = pos.astype(np.int64)
        pname = _class_word(spec.positive_class, raw.class_names)
        nname = _class_word(spec.negative_class, raw.class_names) if spec.negative_class is not None else "other"
        names = (nname, pname)
    else:
        ok = all(isinstance(v, (bool, int, np.integer, float, np.floating)) and float(v) in (0.0, 1.0)
                 for v in values)
        if not ok:
            raise DatasetError(
                f"{where}: label column {spec.label_field!r} is not binary 0/1 (values: "
                f"{', '.join(distinct[:20])}{' ...' if len(distinct) > 20 else ''}); "
                f"pass positive_class=<value> (one-vs-rest) or positive_class + negative_class (a pair)"
            )
        labels = np.array([int(float(v)) for v in values], dtype=np.int64)
        keep = np.ones(len(values), dtype=bool)
        names = tuple(raw.class_names[:2]) if raw.class_names and len(raw.class_names) == 2 else ("negative", "positive")
    if spec.label_names is not None:
        names = tuple(spec.label_names)
    return labels, keep, (str(names[0]), str(names[1]))


def _class_word(value: Any, class_names: list[str] | None) -> str:
    if class_names and isinstance(value, (int, np.integer)) and 0 <= int(value) < len(class_names):
        return str(class_names[int(value)])
    return str(value)


def _to_examples(raw: Raw, spec: DatasetSpec, split: str, where: str) -> Examples:
    if len(raw.ids) == 0:
        raise DatasetError(f"{where}: no rows")
    labels, keep, names = _binarise(raw, spec, where)
    idx = np.flatnonzero(keep)
    ids = [raw.ids[i] for i in idx]
    held = adapter(spec.modality)
    try:
        inputs = held.check(held.select(raw.inputs, idx), ids, where)
    except InputError as e:
        raise DatasetError(str(e)) from None
    return Examples(name=spec.name, split=split, ids=ids, labels=labels[idx], label_names=names,
                    modality=spec.modality, inputs=inputs)


def _stratified_test_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x7E57])
    mask = np.zeros(len(labels), dtype=bool)
    for c in range(max(2, int(labels.max()) + 1) if len(labels) else 2):
        where = np.flatnonzero(labels == c)
        n_test = int(round(len(where) * fraction))
        mask[rng.permutation(where)[:n_test]] = True
    return mask


def _balanced_subsample(ex: Examples, size: int, seed: int, where: str, option: str = "test_size") -> np.ndarray:
    per = size // ex.n_classes
    counts = ex.class_counts()
    short = {c: n for c, n in counts.items() if n < per}
    if short:
        have = " and ".join(f"{counts[c]} of class {c} ({ex.label_names[c]})" for c in counts)
        raise DatasetError(f"{where}: {option}={size} needs {per} examples per class, but the {ex.split} split has {have}")
    rng = np.random.default_rng([seed, 0x5A3B])
    chosen = [rng.permutation(np.flatnonzero(ex.labels == c))[:per] for c in range(ex.n_classes)]
    return np.sort(np.concatenate(chosen))  # keep source order: stable and readable


_RAW_MEMO: "OrderedDict[str, Raw]" = OrderedDict()
RAW_MEMO_SIZE = 8  # sources kept read in this process (a grid validates, embeds and prompts one dataset)
_NOT_READ_FIELDS = ("test_size", "train_size")  # subsampling happens after the read


def _read_raw(spec: DatasetSpec) -> Raw:
    """The spec's source, read once per process: a grid loads a dataset's splits for validation,
    for each embedding group and for ICL, and an HF or file source would be parsed each time.
    A file source is read again when its size or mtime changes. Callers do not mutate `Raw`."""
    key_fields = {k: v for k, v in dataclasses.asdict(spec).items() if k not in _NOT_READ_FIELDS}
    key_fields["cache_dir"] = os.environ.get("TART_CACHE")  # built-ins synthesise into / read from it
    if spec.source == "file":
        for f in (spec.name, spec.test_split):
            if f and os.path.isfile(f):
                st = os.stat(f)
                key_fields[f"stat:{f}"] = (st.st_size, st.st_mtime_ns)
    key = json.dumps(key_fields, sort_keys=True, default=str)
    if key in _RAW_MEMO:
        _RAW_MEMO.move_to_end(key)
        return _RAW_MEMO[key]
    if spec.source == "builtin":
        raw = BUILTINS[spec.name].reader(spec)
    elif spec.source == "file":
        raw = read_file(spec)
    else:
        raw = read_hf(spec)
    _RAW_MEMO[key] = raw
    while len(_RAW_MEMO) > RAW_MEMO_SIZE:
        _RAW_MEMO.popitem(last=False)
    return raw


def load_examples(name: str | DatasetSpec, split: str = "test", **opts: Any) -> Examples:
    """Load one split ("train" = context pool, "test", or "all") of a binary task.

    `name` is a built-in, an HF id, a local file or a `DatasetSpec`; `opts` are
    `DatasetSpec` fields. Deterministic: same spec, same examples in the same order.
    """
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    spec = load_dataset_spec(name, **opts)
    raw = _read_raw(spec)
    pool = _to_examples(raw, spec, "train", spec.name)
    meta = {"source": spec.source, "spec": dataclasses.asdict(spec), "spec_digest": spec.digest(), **raw.meta}
    if raw.test is not None:
        test_name = raw.meta.get("test_split") or spec.test_split
        test = _to_examples(raw.test, spec, "test", f"{spec.name}[{test_name}]")
        if test.label_names != pool.label_names and spec.label_names is None:
            test.label_names = pool.label_names
        overlap = set(test.ids) & set(pool.ids)
        if overlap:
            raise DatasetError(f"{spec.name}: train and test splits share ids, e.g. {sorted(overlap)[:3]}")
        meta["split_method"] = f"predefined:{test_name}"
    else:
        mask = _stratified_test_mask(pool.labels, spec.test_fraction, spec.split_seed)
        test = pool.subset(np.flatnonzero(mask), split="test")
        pool = pool.subset(np.flatnonzero(~mask), split="train")
        meta["split_method"] = f"seeded:{spec.test_fraction}:{spec.split_seed}"
    if spec.test_size is not None:
        test = test.subset(_balanced_subsample(test, spec.test_size, spec.split_seed, spec.name))
    if spec.train_size is not None:  # a smaller pool: cost grows with what is embedded, not with k x seeds
        pool = pool.subset(_balanced_subsample(pool, spec.train_size, spec.split_seed + 1, spec.name, "train_size"))
    if split == "all":
        out = Examples(name=spec.name, split="all", ids=pool.ids + test.ids,
                       labels=np.concatenate([pool.labels, test.labels]), label_names=pool.label_names,
                       modality=spec.modality, inputs=adapter(spec.modality).concat([pool.inputs, test.inputs]))
    else:
        out = pool if split == "train" else test
    out.metadata = {**meta, "split": split, "n": len(out), "class_counts": out.class_counts()}
    return out
