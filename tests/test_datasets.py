"""Dataset registry: real packaged data, local files, splits, context sets, and every bad input."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.datasets import (
    DatasetError,
    Examples,
    context_sets,
    known_datasets,
    load_dataset_spec,
    load_examples,
)

pytestmark = pytest.mark.timeout(120)


# ----------------------------------------------------------------------------- built-ins


def test_sms_spam_counts_labels_and_disjoint_splits():
    train = load_examples("sms_spam", "train")
    test = load_examples("sms_spam", "test")
    assert len(train) + len(test) == 4862
    assert train.class_counts()[1] + test.class_counts()[1] == 642  # spam = 1
    assert train.label_names == ("ham", "spam") and train.modality == "text"
    assert not set(train.ids) & set(test.ids)
    assert all(isinstance(t, str) and t.strip() for t in test.texts)
    # stratified seeded split: test share of each class ~ test_fraction
    assert abs(test.class_counts()[1] / 642 - 0.3) < 0.01
    # deterministic and stable ids
    again = load_examples("sms_spam", "test")
    assert again.ids == test.ids and (again.labels == test.labels).all()
    assert test.metadata["spec_digest"] == again.metadata["spec_digest"]
    assert test.metadata["sha256"]
    # the first row of the file is ham, the second spam
    allx = load_examples("sms_spam", "all")
    first = {i: y for i, y in zip(allx.ids, allx.labels)}
    assert first["sms_spam:0"] == 0 and first["sms_spam:1"] == 1


def test_test_size_gives_balanced_subsample_of_the_same_test_split():
    full = load_examples("sms_spam", "test")
    sub = load_examples("sms_spam", "test", test_size=100)
    assert len(sub) == 100 and sub.class_counts() == {0: 50, 1: 50}
    assert set(sub.ids) <= set(full.ids)
    assert sub.ids == load_examples("sms_spam", "test", test_size=100).ids
    other_seed = load_examples("sms_spam", "test", test_size=100, split_seed=1)
    assert other_seed.ids != sub.ids


def test_tweet_sentiment_positive_is_one():
    ex = load_examples("tweet_sentiment", "all")
    assert len(ex) == 23140
    assert ex.label_names == ("negative", "positive")
    allr = pd.read_csv(
        load_examples("tweet_sentiment", "test").metadata["path"], encoding="latin-1", usecols=["sentiment"]
    )
    n_pos = int((allr["sentiment"].str.strip().str.lower() == "positive").sum())
    assert ex.class_counts()[1] == n_pos > 0


def test_digits_pair_and_one_vs_rest():
    from sklearn.datasets import load_digits

    target = load_digits().target
    pair = load_examples("digits", "all")
    assert pair.modality == "image" and pair.images.dtype == np.uint8 and pair.images.shape[1:] == (8, 8)
    assert len(pair) == int(((target == 3) | (target == 8)).sum())
    assert pair.class_counts()[1] == int((target == 8).sum())
    assert pair.label_names == ("3", "8") and pair.images.max() == 255
    ovr = load_examples("digits", "all", positive_class=7)
    assert len(ovr) == len(target) and ovr.class_counts()[1] == int((target == 7).sum())
    assert ovr.label_names == ("other", "7")
    other_pair = load_examples("digits", "all", positive_class=1, negative_class=7)
    assert other_pair.class_counts() == {0: int((target == 7).sum()), 1: int((target == 1).sum())}


def test_spoken_digits_are_synthetic_noisy_speaker_disjoint_and_deterministic():
    from pipeline import speech

    tr = load_examples("spoken_digits", "train", train_size=64, test_size=20)
    te = load_examples("spoken_digits", "test", train_size=64, test_size=20)
    assert tr.modality == "audio" and tr.texts is None and tr.images is None
    assert tr.class_counts() == {0: 32, 1: 32} and te.class_counts() == {0: 10, 1: 10}
    assert tr.label_names == ("five", "nine") and tr.ids[0].startswith("spoken:")
    assert te.metadata["split_method"].startswith("predefined:speakers:")
    speaker = lambda i: i.split("/")[1]  # noqa: E731  ids: spoken:<word>/<voice>/r<rate>/p<pitch>
    assert not {speaker(i) for i in tr.ids} & {speaker(i) for i in te.ids}  # unseen voices at test time
    words = {i.split(":")[1].split("/")[0] for i in tr.ids}
    assert words == {"five", "nine"} and all(
        (w == "nine") == bool(y) for w, y in zip((i.split(":")[1].split("/")[0] for i in tr.ids), tr.labels))
    for a in tr.audios[:5]:
        assert a.dtype == np.float32 and a.ndim == 1 and 0.2 * speech.SAMPLING_RATE < len(a) < 2 * speech.SAMPLING_RATE
    again = load_examples("spoken_digits", "train", train_size=64, test_size=20)
    assert again.ids == tr.ids and all(np.array_equal(a, b) for a, b in zip(again.audios, tr.audios))
    clean = load_examples("spoken_digits_clean", "train", train_size=64, test_size=20)
    assert clean.ids == tr.ids
    # the noisy set is the clean clip plus noise at -5..5 dB SNR
    for a, c in zip(tr.audios[:20], clean.audios[:20]):
        snr = 10 * np.log10(np.mean(c.astype(np.float64) ** 2) / np.mean((a - c).astype(np.float64) ** 2))
        assert speech.NOISE_SNR_DB[0] - 0.5 < snr < speech.NOISE_SNR_DB[1] + 0.5


def test_spoken_digits_one_vs_rest_and_bad_class():
    ovr = load_examples("spoken_digits_clean", "all", positive_class="three")
    assert ovr.label_names == ("other", "three")
    assert ovr.class_counts()[1] * 9 == ovr.class_counts()[0]  # every word has the same renditions
    with pytest.raises(DatasetError, match="positive_class='ten'.*values: 0, 1, 2"):
        load_examples("spoken_digits", "train", positive_class="ten", negative_class="five")


def test_spoken_digits_without_the_synthesiser_is_one_clear_error(monkeypatch, tmp_path):
    import importlib.metadata

    real = importlib.metadata.version

    def version(name):  # the package is absent on this (simulated) node
        if name == "espeakng-loader":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setenv("TART_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(DatasetError, match=r"spoken_digits: .*pip install --no-deps espeakng-loader"):
        load_examples("spoken_digits", "train")
    assert not list(tmp_path.rglob("clips.npz"))  # nothing half-made


def test_mnist_pair_and_one_vs_rest():
    pair = load_examples("mnist", "all")
    assert len(pair) == 1000 and pair.class_counts() == {0: 500, 1: 500}
    assert pair.images.shape == (1000, 28, 28)
    ovr = load_examples("mnist", "train", positive_class=0)
    test = load_examples("mnist", "test", positive_class=0)
    assert len(ovr) + len(test) == 5000
    assert ovr.class_counts()[1] + test.class_counts()[1] == 500
    assert not set(ovr.ids) & set(test.ids)


def test_newsgroups_and_reuters_read_their_own_splits_and_any_pair():
    train, test = load_examples("newsgroups", "train"), load_examples("newsgroups", "test")
    assert (len(train), len(test)) == (1187, 790)  # sci.med + sci.space of 20NG's own train / test files
    assert train.label_names == ("medicine", "space") and train.class_counts() == {0: 594, 1: 593}
    assert all(t == t.lower() for t in train.texts[:50]) and not set(train.ids) & set(test.ids)
    autos = load_examples("newsgroups", "train", positive_class="rec.motorcycles", negative_class="rec.autos")
    assert autos.label_names == ("rec.autos", "rec.motorcycles")  # the default pair's words are dropped
    assert autos.class_counts() == {0: 594, 1: 598}
    r8 = load_examples("reuters_r8", "test")
    assert r8.label_names == ("earnings", "acquisition") and r8.class_counts() == {0: 1083, 1: 696}
    with pytest.raises(DatasetError, match="sci.spaec"):
        load_examples("newsgroups", "train", positive_class="sci.spaec", negative_class="sci.med")


# ----------------------------------------------------------------------------- local files


def _write(tmp_path, name, rows):
    df = pd.DataFrame(rows)
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path)
    elif name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")) + "\n")
    else:
        df.to_csv(path, index=False)
    return str(path)


TOPICS = ["sports", "world", "business", "science"]


def _news_rows(n=80):
    return {"body": [f"headline number {i} about {TOPICS[i % 4]}" for i in range(n)],
            "topic": [TOPICS[i % 4] for i in range(n)]}


@pytest.mark.parametrize("fname", ["news.csv", "news.parquet", "news.jsonl"])
def test_local_file_one_vs_rest_with_column_mapping(tmp_path, fname):
    path = _write(tmp_path, fname, _news_rows())
    train = load_examples(path, "train", text_field="body", label_field="topic", positive_class="science")
    test = load_examples(path, "test", text_field="body", label_field="topic", positive_class="science")
    assert len(train) + len(test) == 80
    assert train.class_counts()[1] + test.class_counts()[1] == 20
    assert train.label_names == ("other", "science")
    for ex in (train, test):
        for t, y in zip(ex.texts, ex.labels):
            assert y == int(t.endswith("science"))
    assert not set(train.ids) & set(test.ids)


def test_local_file_pair_label_names_and_defined_test_file(tmp_path):
    rows = _news_rows()
    path = _write(tmp_path, "train.csv", rows)
    test_path = _write(tmp_path, "test.csv", {"body": ["sport a", "sport b", "world a"],
                                              "topic": ["sports", "sports", "world"]})
    opts = dict(text_field="body", label_field="topic", positive_class="sports", negative_class="world",
                label_names=("world", "sports"), test_split=test_path)
    train = load_examples(path, "train", **opts)
    test = load_examples(path, "test", **opts)
    assert len(train) == 40 and train.class_counts() == {0: 20, 1: 20}  # the other topics are dropped
    assert test.texts == ["sport a", "sport b", "world a"] and test.labels.tolist() == [1, 1, 0]
    assert test.metadata["split_method"].startswith("predefined")
    assert train.label_names == ("world", "sports")


def test_binary_int_labels_need_no_positive_class(tmp_path):
    path = _write(tmp_path, "b.csv", {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]})
    ex = load_examples(path, "all")
    assert ex.class_counts() == {0: 10, 1: 10} and ex.label_names == ("negative", "positive")


def test_local_audio_file_reads_variable_length_clips_from_audio_field(tmp_path):
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (1600, 800, 2400, 1200) * 5]
    path = str(tmp_path / "clips.parquet")
    pd.DataFrame({"wave": [c.tolist() for c in clips], "label": [i % 2 for i in range(20)]}).to_parquet(path)
    ex = load_examples(path, "all", modality="audio", audio_field="wave")
    assert ex.modality == "audio" and ex.texts is None and ex.images is None and len(ex) == 20
    by_id = dict(zip(ex.ids, ex.audios))
    assert all(by_id[f"clips.parquet:{i}"].dtype == np.float32 and np.array_equal(by_id[f"clips.parquet:{i}"], c)
               for i, c in enumerate(clips))
    with pytest.raises(DatasetError, match=r"audio column 'audio' not found.*\(set audio_field=\.\.\.\)"):
        load_examples(path, "all", modality="audio")
    # a field added later enters the spec digest only when set: every existing digest is kept
    assert load_dataset_spec(path, modality="audio").digest() != load_dataset_spec(path, modality="audio",
                                                                                   audio_field="wave").digest()


def test_local_folder_goes_through_hf_datasets_with_class_names(tmp_path):
    import datasets as hfd

    feats = hfd.Features({"sentence": hfd.Value("string"), "label": hfd.ClassLabel(names=["neg", "pos"])})
    d = tmp_path / "ds"
    d.mkdir()
    hfd.Dataset.from_dict({"sentence": ["good", "bad", "great", "awful"], "label": [1, 0, 1, 0]},
                          features=feats).to_parquet(str(d / "train.parquet"))
    hfd.Dataset.from_dict({"sentence": ["fine", "meh"], "label": [1, 0]}, features=feats).to_parquet(
        str(d / "test.parquet"))
    test = load_examples(str(d), "test", text_field="sentence")
    assert test.texts == ["fine", "meh"] and test.labels.tolist() == [1, 0]
    assert test.label_names == ("neg", "pos") and test.metadata["split_method"] == "predefined:test"
    one_vs_rest_by_name = load_examples(str(d), "train", text_field="sentence", positive_class="neg")
    assert one_vs_rest_by_name.labels.tolist() == [0, 1, 0, 1]


# ----------------------------------------------------------------------------- bad input


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DatasetError) as e:
        load_examples("no_such_dataset")
    for name in known_datasets():
        assert name in str(e.value)


def test_unknown_option_is_named():
    with pytest.raises(DatasetError, match="text_feild"):
        load_dataset_spec("sms_spam", text_feild="x")


def test_missing_column_names_it_and_lists_available(tmp_path):
    path = _write(tmp_path, "m.csv", _news_rows(8))
    with pytest.raises(DatasetError) as e:
        load_examples(path, text_field="content", label_field="topic", positive_class="world")
    msg = str(e.value)
    assert "'content'" in msg and "body" in msg and "topic" in msg
    with pytest.raises(DatasetError, match="label column 'label' not found.*body"):
        load_examples(path, text_field="body")


def test_non_binary_labels_without_positive_class(tmp_path):
    path = _write(tmp_path, "nb.csv", _news_rows(8))
    with pytest.raises(DatasetError) as e:
        load_examples(path, text_field="body", label_field="topic")
    assert "not binary" in str(e.value) and "positive_class" in str(e.value) and "science" in str(e.value)
    with pytest.raises(DatasetError, match="positive_class='sport' matches no label"):
        load_examples(path, text_field="body", label_field="topic", positive_class="sport")


def test_empty_and_non_string_texts_name_the_row(tmp_path):
    path = tmp_path / "e.jsonl"
    rows = [{"text": "fine", "label": 0}, {"text": "   ", "label": 1}, {"text": "ok", "label": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DatasetError, match=r"row 1 \(id e.jsonl:1\): text is empty"):
        load_examples(str(path), "all")
    rows[1]["text"] = 42
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DatasetError, match=r"row 1 .*int 42, not a string"):
        load_examples(str(path), "all")


def test_test_size_larger_than_available():
    with pytest.raises(DatasetError, match="test_size=1000 needs 500 examples per class.*193 of class 1"):
        load_examples("sms_spam", "test", test_size=1000)


def test_bad_spec_values():
    with pytest.raises(DatasetError, match="test_fraction"):
        load_dataset_spec("sms_spam", test_fraction=1.5)
    with pytest.raises(DatasetError, match="test_size=7"):
        load_dataset_spec("sms_spam", test_size=7)
    with pytest.raises(DatasetError, match="label_names"):
        load_dataset_spec("sms_spam", label_names=("a", "a"))
    with pytest.raises(DatasetError, match="split 'dev'"):
        load_examples("sms_spam", "dev")


def test_hf_id_offline_fails_clearly():
    with pytest.raises(DatasetError, match="cannot load HF dataset 'nobody/nothing'"):
        load_examples("nobody/nothing")


# ----------------------------------------------------------------------------- context sets


def test_context_sets_nested_balanced_and_seeded():
    ex = load_examples("sms_spam", "all")
    test = load_examples("sms_spam", "test")
    test_ids = set(test.ids)
    pool = [i for i, x in enumerate(ex.ids) if x not in test_ids]
    excl = [i for i, x in enumerate(ex.ids) if x in test_ids]
    ks = [18, 32, 48, 64, 128, 256]
    sets = context_sets(ex.labels, ks, seed=0, pool_ids=pool, exclude=excl)
    prev = np.array([], dtype=np.int64)
    for k in ks:
        s = sets[k]
        assert len(s) == k and len(set(s.tolist())) == k
        assert (ex.labels[s] == 1).sum() == k // 2
        assert (s[: len(prev)] == prev).all()  # nested: the smaller set is a prefix
        assert set(s.tolist()) <= set(pool) and not set(s.tolist()) & set(excl)
        prev = s
    again = context_sets(ex.labels, ks, seed=0, pool_ids=pool)
    assert all((again[k] == sets[k]).all() for k in ks)
    other = context_sets(ex.labels, ks, seed=1, pool_ids=pool)
    assert not (other[18] == sets[18]).all()
    # the order is shuffled, not sorted by class
    assert (ex.labels[sets[32]][:16] != np.array([0] * 16)).any()


def test_context_sets_errors():
    y = np.array([0] * 10 + [1] * 4)
    with pytest.raises(DatasetError, match=r"k=10 needs 5 context examples per class.*4 of class 1.*largest possible k=8"):
        context_sets(y, [4, 10], seed=0)
    with pytest.raises(DatasetError, match="k=5"):
        context_sets(y, [5], seed=0)
    with pytest.raises(DatasetError, match="overlaps"):
        context_sets(y, [2], seed=0, pool_ids=[0, 1, 10, 11], exclude=[11])
    with pytest.raises(DatasetError, match=r"class indices 0\.\.1"):
        context_sets(np.array([0, 1, 2]), [2], seed=0, n_classes=2)
    with pytest.raises(DatasetError, match="multiple of the 3 classes"):
        context_sets(np.array([0, 1, 2] * 5), [4], seed=0)


def test_multi_class_context_sets_are_balanced_nested_and_binary_ones_unchanged():
    y = np.repeat(np.arange(4), 30)
    sets = context_sets(y, [16, 32, 64], seed=3)
    for k in (16, 32, 64):
        assert np.bincount(y[sets[k]], minlength=4).tolist() == [k // 4] * 4
    assert (sets[32][:16] == sets[16]).all() and (sets[64][:32] == sets[32]).all()
    binary = np.array([0, 1] * 40)
    assert all((context_sets(binary, [18, 32], seed=1)[k] == context_sets(binary, [18, 32], seed=1, n_classes=2)[k]).all()
               for k in (18, 32))


def test_newsgroups_multi_class_task_and_its_errors():
    four = ("comp.graphics", "rec.autos", "sci.space", "talk.politics.guns")
    test = load_examples("newsgroups", "test", classes=four, test_size=200)
    assert test.label_names == four and test.n_classes == 4 and test.class_counts() == {c: 50 for c in range(4)}
    pool = load_examples("newsgroups", "train", classes=four)
    assert set(np.unique(pool.labels)) == {0, 1, 2, 3} and not set(pool.ids) & set(test.ids)
    with pytest.raises(DatasetError, match="multiple of the 4 classes"):
        load_examples("newsgroups", "test", classes=four, test_size=202)
    with pytest.raises(DatasetError, match="cannot be combined"):
        load_examples("newsgroups", "test", classes=four, positive_class="sci.space")
    with pytest.raises(DatasetError, match="'sci.spaec' matches no label"):
        load_examples("newsgroups", "test", classes=("sci.med", "sci.spaec"))


@settings(max_examples=40, deadline=None)
@given(
    n0=st.integers(1, 30), n1=st.integers(1, 30), seed=st.integers(0, 2**31 - 1),
    ks=st.lists(st.integers(1, 15), min_size=1, max_size=4),
)
def test_context_sets_property(n0, n1, seed, ks):
    y = np.array([0] * n0 + [1] * n1)
    np.random.default_rng(seed).shuffle(y)
    ks = [2 * k for k in ks]
    if max(ks) // 2 > min(n0, n1):
        with pytest.raises(DatasetError):
            context_sets(y, ks, seed)
        return
    sets = context_sets(y, ks, seed)
    order = sorted(set(ks))
    for a, b in zip(order, order[1:]):
        assert (sets[b][:a] == sets[a]).all()
    for k in ks:
        assert len(set(sets[k].tolist())) == k and (y[sets[k]] == 1).sum() == k // 2


def test_examples_subset_keeps_alignment():
    ex = load_examples("digits", "test")
    sub = ex.subset([2, 0])
    assert isinstance(sub, Examples) and sub.ids == [ex.ids[2], ex.ids[0]]
    assert (sub.images[0] == ex.images[2]).all() and sub.labels.tolist() == [ex.labels[2], ex.labels[0]]


def test_a_source_is_read_once_per_process_and_again_when_its_file_changes(tmp_path):
    """A grid loads a dataset's splits several times (validation, each embedding group, ICL): the
    source is parsed once (`load._RAW_MEMO`), and a file that changed on disk is read again."""
    import os

    from pipeline.datasets import load as load_mod

    path = _write(tmp_path, "news.csv", _news_rows())
    opts = dict(text_field="body", label_field="topic", positive_class="science")
    first = load_examples(path, "train", **opts)
    memo = dict(load_mod._RAW_MEMO)
    again = load_examples(path, "test", **opts), load_examples(path, "train", train_size=10, **opts)
    assert dict(load_mod._RAW_MEMO).keys() == memo.keys()  # no new read: other splits and sizes share it
    assert again[1].ids == load_examples(path, "train", train_size=10, **opts).ids
    rows = _news_rows(120)
    _write(tmp_path, "news.csv", rows)
    os.utime(path, ns=(1, 10**18))  # a changed file (its mtime), even within the clock's resolution
    bigger = load_examples(path, "train", **opts)
    assert len(bigger) + len(load_examples(path, "test", **opts)) == 120 > len(first)
