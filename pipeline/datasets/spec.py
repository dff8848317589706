"""The data types: `DatasetSpec` (how a source becomes a binary task), `Examples` (one split of
it), `Raw` (a loaded source before binarisation) and `DatasetError`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..modality import adapter

SPLITS = ("train", "test", "all")


class DatasetError(ValueError):
    """A dataset name, option or content is unusable; the message says which and why."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to turn a source into a binary task. `load_dataset_spec` builds and checks one."""

    name: str  # registry name, HF id or file path
    source: str = ""  # "builtin" | "hf" | "file"
    modality: str = "text"
    text_field: str = "text"
    label_field: str = "label"
    image_field: str = "image"
    audio_field: str = "audio"  # added later: enters the digest only when set (see `digest`)
    id_field: str | None = None  # column with stable ids; default: the row number in the source
    positive_class: Any = None  # raw label value (or its name) that becomes 1; one-vs-rest
    negative_class: Any = None  # with positive_class: keep only this pair (the rest is dropped)
    label_names: tuple[str, str] | None = None  # words for label 0 and 1 (ICL); default derived
    train_split: str = "train"  # HF split / file used as the context pool
    test_split: str | None = None  # HF split / file used as the test set; None: seeded split
    test_fraction: float = 0.3  # share of each class held out when a seeded split is made
    test_size: int | None = None  # class-balanced test subsample (total); None: all test rows
    train_size: int | None = None  # class-balanced context-pool subsample (total); None: whole pool
    split_seed: int = 0
    config_name: str | None = None  # HF dataset config ("subset")
    classes: tuple | None = None  # a multi-class task: these raw label values become 0..C-1 (the rest dropped)

    def digest(self) -> str:
        """Stable short hash of everything that decides which examples and labels come out.

        Fields added after the first release count only when they differ from their default,
        so the digest (and every embedding cache key built on it) of an existing spec is kept.
        """
        fields = dataclasses.asdict(self)
        for name, default in _LATER_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        blob = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_LATER_FIELDS = {"audio_field": "audio", "classes": None}


@dataclass
class Examples:
    """One split of a task (binary, or C classes 0..C-1): `inputs` of one `modality`, held as its adapter says
    (`pipeline.modality`: a list of str, an (n, H, W[, C]) uint8 array, a list of 16 kHz
    float32 clips). `texts` / `images` / `audios` read the inputs of that modality (None for
    the other two)."""

    name: str
    split: str
    ids: list[str]
    labels: np.ndarray  # int64, values in 0..C-1 (C = len(label_names); binary: {0, 1})
    label_names: tuple[str, ...]
    modality: str
    inputs: Any
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def texts(self) -> list[str] | None:
        return self.inputs if self.modality == "text" else None

    @property
    def images(self) -> np.ndarray | None:
        return self.inputs if self.modality == "image" else None

    @property
    def audios(self) -> list[np.ndarray] | None:
        return self.inputs if self.modality == "audio" else None

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def class_counts(self) -> dict[int, int]:
        return {c: int((self.labels == c).sum()) for c in range(self.n_classes)}

    def subset(self, index: Sequence[int], split: str | None = None) -> "Examples":
        idx = np.asarray(index, dtype=np.int64)
        return dataclasses.replace(
            self,
            split=split or self.split,
            ids=[self.ids[i] for i in idx],
            labels=self.labels[idx],
            inputs=adapter(self.modality).select(self.inputs, idx),
            metadata=dict(self.metadata),
        )


@dataclass
class Raw:
    """A loaded source before binarisation: raw label values, optional predefined test part."""

    inputs: Any  # held as the modality adapter holds them (list of str, image array, list of clips)
    raw_labels: list
    ids: list[str]
    columns: list[str]
    test: "Raw | None" = None
    class_names: list[str] | None = None  # names of integer class labels (HF ClassLabel)
    meta: dict = field(default_factory=dict)


# the options a caller may set (`load_dataset_spec(name, **opts)`, a grid's dataset options)
SPEC_FIELDS = {f.name for f in dataclasses.fields(DatasetSpec)} - {"name", "source"}
