"""ICL baseline with the real offline causal backbone (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.icl import ICLError, ICLScorer, context_prompt, query_prompt  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    import torch

    torch.set_num_threads(2)
    from pipeline.backbones import load_causal_lm

    return load_causal_lm("smollm2-135m")


def test_prompt_template():
    from pipeline.prompts import build_prompt

    p = context_prompt(["a b", "c"], [1, 0], ("ham", "spam")) + query_prompt("q")
    assert p == "Sentence: a b\nLabel: spam\nSentence: c\nLabel: ham\nSentence: q\nLabel:"
    # one template (pipeline.prompts): icl puts texts in as they are, the embedding protocols normalise them
    assert context_prompt(["a  b\n c"], [0], ("ham", "spam")) == "Sentence: a  b\n c\nLabel: ham\n"
    assert build_prompt(["a  b\n c"], ["ham"]).text == "Sentence: a b c\nLabel: ham\n"


def test_prompt_tokens_split_cleanly(lm, sms):
    """Context tokens + query tokens == tokens of the whole prompt string (what the cache relies on)."""
    tok, _ = lm
    pool, test, idx = sms
    ctx = context_prompt([pool.texts[i] for i in idx[4]], pool.labels[idx[4]], pool.label_names)
    for t in test.texts[:5]:
        whole = tok(ctx + query_prompt(t))["input_ids"]
        parts = tok(ctx)["input_ids"] + tok(query_prompt(t), add_special_tokens=False)["input_ids"]
        assert whole == parts


@pytest.mark.slow
def test_kv_cache_scores_equal_full_prompt_scores(lm, sms):
    tok, model = lm
    pool, test, idx = sms
    ct, cy = [pool.texts[i] for i in idx[4]], pool.labels[idx[4]]
    q = test.texts[:3]
    # single-token label words ("ham"/"spam") and a multi-token word pair
    for words in (pool.label_names, ("not spam", "spam")):
        sc = ICLScorer(tok, model, label_words=words, batch_size=2)  # 2 forces a ragged last batch
        cached = sc.label_scores(ct, cy, q, use_cache=True)
        naive = sc.label_scores(ct, cy, q, use_cache=False)
        assert np.isfinite(cached).all() and (cached < 0).all()
        np.testing.assert_allclose(cached, naive, atol=2e-3, rtol=0)
    assert sc.label_token_counts[0] >= 2  # " not spam" really is several tokens


@pytest.mark.slow
def test_lm_head_on_scored_positions_only_equals_full_logits(lm, sms):
    """The fast path (the decoder stack alone, the LM head applied to the scored positions only)
    scores exactly as the full model's logits do."""
    tok, model = lm
    pool, test, idx = sms
    ct, cy = [pool.texts[i] for i in idx[4]], pool.labels[idx[4]]
    for words in (pool.label_names, ("not spam", "spam")):
        sc = ICLScorer(tok, model, label_words=words, batch_size=3)
        assert sc._base is not None and sc._base is not model
        fast = sc.label_scores(ct, cy, test.texts[:5])
        sc._base = None
        full = sc.label_scores(ct, cy, test.texts[:5])
        np.testing.assert_allclose(fast, full, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_packed_queries_score_as_padded_rows_on_cache_copies(lm, sms):
    """A batch packed into one row on the shared cache (block mask) scores what padded rows on
    per-query copies of the cache score, for one- and two-token label words, and the cache is
    cropped back after every batch (later batches see only the context)."""
    tok, model = lm
    pool, test, idx = sms
    ct, cy = [pool.texts[i] for i in idx[4]], pool.labels[idx[4]]
    for words in (pool.label_names, ("not spam", "spam")):
        packed = ICLScorer(tok, model, label_words=words, batch_size=3)
        a = packed.label_scores(ct, cy, test.texts[:7])
        assert packed._packing_ok is True  # SmolLM2 (Llama) honours the 4-D block mask
        b = ICLScorer(tok, model, label_words=words, batch_size=3, packing=False).label_scores(ct, cy, test.texts[:7])
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
        alone = ICLScorer(tok, model, label_words=words, batch_size=1, packing=False).label_scores(ct, cy, test.texts[:7])
        np.testing.assert_allclose(a, alone, atol=1e-4, rtol=0)


def test_prompt_over_limit_errors_before_forward(lm, sms):
    tok, model = lm
    pool, test, _ = sms
    sc = ICLScorer(tok, model, label_words=pool.label_names)
    long_texts = [" ".join(["word"] * 3000)] * 4  # ~12k tokens > 8192
    with pytest.raises(ICLError, match=r"ICL prompt is \d+ tokens .* limit is 8192"):
        sc.predict_proba(long_texts, [0, 1, 0, 1], test.texts[:1])
    assert sc.forward_count == 0
    tight = ICLScorer(tok, model, label_words=pool.label_names, max_length=64)
    with pytest.raises(ICLError, match="limit is 64"):
        tight.predict_proba(pool.texts[:4], [0, 1, 0, 1], test.texts[:1])


def test_validation_counts_the_tokens_the_scorer_checks(lm, sms):
    """icl_budget.prompt_length (the grid's validation, no weights) == the length ICLScorer.prepare checks."""
    from pipeline.icl_budget import load_tokenizer_and_limit, prompt_length, truncate

    tok, model = lm
    pool, test, idx = sms
    v_tok, limit = load_tokenizer_and_limit("smollm2-135m")
    sc = ICLScorer(tok, model, label_words=("not spam", "spam"))  # two-token word: label_extra 1
    assert limit == sc.max_length == 8192
    for k, cut in ((4, None), (18, None), (18, 30)):
        ct = truncate([pool.texts[i] for i in idx[k]], cut)
        q = truncate(test.texts, cut)
        prep = sc.prepare(ct, pool.labels[idx[k]], q)
        n = prompt_length(v_tok, ct, pool.labels[idx[k]], ("not spam", "spam"), q)
        assert (n.context, n.query, n.label_extra) == (len(prep.prefix), max(map(len, prep.queries)), 1)
        assert n.total == len(prep.prefix) + max(map(len, prep.queries)) + 1


def test_bad_label_words_and_inputs(lm):
    tok, model = lm
    with pytest.raises(ICLError, match="at least 2"):
        ICLScorer(tok, model, label_words=("a",))
    with pytest.raises(ICLError, match="different"):
        ICLScorer(tok, model, label_words=("spam", " spam"))
    sc = ICLScorer(tok, model, label_words=("ham", "spam"))
    with pytest.raises(ICLError, match=r"0\.\.1"):
        sc.predict_proba(["a", "b"], [0, 2], ["c"])
    with pytest.raises(ICLError, match="empty"):
        sc.predict_proba(["a", "  "], [0, 1], ["c"])


@pytest.mark.slow  # ~20 s of LM prompts
def test_multi_class_icl_scores_every_label_word_and_cached_equals_full_prompt(lm):
    tok, model = lm
    words = ("sports", "weather", "cooking", "space exploration")  # the last is several tokens: summed
    ctx = ["The team won the final match.", "Heavy rain is expected tomorrow.", "Stir the sauce and add salt.",
           "The rocket reached orbit.", "He scored two goals.", "Sunny skies all week.", "Bake the bread for an hour.",
           "Astronauts docked with the station."]
    ys = [0, 1, 2, 3, 0, 1, 2, 3]
    queries = ["The striker missed a penalty.", "Snow will fall tonight.", "Chop the onions finely.",
               "The probe landed on Mars."]
    sc = ICLScorer(tok, model, label_words=words, batch_size=3)
    assert sc.label_token_counts[3] > 1
    p = sc.predict_proba(ctx, ys, queries)
    assert p.shape == (4, 4) and np.allclose(p.sum(axis=1), 1.0)
    naive = sc.predict_proba(ctx, ys, queries, use_cache=False)
    assert np.abs(p - naive).max() < 1e-3
    assert (p.argmax(axis=1) == [0, 1, 2, 3]).mean() >= 0.75  # chance 0.25


@pytest.mark.slow  # 300 real LM prompts' worth of scoring (~9 s); the inner loop keeps test_calibration_*'s real LM
def test_real_icl_sms_spam_k18(lm, sms):
    tok, model = lm
    pool, test, idx = sms
    sc = ICLScorer(tok, model, label_words=pool.label_names, batch_size=8)
    ct, cy = [pool.texts[i] for i in idx[18]], pool.labels[idx[18]]
    p = sc.predict_proba(ct, cy, test.texts)
    assert p.shape == (20,) and np.isfinite(p).all() and np.all((p > 0) & (p < 1))
    acc = float(((p >= 0.5) == test.labels).mean())
    print(f"ICL smollm2-135m sms_spam k=18, 20 balanced queries: accuracy {acc:.2f}")
    # one prefix pass + ceil(20 / 8) query batches (+ the scorer's one-time packed-vs-padded check of
    # its first batch): the context is not re-read per query
    assert sc._packing_ok and sc.forward_count == 1 + 3 + 1
    sc.predict_proba(ct, cy, test.texts)
    assert sc.forward_count == 5 + 1 + 3  # checked once per scorer, not per call


# ----------------------------------------------------------------------------- contextual calibration


@pytest.mark.slow  # scores the prompt three times over, once the naive way (whole prompt per input)
def test_calibration_scores_content_free_inputs_on_the_same_cached_prompt(lm, sms):
    """icl_calibrated: the content-free inputs are extra queries on icl's own prompt and KV cache
    (one extra batch), the test queries' scores are icl's exactly, and the calibrated probabilities
    are softmax(scores) / p_cf renormalised: rows sum to 1 and differ from icl's."""
    from pipeline.icl import CONTENT_FREE, calibrate, calibrated_output, content_free_vector, scores_to_proba

    tok, model = lm
    pool, test, idx = sms
    ct, cy = [pool.texts[i] for i in idx[4]], pool.labels[idx[4]]
    sc = ICLScorer(tok, model, label_words=pool.label_names, batch_size=8)
    s, cf = sc.episode_scores(ct, cy, test.texts, CONTENT_FREE)
    assert s.shape == (20, 2) and cf.shape == (len(CONTENT_FREE), 2)
    # one prefix pass + 3 query batches + the one-time packing check + ONE batch for the 3 content-free inputs
    assert sc.forward_count == 1 + 3 + 1 + 1
    # icl's scores bit for bit (a fresh scorer: its first batch goes the same padded-then-checked way)
    np.testing.assert_array_equal(s, ICLScorer(tok, model, label_words=pool.label_names, batch_size=8)
                                  .label_scores(ct, cy, test.texts))
    # the same prompt: the cached content-free scores equal those of the whole prompt forwarded per input
    _, cf_naive = sc.episode_scores(ct, cy, test.texts[:1], CONTENT_FREE, use_cache=False)
    assert np.abs(cf - cf_naive).max() < 1e-3
    p_cf = content_free_vector(cf)
    e = np.exp(cf - cf.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p_cf, (e / e.sum(axis=1, keepdims=True)).mean(axis=0))
    full = calibrate(s, p_cf)
    np.testing.assert_allclose(full.sum(axis=1), 1.0)
    icl = scores_to_proba(s)
    by_hand = np.stack([1 - icl, icl], axis=1) / p_cf
    np.testing.assert_allclose(full, by_hand / by_hand.sum(axis=1, keepdims=True), rtol=1e-9)
    cal = calibrated_output(s, cf)
    assert cal.shape == (20,) and np.array_equal(cal, full[:, 1])
    assert np.abs(cal - icl).max() > 0.05  # calibration changed something
    # binary: dividing by p_cf shifts every logit by one constant, so the ranking (AUC) is icl's
    assert (np.argsort(cal, kind="stable") == np.argsort(icl, kind="stable")).mean() > 0.9
    np.testing.assert_allclose(sc.calibrated_proba(ct, cy, test.texts), cal, atol=1e-4)  # packed batches now


def test_calibration_moves_a_recency_skewed_threshold(lm, sms):
    """A prompt whose last examples are all spam makes SmolLM2 answer spam for every query (recency
    bias, Zhao et al.'s case): icl is at chance on the balanced queries. Its content-free inputs
    score spam too, and dividing by p_cf moves the threshold back: fewer queries called spam and
    higher accuracy (0.50 -> 0.65 on these 20). The reverse order (spam first, ham last) is NOT
    fixed (0.50 -> 0.45): calibration removes a bias the content-free inputs share, not every bias."""
    from pipeline.icl import CONTENT_FREE, calibrated_output, content_free_vector, scores_to_proba

    tok, model = lm
    pool, test, _ = sms
    ham = [i for i in range(len(pool.labels)) if pool.labels[i] == 0][:6]
    spam = [i for i in range(len(pool.labels)) if pool.labels[i] == 1][:2]
    ctx = ham + spam  # spam last
    sc = ICLScorer(tok, model, label_words=pool.label_names, batch_size=8)
    s, cf = sc.episode_scores([pool.texts[i] for i in ctx], pool.labels[ctx], test.texts, CONTENT_FREE)
    icl, cal = scores_to_proba(s), calibrated_output(s, cf)
    assert content_free_vector(cf)[1] > 0.9  # the content-free inputs are "spam" too: the prompt's bias
    assert (icl >= 0.5).mean() >= 0.95 and ((icl >= 0.5) == test.labels).mean() == 0.5
    assert (cal >= 0.5).mean() < (icl >= 0.5).mean()
    assert ((cal >= 0.5) == test.labels).mean() >= 0.6
