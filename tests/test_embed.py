"""Stage 3 `tart embed`: Ray Data actor pool vs in-process, cache semantics, prompt spans, bad inputs.

Real local Ray (tests/conftest.py `ray_local`, 2 CPUs, actors at 0.5 CPU) and real offline
backbones: minilm-l6 for the stream path, smollm2-135m (loaded once per module) for the
vanilla/LOO prompt protocols. Tens of examples only.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline import backbones, storage
from pipeline import embed as E
from pipeline.backbones import BackboneError, load_backbone
from pipeline.config import ConfigError
from pipeline.datasets import DatasetError, load_examples
from pipeline.prompts import PromptTooLongError, build_prompt, tokenize_prompt

SMS40 = {"test_size": 40}


def cfg(tmp, **kw) -> E.EmbedConfig:
    base = dict(dataset="sms_spam", dataset_options=dict(SMS40), splits=["test"], backbone="minilm-l6",
                cache_uri=str(tmp), executor="local", batch_size=16, cpus_per_actor=0.5, torch_threads=1,
                dtype="float32")  # compared with float32 in-process references (auto may mean bf16 here)
    base.update(kw)
    return E.EmbedConfig(**base)


def quiet(_m):
    pass


@pytest.fixture(scope="module")
def minilm():
    return load_backbone("minilm-l6")


@pytest.fixture(scope="module")
def sms40():
    return load_examples("sms_spam", "test", **SMS40)


# ----------------------------------------------------------------------------- Ray Data stream path


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ray_actor_pool_matches_in_process_survives_a_crash_and_is_cached(ray_local, tmp_path, minilm, sms40):
    # One Ray run covers both: the actor process is killed on its first batch (fault injection),
    # Ray Data restarts it (max_restarts) and retries the batch (max_task_retries); the result must
    # still be complete and equal to the in-process embeddings. (Each actor start costs a worker
    # process + model load, ~30 s on a loaded 2-core box, hence one run, not two.)
    marker = tmp_path / "crashed"
    c = cfg(tmp_path / "cache", executor="ray", actors=1, fail_once=str(marker), max_restarts=2, max_task_retries=2)
    t = E.embed(c, log=quiet)
    assert marker.exists()  # the actor process really died once
    assert t.computed == 1 and t.forward_passes >= 40 // 16
    assert t.ids == sms40.ids  # keyed and ordered by the dataset's ids, whatever order Ray returned
    np.testing.assert_array_equal(t.labels, sms40.labels)
    ref = minilm.embed_texts(sms40.texts, batch_size=16)
    assert t.X.dtype == np.float32 and t.X.shape == ref.shape
    np.testing.assert_allclose(t.X, ref, atol=2e-5, rtol=1e-4)

    entry = Path(t.entries[0]["uri"])
    man = json.loads((entry / E.MANIFEST).read_text())
    assert man["complete"] is True and man["rows"] == 40 and man["dim"] == 384
    for f in ("revision", "pooling", "layer", "dataset_digest", "created", "forward_passes"):
        assert f in man
    assert man["revision"] == minilm.revision and man["executor"] == "ray"
    assert entry.name == E.key_hash(man["key"])  # directory name = content hash of the key
    assert sorted(p.name for p in entry.iterdir()) == ["_manifest.json", man["files"][0]["name"]]
    assert re.fullmatch(r"part-00000-[0-9a-f]{6}-\d+-[0-9a-f]{6}\.parquet", man["files"][0]["name"])

    # second request for the same key: no actor, no forward pass, same vectors
    again = E.embed(cfg(tmp_path / "cache", executor="ray", actors=1), log=quiet)
    assert again.computed == 0 and again.forward_passes == 0
    np.testing.assert_array_equal(again.X, t.X)
    assert again.ids == t.ids


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_splits_share_one_actor_pool_and_equal_in_process(ray_local, tmp_path, minilm):
    """train and test asked for together run through ONE Ray Data pipeline (one actor start and
    model load for both), and each split's cache entry holds exactly its own rows and vectors."""
    import ray

    def embed_actors() -> int:  # every actor ever started in this cluster, dead ones included (from the GCS)
        return sum(1 for a in ray._private.state.actors().values() if "BackboneEmbedder" in a["ActorClassName"])

    opts = {"train_size": 24, "test_size": 20}
    before = embed_actors()
    t = E.embed(cfg(tmp_path / "cache", executor="ray", actors=1, splits=["train", "test"], dataset_options=opts),
                log=quiet)
    assert embed_actors() - before == 1
    assert t.computed == 2 and [e["split"] for e in t.entries] == ["train", "test"]
    for split in ("train", "test"):
        ex = load_examples("sms_spam", split, **opts)
        part = t.select(split)
        assert part.ids == ex.ids
        np.testing.assert_allclose(part.X, minilm.embed_texts(ex.texts, batch_size=16), atol=2e-5, rtol=1e-4)
        man = json.loads((Path(part.entries[0]["uri"]) / E.MANIFEST).read_text())
        assert man["rows"] == len(ex.ids)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_audio_clips_through_the_actor_pool_equal_in_process(ray_local, tmp_path):
    """Variable-length waveforms travel through Ray Data as list<float32> rows; each vector equals
    Whisper's in-process embedding of the same clip."""
    opts = {"train_size": 16, "test_size": 12}
    t = E.embed(cfg(tmp_path / "cache", executor="ray", actors=1, splits=["train", "test"], dataset="spoken_digits",
                    dataset_options=opts, backbone="whisper-tiny-en", batch_size=8), log=quiet)
    whisper = load_backbone("whisper-tiny-en")
    for split in ("train", "test"):
        ex = load_examples("spoken_digits", split, **opts)
        part = t.select(split)
        assert part.ids == ex.ids and part.X.shape == (len(ex), 384)
        np.testing.assert_allclose(part.X, whisper.embed_audio(ex.audios), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- cache semantics (in-process)


def test_partial_or_foreign_cache_is_recomputed_not_read(tmp_path):
    c = cfg(tmp_path, dataset_options={"test_size": 16})
    first = E.embed(c, log=quiet)
    entry = Path(first.entries[0]["uri"])
    man_path = entry / E.MANIFEST

    # files without a manifest: recomputed
    man_path.unlink()
    t = E.embed(c, log=quiet)
    assert t.computed == 1 and t.forward_passes > 0
    np.testing.assert_allclose(t.X, first.X, atol=1e-6)

    # manifest says incomplete: recomputed (and the stale part is no longer named)
    man = json.loads(man_path.read_text())
    man["complete"] = False
    man_path.write_text(json.dumps(man))
    stale = man["files"][0]["name"]
    (entry / stale).write_bytes(b"garbage")
    t = E.embed(c, log=quiet)
    assert t.computed == 1
    np.testing.assert_allclose(t.X, first.X, atol=1e-6)
    assert stale not in [f["name"] for f in json.loads(man_path.read_text())["files"]]

    # a part file truncated under a complete manifest: recomputed
    p = entry / json.loads(man_path.read_text())["files"][0]["name"]
    p.write_bytes(p.read_bytes()[:100])
    assert E.embed(c, log=quiet).computed == 1

    # complete now: nothing computed
    assert E.embed(c, log=quiet).computed == 0


def test_other_pooling_or_revision_is_not_reused(tmp_path, monkeypatch):
    base = E.embed(cfg(tmp_path), log=quiet)
    last = E.embed(cfg(tmp_path, pooling="last"), log=quiet)
    assert last.computed == 1 and last.entries[0]["key_hash"] != base.entries[0]["key_hash"]
    assert not np.allclose(last.X, base.X)

    real = E.backbone_info
    monkeypatch.setattr(backbones, "backbone_info", lambda name: (real(name)[0], "other-revision"))
    monkeypatch.setattr(E.BackboneEmbedder, "__init__", _init_without_revision_check)
    other = E.embed(cfg(tmp_path), log=quiet)
    assert other.computed == 1 and other.entries[0]["key_hash"] != base.entries[0]["key_hash"]
    man = json.loads((Path(other.entries[0]["uri"]) / E.MANIFEST).read_text())
    assert man["revision"] == "other-revision"

    # a manifest whose key differs from the requested one is never vouched for
    entry = Path(base.entries[0]["uri"])
    m = json.loads((entry / E.MANIFEST).read_text())
    m["key"]["pooling"] = "last"
    (entry / E.MANIFEST).write_text(json.dumps(m))
    monkeypatch.setattr(backbones, "backbone_info", real)
    assert E.embed(cfg(tmp_path), log=quiet).computed == 1


_orig_init = E.BackboneEmbedder.__init__


def _init_without_revision_check(self, *a, **kw):
    kw["expected_revision"] = None
    _orig_init(self, *a, **kw)


def test_get_embeddings_library_and_limit(tmp_path, caplog):
    caplog.set_level("INFO", logger="pipeline.embed")
    t = E.get_embeddings("sms_spam", "test", "minilm-l6", dataset_options=SMS40, cache_uri=str(tmp_path),
                         executor="local", limit=12, batch_size=8)
    assert len(t.ids) == 12 and t.X.shape == (12, 384) and t.X.dtype == np.float32
    assert "embed: 1 entr(ies), 1 computed" in caplog.text  # library progress goes through logging
    assert set(np.unique(t.labels)) <= {0, 1}
    assert E.get_embeddings("sms_spam", "test", "minilm-l6", dataset_options=SMS40, cache_uri=str(tmp_path),
                            executor="local", limit=12, batch_size=8).computed == 0


# ----------------------------------------------------------------------------- bad input: fails before any work


def _no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("model work started before input validation")

    monkeypatch.setattr(E.BackboneEmbedder, "__init__", boom)
    monkeypatch.setattr(E.stream, "stream_ray", boom)


def test_bad_inputs_fail_before_any_work(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    with pytest.raises(BackboneError, match="unknown backbone 'nope'"):
        E.embed(cfg(tmp_path, backbone="nope"), log=quiet)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        E.embed(cfg(tmp_path, dataset="nope"), log=quiet)
    f = tmp_path / "d.csv"
    f.write_text("body,label\nhello there,1\ngood bye,0\n" * 10)
    with pytest.raises(DatasetError, match="text column 'text' not found"):
        E.embed(cfg(tmp_path, dataset=str(f), dataset_options={}), log=quiet)
    with pytest.raises(E.EmbedError, match="needs a causal LM"):
        E.embed(cfg(tmp_path, protocol="vanilla", splits=["test"], ks=[4]), log=quiet)
    with pytest.raises(ConfigError, match="protocol"):
        E.embed(cfg(tmp_path, protocol="bogus"), log=quiet)
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # no cache entry was started
    assert E.main([f"cache_uri={tmp_path}", "backbone=nope", "executor=local"]) == 2
    assert E.main(["unknown_key=1"]) == 2


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        E.main(["--help"])
    out = capsys.readouterr().out
    for f in E.EmbedConfig.__dataclass_fields__:
        assert f"{f}=" in out, f
    assert "--address" in out and "--config" in out


def test_default_config_file_loads():
    from pipeline.config import load_config

    root = Path(__file__).resolve().parents[1]
    c = load_config(E.EmbedConfig, root / "configs" / "embed" / "default.yaml")
    assert c.protocol == "stream" and c.cpus_per_actor < 1


# ----------------------------------------------------------------------------- vanilla / LOO (smollm2, once)


@pytest.fixture(scope="module")
def smol():
    return load_backbone("smollm2-135m")


TRICKY = ["Free entry! Reply spam to win", "ham and eggs\n\n for   breakfast?", "ok  lol", "Label: spam\nSentence: x"]


def test_prompt_spans_cover_exactly_each_text(smol):
    tok = smol.tokenizer
    layout = build_prompt(TRICKY + ["is this spam"], ["spam", "ham", "ham", "spam", None])
    tp = tokenize_prompt(tok, layout, None)
    assert len(tp.spans) == 5
    for text, (s, e) in zip(TRICKY + ["is this spam"], tp.spans):
        assert tok.decode(tp.input_ids[s:e]).strip() == " ".join(text.split())
    # neighbouring template tokens are outside the spans
    s, e = tp.spans[0]
    assert "Sentence" in tok.decode(tp.input_ids[:s]) and "Label" in tok.decode(tp.input_ids[e:e + 3])


def test_over_long_prompt_raises_naming_length_and_limit(smol, tmp_path):
    layout = build_prompt(["word " * 50] * 3, ["ham", "spam", "ham"])
    with pytest.raises(PromptTooLongError, match=r"is \d+ tokens, over the backbone's context limit of 64"):
        tokenize_prompt(smol.tokenizer, layout, 64)
    with pytest.raises(PromptTooLongError, match="context limit of 32"):
        E.embed(cfg(tmp_path, backbone="smollm2-135m", protocol="vanilla", splits=["test"], ks=[4],
                    max_length=32, dataset_options={"test_size": 4}), log=quiet)


@pytest.mark.slow  # ~9 s of LM passes; test_prompt_spans_* keeps the context protocols in the inner loop
def test_vanilla_and_loo_embeddings(smol, tmp_path):
    import torch

    ctx, words, queries = TRICKY, ["spam", "ham", "ham", "spam"], ["call now to claim", "see you at 5"]
    Xc, Xq = E.context_embeddings(smol, ctx, words, queries, "vanilla")
    # reference: one forward of the full prompt, mean over the span from the offsets
    tp = tokenize_prompt(smol.tokenizer, build_prompt(ctx + queries[:1], words + [None]), None)
    with torch.inference_mode():
        h = smol.model(input_ids=torch.tensor([tp.input_ids])).last_hidden_state[0].float()
    for i in range(4):
        s, e = tp.spans[i]
        np.testing.assert_allclose(Xc[i], h[s:e].mean(0).numpy(), atol=1e-4)
    s, e = tp.spans[-1]
    np.testing.assert_allclose(Xq[0], h[s:e].mean(0).numpy(), atol=1e-3)  # KV-cache path vs one pass
    _, Xq_nocache = E.context_embeddings(smol, ctx, words, queries, "vanilla", use_kv_cache=False)
    np.testing.assert_allclose(Xq, Xq_nocache, atol=1e-3)
    # batched queries (right-padded, one pass) = one query per pass
    many = queries + ["a much longer query that pads the others in its batch, with words", "ok"]
    _, Xb = E.context_embeddings(smol, ctx, words, many, "vanilla")
    _, X1 = E.context_embeddings(smol, ctx, words, many, "vanilla", query_batch=1)
    np.testing.assert_allclose(Xb, X1, atol=1e-4)
    np.testing.assert_allclose(Xb[:2], Xq, atol=1e-4)

    Lc, Lq = E.context_embeddings(smol, ctx, words, queries, "loo")
    np.testing.assert_allclose(Lq, Xq, atol=1e-5)  # queries: same as vanilla
    np.testing.assert_allclose(Lc[3], Xc[3], atol=1e-4)  # the last example is already last in vanilla
    assert not np.allclose(Lc[0], Xc[0], atol=1e-3)  # the first one now sees the other k-1

    # through the cache: k=4 context rows + 6 queries; second call computes nothing
    c = cfg(tmp_path, backbone="smollm2-135m", protocol="loo", splits=["train", "test"], ks=[4], seeds=[0],
            dataset_options={"test_size": 6})
    t = E.embed(c, log=quiet)
    assert t.computed == 2 and t.forward_passes == 1 + 4 + 1  # prompt, 4 loo prompts, the 6 queries in one batch
    assert len(t.select(split="train")) == 4 and len(t.select(split="test", k=4, seed=0)) == 6
    t2 = E.embed(c, log=quiet)
    assert t2.computed == 0 and t2.forward_passes == 0
    np.testing.assert_array_equal(t2.X, t.X)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_context_protocol_on_ray_runs_a_task_per_seed_and_equals_in_process(ray_local, tmp_path):
    # vanilla/loo are per (k, seed): on Ray each seed's prompts are one task (a GPU each with
    # gpus_per_actor), run in parallel; the vectors must be the ones the driver would compute.
    over = dict(backbone="smollm2-135m", protocol="vanilla", splits=["train", "test"], ks=[4, 6], seeds=[0, 1],
                dataset_options={"test_size": 4})
    local = E.embed(cfg(tmp_path / "local", **over), log=quiet)
    logs: list[str] = []
    remote = E.embed(cfg(tmp_path / "ray", executor="ray", **over), log=logs.append)
    assert any("for 4 (k, seed) (ray, 2 task(s))" in m for m in logs), logs
    assert remote.computed == local.computed == 8
    assert remote.forward_passes == local.forward_passes == 4 * (1 + 1)  # per (k, seed): the prompt + 1 query batch
    for seed in (0, 1):
        for k in (4, 6):
            for split in ("train", "test"):
                r, lo = remote.select(split=split, k=k, seed=seed), local.select(split=split, k=k, seed=seed)
                assert r.ids == lo.ids
                np.testing.assert_allclose(r.X, lo.X, atol=1e-5)
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "ray").rglob(E.MANIFEST)]
    assert len(manifests) == 8 and {m["executor"] for m in manifests} == {"ray"}
    again = E.embed(cfg(tmp_path / "ray", executor="ray", **over), log=quiet)
    assert again.computed == 0 and again.forward_passes == 0


def test_concurrent_writers_of_one_entry_both_succeed_and_leave_one_verified_entry(tmp_path):
    """Two writers race on the same entry many times (the two-drivers-on-one-cache fault, in
    threads): both writes return, and the entry is one complete manifest whose parts are intact
    and hold exactly one writer's vectors. Leftovers of a dead attempt are removed; those of a
    live one are not."""
    import threading

    cache = E.open_cache(E.EmbedConfig(cache_uri=str(tmp_path / "c")))
    ids = [f"id{i}" for i in range(50)]
    labels = np.arange(50) % 2
    Xs = [np.random.default_rng(w).standard_normal((50, 8)).astype(np.float32) for w in range(2)]
    key = {"backbone": "b", "revision": "r", "pooling": "mean", "layer": -1, "dataset_digest": "d",
           "split": "train", "protocol": "stream"}
    for round_ in range(40):
        h = f"{round_:020d}"
        start, errors = threading.Barrier(2), []

        def write(w):
            try:
                start.wait()
                cache.write(h, key, ids, labels, Xs[w], 7, {"writer": w})  # 8 part files each
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, f"round {round_}: {errors!r}"
        man = cache.complete(h, key)
        assert man is not None, f"round {round_}: no complete entry"
        got_ids, got_labels, X = cache.read(h, man)
        assert got_ids == ids and (got_labels == labels).all()
        np.testing.assert_array_equal(X, Xs[man["writer"]])
        for rec in man["files"]:
            data = (tmp_path / "c" / h / rec["name"]).read_bytes()
            assert storage.sha256_bytes(data) == rec["sha256"]
        names = {p.name for p in (tmp_path / "c" / h).iterdir()}
        assert not [n for n in names if n.startswith("_tmp-")], names
        # besides the committed parts, at most the other attempt's (when both committed, the last
        # wins; the first one's parts stay until provably stale: a reader may hold its manifest)
        others = {n.split("-", 2)[2] for n in names - {E.MANIFEST, *(rec["name"] for rec in man["files"])}}
        assert len(others) <= 1, names

    # leftovers: parts of a dead process of this host and stale ones go, those of a live attempt stay
    h = "l" * 20
    before = {rec["name"] for rec in cache.write(h, key, ids, labels, Xs[1], 7, {"writer": 1})["files"]}
    entry = tmp_path / "c" / h
    host = E.cache.host_tag()
    dead, live, stale = (f"part-00000-{host}-{_exited_pid()}-abcdef.parquet",
                         f"part-00000-{host}-{os.getppid()}-abcdef.parquet", f"_tmp-0123-part-00000-{host}-1-beef.parquet")
    for n in (dead, live, stale):
        (entry / n).write_bytes(b"x")
    old = time.time() - E.STALE_ATTEMPT_S - 60
    os.utime(entry / stale, (old, old))
    cache.write(h, key, ids, labels, Xs[0], 7, {"writer": 0}, overwrite=True)
    names = {p.name for p in entry.iterdir()}
    assert dead not in names and stale not in names and live in names
    man = cache.complete(h, key)
    # the replaced entry's parts stay (young, their writer alive: a reader may be reading them)
    assert man["writer"] == 0 and names == {E.MANIFEST, live, *before, *(rec["name"] for rec in man["files"])}


def _exited_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid
