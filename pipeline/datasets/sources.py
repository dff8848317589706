"""Generic sources: local .csv/.tsv/.parquet/.jsonl files and HF datasets (ids or local folders).

The spec's column mapping (`text_field` / `image_field` / `audio_field` by modality,
`label_field`, `id_field`) picks the columns; the modality adapter turns the input column
into held inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..modality import InputError, adapter
from .builtin import known_datasets, sha256_file
from .spec import DatasetError, DatasetSpec, Raw


def _read_table(path: str) -> "Any":
    import pandas as pd

    p = path.lower()
    try:
        if p.endswith(".parquet"):
            return pd.read_parquet(path)
        if p.endswith((".jsonl", ".json")):
            return pd.read_json(path, lines=p.endswith(".jsonl"))
        if p.endswith(".tsv"):
            return pd.read_csv(path, sep="\t", keep_default_na=False)
        return pd.read_csv(path, keep_default_na=False)
    except Exception as e:  # pandas raises many types for unreadable files
        raise DatasetError(f"cannot read dataset file {path}: {e}") from None


def _check_columns(columns: list[str], spec: DatasetSpec, where: str) -> None:
    held = adapter(spec.modality)
    for role, option in ((held.name, held.spec_field), ("label", "label_field"), ("id", "id_field")):
        col = getattr(spec, option)
        if col is not None and col not in columns:
            raise DatasetError(
                f"{where}: {role} column {col!r} not found; available columns: {', '.join(map(str, columns))} "
                f"(set {option}=...)"
            )


def _raw_from_frame(df: Any, spec: DatasetSpec, where: str, prefix: str) -> Raw:
    columns = [str(c) for c in df.columns]
    _check_columns(columns, spec, where)
    held = adapter(spec.modality)
    try:
        values = held.from_column(df[getattr(spec, held.spec_field)].tolist(), where)
    except InputError as e:
        raise DatasetError(str(e)) from None
    ids = ([f"{prefix}{v}" for v in df[spec.id_field].tolist()] if spec.id_field
           else [f"{prefix}{i}" for i in range(len(df))])
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{where}: id column {spec.id_field!r} has duplicate values")
    return Raw(inputs=values, raw_labels=df[spec.label_field].tolist(), ids=ids, columns=columns)


def read_file(spec: DatasetSpec) -> Raw:
    raw = _raw_from_frame(_read_table(spec.name), spec, spec.name, prefix=f"{Path(spec.name).name}:")
    raw.meta = {"path": str(Path(spec.name).resolve()), "sha256": sha256_file(Path(spec.name))}
    if spec.test_split:
        if not os.path.isfile(spec.test_split):
            raise DatasetError(f"test_split={spec.test_split!r}: for a file dataset this must be an existing file")
        raw.test = _raw_from_frame(_read_table(spec.test_split), spec, spec.test_split,
                                   prefix=f"{Path(spec.test_split).name}:")
        raw.test.meta = {"path": str(Path(spec.test_split).resolve()), "sha256": sha256_file(Path(spec.test_split))}
    return raw


def read_hf(spec: DatasetSpec) -> Raw:
    try:
        import datasets as hfd
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DatasetError(f"HF dataset {spec.name!r} needs the `datasets` package ({e})") from None
    try:
        dsd = hfd.load_dataset(spec.name, spec.config_name)
    except Exception as e:  # offline / unknown id / bad config all surface here
        raise DatasetError(
            f"cannot load HF dataset {spec.name!r}"
            f"{f' (config {spec.config_name!r})' if spec.config_name else ''}: {type(e).__name__}: {e}. "
            f"Offline (HF_HUB_OFFLINE=1) only cached datasets load; known built-ins: {', '.join(known_datasets())}"
        ) from None
    splits = list(dsd.keys())
    if spec.train_split not in dsd:
        raise DatasetError(f"HF dataset {spec.name!r} has no split {spec.train_split!r}; splits: {', '.join(splits)}")
    test_name = spec.test_split
    if test_name is None and "test" in dsd and spec.train_split != "test":
        test_name = "test"  # use the source's own test split where it has one
    if test_name is not None and test_name not in dsd:
        raise DatasetError(f"HF dataset {spec.name!r} has no split {test_name!r}; splits: {', '.join(splits)}")

    def convert(split: str) -> Raw:
        ds = dsd[split]
        _check_columns(list(ds.column_names), spec, f"{spec.name}[{split}]")
        raw = _raw_from_frame(ds.to_pandas(), spec, f"{spec.name}[{split}]", prefix=f"{split}:")
        feat = ds.features.get(spec.label_field)
        if getattr(feat, "names", None):
            raw.class_names = list(feat.names)
        return raw

    raw = convert(spec.train_split)
    if test_name is not None:
        raw.test = convert(test_name)
    raw.meta = {"hf_id": spec.name, "config": spec.config_name, "splits": splits, "test_split": test_name,
                "fingerprint": getattr(dsd[spec.train_split], "_fingerprint", None)}
    return raw
