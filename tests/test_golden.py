"""Golden values pinned before the redesign of issue 13: a refactor must keep them byte-identical.

Cell ids decide which results a re-run skips, embedding cache keys which cache entries are
reused, and shard / part bytes what other tools read. If one of these changes, finished
work is silently recomputed (or, worse, mixed with new work): bump CODE_VERSION or the
cache FORMAT_VERSION on purpose instead, and update the value here in the same commit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.datasets import load_examples
from pipeline.generate import GenerateConfig, data_config, shard_bytes
from pipeline.grid import Cell, GridSpec, expand

DEFAULT_GRID_IDS = {  # (dataset, backbone, method, k, seed) -> cell id, default grid, dtype=bfloat16
    ("sms_spam", "smollm2-135m", "tart", 18, 0): "158b5b1f9ec1f92e3ec5",
    ("sms_spam", "smollm2-135m", "icl", 64, 2): "e98c6c620dd1151f3765",
    ("tweet_sentiment", "minilm-l6", "lr_probe", 32, 1): "a93cfccfe5a958bef40f",
    ("spoken_digits", "whisper-tiny-en", "tart", 64, 0): "f076746120494cb2e5d2",
}
N_DEFAULT_CELLS = 108
AUTO_FLOAT32_ID = "b9dad91830851333217e"  # the first cell with dtype auto (= float32 before the option existed)
SMS_TRAIN_DIGEST = "832ddf1af50aa291a565"  # dataset digest of sms_spam train (train_size=256, test_size=100)
SMS_MINILM_KEY_HASH = "b66da046988c491f1787"  # the stream cache entry of that split with minilm-l6
PART_SHA256 = "185842ad89e116e12e3a3253dd2622bc5a9f0a7c7b0b80a1acc6ea8ab436a62d"  # a cache part file written from fixed vectors
SHARD_SHA256 = "a6a0f320db90e2bf65a6ef145a2b896d513de3489041bcb9f79bb529bc797dfc"  # shard 1 of a small generate config


@pytest.fixture(scope="module")
def default_cells():
    spec = load_config(GridSpec, None, ["dtype=bfloat16"])
    return expand(spec)


def test_default_grid_cell_ids_are_unchanged(default_cells):
    ids = {(c.dataset, c.backbone, c.method, c.k, c.seed): c.cell_id for c in default_cells if c.reasoner in ("-", "default")}
    assert len(default_cells) == N_DEFAULT_CELLS
    for where, cell_id in DEFAULT_GRID_IDS.items():
        assert ids[where] == cell_id, where


def test_auto_dtype_cell_id_is_unchanged(default_cells):
    c = Cell(**{**dataclasses.asdict(default_cells[0]), "dtype": "auto"})
    assert c.cell_id == AUTO_FLOAT32_ID


def test_embedding_cache_key_is_unchanged():
    from pipeline.embed import backbone_info, dataset_digest, entry_key, key_hash

    ex = load_examples("sms_spam", "train", test_size=100, train_size=256)
    assert dataset_digest(ex) == SMS_TRAIN_DIGEST
    _, revision = backbone_info("minilm-l6")
    key = entry_key(backbone="minilm-l6", revision=revision, dataset_digest=SMS_TRAIN_DIGEST, split="train",
                    protocol="stream", layer=-1, pooling="mean", dtype="float32", max_length=None)
    assert key_hash(key) == SMS_MINILM_KEY_HASH


def test_cache_part_bytes_are_unchanged(tmp_path):
    from pipeline.embed import EmbedConfig, open_cache

    cache = open_cache(EmbedConfig(cache_uri=str(tmp_path)))
    X = np.arange(5 * 4, dtype=np.float32).reshape(5, 4) / 7
    man = cache.write("h" * 20, {"backbone": "b", "revision": "r", "pooling": "mean", "layer": -1,
                                 "dataset_digest": "d", "split": "train", "protocol": "stream"},
                      [f"id{i}" for i in range(5)], np.array([0, 1, 0, 1, 1]), X, 3, {})
    assert [f["sha256"] for f in man["files"]][0] == PART_SHA256
    assert len(man["files"]) == 2 and [f["rows"] for f in man["files"]] == [3, 2]


def test_generate_shard_bytes_are_unchanged():
    cfg = load_config(GenerateConfig, None, ["episodes=40", "shards=3", "seed=7", "task.d=4", "task.points=9"])
    data, rows = shard_bytes(data_config(cfg), 1)
    assert rows == 13
    assert hashlib.sha256(data).hexdigest() == SHARD_SHA256


METHOD_PROBS = {  # P(y=1) of 6 queries, one fixed episode (k=32, D=24), the shipped reasoner
    "tart": [0.313096, 0.792967, 0.818629, 0.363684, 0.815324, 0.131009],
    "lr_probe": [0.196224, 0.505851, 0.324835, 0.146206, 0.45685, 0.034401],
    "lr_full": [0.357791, 0.879607, 0.533318, 0.16122, 0.726884, 0.031701],
}


@pytest.mark.parametrize("method", sorted(METHOD_PROBS))
def test_method_results_are_unchanged(method):
    from pipeline.methods import run_method
    from pipeline.reasoner import load_reasoner

    rng = np.random.default_rng(3)
    Xc = rng.standard_normal((32, 24))
    yc = (Xc[:, 0] + 0.5 * rng.standard_normal(32) > 0).astype(int)
    Xq = rng.standard_normal((6, 24))
    p = run_method(method, Xc, yc, Xq, reasoner=load_reasoner() if method == "tart" else None)
    np.testing.assert_allclose(p, METHOD_PROBS[method], atol=2e-5)
