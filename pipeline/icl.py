"""The ICL baseline: the causal backbone's own in-context learning, scored, never generated.

Prompt (the project's one template, `prompts.block`; one block per context example, then
the query; texts go in as they are, not whitespace-normalised as the embedding protocols'):

    Sentence: <context text 1>\\nLabel: <word of its label>\\n
    ...
    Sentence: <query text>\\nLabel:

Scoring: each label word w is scored by the log-probability the model gives to the
tokens of " w" (leading space) right after "Label:". For a word that is one token
this is that token's next-token log-prob; a word of several tokens gets the SUM of
its tokens' log-probs, each conditioned on the previous ones (the full-sequence
likelihood; it favours shorter words, so prefer single-token label words — the
scorer reports how many tokens each word has in `label_token_counts`). With
`scoring="first"` only the first token counts (an error if the two words share it).
P(label=1) = softmax over the two word scores. No text is generated or parsed, so a
label word inside a sentence cannot confuse anything.

Efficiency: the context part of the prompt is the same for every query, so it is
forwarded ONCE and its KV cache (`past_key_values`) kept; queries are then scored in
batches, each batch forwarding only its own "Sentence: <query>\\nLabel:" tokens
(positions continue after the context). A batch is PACKED into one row on the batch-1
cache, a block mask keeping each query to the context and itself (`packed_continuation`),
so the context's keys and values are never copied per query; 1.17x faster than padded
rows on copies of the cache (bench/bench_icl.py --paths). Models whose attention ignores a
custom 4-D mask would score packed queries wrongly, so the first batch is also scored the
padded way and packing is used only if both agree. The prompt is tokenised as context
tokens + query tokens, exactly the sequence `use_cache=False` (the naive path that
forwards the whole prompt per query) reads, so both paths score the same token sequence.

Contextual calibration (`icl_calibrated`, Zhao et al., 2021): the same k-shot prompt also
scores CONTENT-FREE queries (`CONTENT_FREE`: "N/A", "[MASK]", "": "Sentence: N/A\nLabel:"
...), as extra queries on the same KV-cached context, in their own batch after the test
queries (so the test queries' batches, and icl's numbers, are the same with or without it).
Their label-probability vectors (softmax over the C label-word scores) are averaged into
p_cf, and each query's probabilities are divided by p_cf and renormalised
(`calibrate`: softmax(scores - log p_cf), the paper's W = diag(p_cf)^-1, b = 0).

In the grid, `score_group` (the runner of `icl` and `icl_calibrated` in `methods.REGISTRY`)
scores every (k, seed) episode of one dataset with one causal backbone, loaded once; the
cells of both methods at one (k, seed) share one scoring of the prompt.

Length: every prompt (context + query + label tokens) is checked against the model's
maximum context (config.max_position_embeddings, or `max_length` if smaller) BEFORE
any forward pass; too long raises `ICLError` naming the length and the limit. Nothing
is truncated silently: a grid checks its prompts at validation (`pipeline.icl_budget`) and
cuts examples only where it says so (`icl_max_chars`, recorded in its cells).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from .backbones import load_causal_lm
from .datasets import context_sets, load_examples
from .icl_budget import config_max_length, context_prompt, query_prompt, truncate
from .prompts import cache_argument, continuation_batch, packed_continuation

SCORINGS = ("sum", "first")
CONTENT_FREE = ("N/A", "[MASK]", "")  # Zhao et al. (2021)'s content-free inputs, averaged


class ICLError(ValueError):
    """Bad ICL input or a prompt that does not fit the model; the message says which."""


def model_max_length(model: Any, tokenizer: Any = None) -> int:
    limits = [config_max_length(model.config)]
    if tokenizer is not None:
        limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if x and x < 1_000_000]
    if not limits:
        raise ICLError("cannot tell the model's maximum context (no max_position_embeddings); pass max_length")
    return min(limits)


@dataclass
class _Prepared:
    prefix: list[int]
    queries: list[list[int]]
    words: list[list[int]]  # token ids of " word" per label
    content_free: list[list[int]] = dataclasses.field(default_factory=list)  # query blocks of content-free inputs


def croppable(cache: Any) -> bool:
    """Whether packed queries can be appended to `cache` and cropped off again. Not so for
    sliding-window attention (Gemma 3's local layers): once the prompt is longer than the window,
    such a layer keeps only the last window - 1 positions, so cropping cannot restore the prefix
    (transformers refuses), and a custom 4-D block mask would also override the window. Those
    models score each batch as padded rows on copies of the cache (the same numbers, slower)."""
    if not hasattr(cache, "crop"):
        return False
    return not any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", ()))


def scores_to_proba(s: np.ndarray) -> np.ndarray:
    """(q, C) label-word scores -> P(label = 1) (q,) for two words (a logistic of their difference),
    (q, C) softmax rows for more."""
    C = s.shape[1]
    if s.shape[0] == 0:
        return np.zeros(0) if C == 2 else np.zeros((0, C))
    if C > 2:
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    d = s[:, 1] - s[:, 0]
    return 1.0 / (1.0 + np.exp(-np.clip(d, -700, 700)))


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def content_free_vector(cf_scores: np.ndarray) -> np.ndarray:
    """p_cf (C,): the mean over the content-free inputs of their label-probability vectors."""
    if cf_scores.ndim != 2 or cf_scores.shape[0] == 0:
        raise ICLError(f"contextual calibration needs the scores of >= 1 content-free input; got {cf_scores.shape}")
    return _softmax(cf_scores).mean(axis=0)


def calibrate(scores: np.ndarray, p_cf: np.ndarray) -> np.ndarray:
    """(q, C) calibrated label probabilities: softmax(scores) / p_cf, renormalised per row."""
    return _softmax(scores - np.log(np.clip(p_cf, 1e-300, None))[None, :])


class ICLScorer:
    """Scores ICL prompts with a causal LM (`tokenizer`, `model` from `load_causal_lm`).

    label_words: words for labels 0, 1, ... (e.g. a dataset's `label_names`; two for a binary
      task, C for C classes: each word is scored, several-token words by their summed log-probs).
    batch_size: queries per forward pass on the cached context.
    max_length: optional tighter limit than the model's own maximum context.
    packing: pack each batch into one row on the shared cache (checked once against padding).
    """

    def __init__(self, tokenizer: Any, model: Any, label_words: Sequence[str] = ("negative", "positive"),
                 batch_size: int = 8, max_length: int | None = None, scoring: str = "sum",
                 packing: bool = True):
        if len(label_words) < 2:
            raise ICLError(f"label_words must hold a word per label (at least 2); got {list(label_words)}")
        words = [str(w).strip() for w in label_words]
        if not all(words) or len(set(words)) != len(words):
            raise ICLError(f"label_words must be different non-empty words; got {list(label_words)}")
        if scoring not in SCORINGS:
            raise ICLError(f"scoring={scoring!r}: expected one of {', '.join(SCORINGS)}")
        if batch_size < 1:
            raise ICLError(f"batch_size={batch_size}: expected >= 1")
        self.tokenizer, self.model = tokenizer, model
        self.label_words = tuple(words)
        self.batch_size = int(batch_size)
        self.scoring = scoring
        limit = model_max_length(model)
        self.max_length = min(limit, int(max_length)) if max_length else limit
        self.word_ids = [self._ids(" " + w) for w in words]
        if any(len(t) == 0 for t in self.word_ids):
            raise ICLError(f"a label word tokenises to nothing: {list(zip(words, self.word_ids))}")
        firsts = [t[0] for t in self.word_ids]
        if scoring == "first" and len(set(firsts)) != len(firsts):
            raise ICLError(f"label words {words} share a first token; use scoring='sum'")
        if scoring == "first":
            self.word_ids = [t[:1] for t in self.word_ids]
        self.forward_count = 0
        self.packing = packing
        self._packing_ok: bool | None = None  # decided on the first cached batch (see _check_packing)
        self._forward_params = set(inspect.signature(model.forward).parameters)
        self._cache_kw = cache_argument(model)
        # LM head on the scored positions only (see _forward_batch): the decoder stack
        # (`base_model`) runs alone and the head is applied here. Models that process the final
        # logits (soft-capping, logit scales) or expose no separate stack keep the full forward.
        base = getattr(model, "base_model", None)
        processed = any(getattr(model.config, a, None) for a in ("final_logit_softcapping", "logit_scale",
                                                                  "logits_scaling"))
        self._base = (base if base is not None and base is not model and model.get_output_embeddings() is not None
                      and not processed else None)
        if self._base is not None:
            self._base_cache_kw = cache_argument(base)

    @property
    def label_token_counts(self) -> tuple[int, ...]:
        return tuple(len(w) for w in self.word_ids)

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    @property
    def _device(self):
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ preparation

    def prepare(self, context_texts: Sequence[str], context_labels: Sequence[int],
                query_texts: Sequence[str], content_free: Sequence[str] = ()) -> _Prepared:
        """Tokenise and check lengths; raises before any forward pass. `content_free`: inputs
        scored as extra queries on the same prompt (they may be empty: "" is one)."""
        ctx = list(context_texts)
        ys = np.asarray(context_labels)
        if ys.ndim != 1 or len(ys) != len(ctx):
            raise ICLError(f"{len(ctx)} context texts but context labels of shape {ys.shape}")
        if len(ctx) and not np.isin(ys, np.arange(len(self.word_ids))).all():
            raise ICLError(f"context labels must be 0..{len(self.word_ids) - 1} (one per label word); "
                           f"got {sorted(set(ys.tolist()))[:5]}")
        for name, texts in (("context", ctx), ("query", list(query_texts))):
            for i, t in enumerate(texts):
                if not isinstance(t, str) or not t.strip():
                    raise ICLError(f"{name} text {i} is empty or not a string: {t!r}")
        prefix = self._ids(context_prompt(ctx, ys, self.label_words), special=True) if ctx else []
        if not prefix:  # zero-shot: start from the model's own BOS handling of the query
            bos = getattr(self.tokenizer, "bos_token_id", None)
            prefix = [bos] if bos is not None else []
        queries = [self._ids(query_prompt(t)) for t in query_texts]
        free = [self._ids(query_prompt(str(t))) for t in content_free]
        extra = max(len(w) for w in self.word_ids) - 1  # label tokens fed after the query
        worst = max((len(q) for q in queries + free), default=0)
        total = len(prefix) + worst + extra
        if total > self.max_length:
            i = int(np.argmax([len(q) for q in queries])) if queries else -1
            raise ICLError(
                f"ICL prompt is {total} tokens (context {len(prefix)} for k={len(ctx)} + longest query "
                f"{worst} [query {i}] + {extra} label tokens) but the model's limit is {self.max_length}; "
                f"use a smaller k or shorter texts (a grid: icl_max_chars or method_ks; nothing is cut silently)"
            )
        return _Prepared(prefix=prefix, queries=queries, words=self.word_ids, content_free=free)

    # ------------------------------------------------------------------ scoring

    def _sequences(self, q_ids: list[int]) -> list[tuple[list[int], list[tuple[int, int, int]]]]:
        """Token suffixes to forward for one query and, per label, where its log-probs sit.

        Returns a list of (suffix tokens, [(label, position in suffix whose logits predict
        the token, token id), ...]). Single-token words share one suffix.
        """
        labels = range(len(self.word_ids))
        if all(len(w) == 1 for w in self.word_ids):
            last = len(q_ids) - 1
            return [(q_ids, [(c, last, self.word_ids[c][0]) for c in labels])]
        out = []
        for c in labels:
            w = self.word_ids[c]
            seq = q_ids + w[:-1]
            out.append((seq, [(c, len(q_ids) - 1 + j, w[j]) for j in range(len(w))]))
        return out

    def _forward_batch(self, seqs: list[list[int]], past: Any, past_len: int,
                       wanted: list[tuple[int, int]]) -> dict:
        """{(row, pos): log-softmax over the vocabulary} of right-padded `seqs` continuing `past`.

        Only the `wanted` positions go through the LM head: the decoder stack (`base_model`) runs
        alone and the head (`get_output_embeddings()`) is applied to those positions' final,
        normed hidden states. The head is ~20% of a small LM's compute per token, and even the
        model's own `logits_to_keep=1` cost more than the rest of the pass on CPU in bf16 (its
        3-D input made torch copy the 49k x 576 head once per row: 12.7 of 21 s for 8 queries).
        """
        dev = self._device
        ids, mask, positions = continuation_batch(seqs, past_len, self.tokenizer.pad_token_id)
        kw: dict = dict(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=past is not None)
        if past is not None:
            kw["position_ids"] = positions.to(dev)
        with torch.inference_mode():
            if self._base is not None:
                if past is not None:
                    kw[self._base_cache_kw] = past
                out = self._base(**kw)
                rows = torch.tensor([r for r, _ in wanted], device=dev)
                cols = torch.tensor([c for _, c in wanted], device=dev)
                head = self.model.get_output_embeddings()
                lp = torch.log_softmax(head(out.last_hidden_state[rows, cols]).float(), dim=-1)
                self.forward_count += 1
                return {w: lp[i] for i, w in enumerate(wanted)}
            if past is not None:
                kw[self._cache_kw] = past
            out = self.model(**kw)
        self.forward_count += 1
        lp = torch.log_softmax(out.logits.float(), dim=-1)
        return {(r, c): lp[r, c] for r, c in wanted}

    def _forward_packed(self, seqs: list[list[int]], past: Any, past_len: int,
                        wanted: list[tuple[int, int]]) -> dict:
        """Same result as `_forward_batch(seqs, expanded copy of past, ...)`: {(row, pos): log-softmax},
        from one packed row on the batch-1 cache `past`, which is cropped back to `past_len` after."""
        dev = self._device
        ids, mask, positions, starts = packed_continuation(seqs, past_len)
        try:
            with torch.inference_mode():
                out = self._base(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev),
                                 use_cache=True, **{self._base_cache_kw: past})
                flat = torch.tensor([starts[r] + c for r, c in wanted], device=dev)
                head = self.model.get_output_embeddings()
                lp = torch.log_softmax(head(out.last_hidden_state[0, flat]).float(), dim=-1)
        finally:
            past.crop(-(past.get_seq_length() - past_len))  # drop the queries' keys: the prefix is shared
        self.forward_count += 1
        return {w: lp[i] for i, w in enumerate(wanted)}

    def _check_packing(self, seqs: list[list[int]], cache: Any, past_len: int, wanted: list[tuple[int, int]],
                       padded: dict) -> bool:
        """Packing is exact in arithmetic; allow the rounding of the model's dtype (fp32 ~1e-5,
        bf16 ~0.1 in a log-prob), and refuse anything larger: the model ignored the block mask."""
        packed = self._forward_packed(seqs, cache, past_len, wanted)
        tol = 1e-3 if next(self.model.parameters()).dtype == torch.float32 else 0.5
        worst = max(float((packed[w] - padded[w]).abs().max()) for w in wanted)
        return worst <= tol

    def _prefix_cache(self, prefix: list[int]) -> Any:
        ids = torch.tensor([prefix], device=self._device)
        with torch.inference_mode():
            if self._base is not None:  # the prefix's logits are never read: no LM head at all
                out = self._base(input_ids=ids, use_cache=True)
                kw_name = self._base_cache_kw
            else:
                kw = {"logits_to_keep": 1} if "logits_to_keep" in self._forward_params else {}
                out = self.model(input_ids=ids, use_cache=True, **kw)
                kw_name = self._cache_kw
        self.forward_count += 1
        cache = getattr(out, "cache", None) if kw_name == "cache" else None
        return cache if cache is not None else out.past_key_values

    @staticmethod
    def _expand(cache: Any, n: int) -> Any:
        """A private copy of a batch-1 cache repeated to batch n (the forward appends to it)."""
        c = copy.deepcopy(cache)
        if n > 1:
            c.batch_repeat_interleave(n)
        return c

    def label_scores(self, context_texts: Sequence[str], context_labels: Sequence[int],
                     query_texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        """(q, C) summed log-probs of the C label words for each query."""
        return self.episode_scores(context_texts, context_labels, query_texts, use_cache=use_cache)[0]

    def episode_scores(self, context_texts: Sequence[str], context_labels: Sequence[int],
                       query_texts: Sequence[str], content_free: Sequence[str] = (),
                       use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """((q, C) label-word scores of the queries, (m, C) those of the `content_free` inputs), all
        on one forwarded prompt: the content-free inputs are extra queries on the same KV cache, in
        their own batch after the queries' (so the queries' scores do not depend on them)."""
        prep = self.prepare(context_texts, context_labels, query_texts, content_free)
        cache = None
        if use_cache and prep.prefix and (prep.queries or prep.content_free):
            cache = self._prefix_cache(prep.prefix)
        return (self._score_queries(prep, prep.queries, cache),
                self._score_queries(prep, prep.content_free, cache))

    def _score_queries(self, prep: _Prepared, queries: list[list[int]], cache: Any) -> np.ndarray:
        """(len(queries), C) scores of query blocks continuing `prep.prefix` (its KV `cache`, or None:
        the whole prompt forwarded per query)."""
        q = len(queries)
        scores = np.zeros((q, len(self.word_ids)))
        if q == 0:
            return scores
        jobs = []  # (query index, suffix, targets)
        for i, qi in enumerate(queries):
            for seq, targets in self._sequences(qi):
                jobs.append((i, seq, targets))
        # Similar lengths together: less padding per batch.
        jobs.sort(key=lambda j: len(j[1]))
        P = len(prep.prefix)
        for s in range(0, len(jobs), self.batch_size):
            batch = jobs[s : s + self.batch_size]
            off = 0 if cache is not None else P  # naive: the whole prompt for every query
            wanted = sorted({(r, off + pos) for r, (_, _, targets) in enumerate(batch) for _, pos, _ in targets})
            if any(c < 0 for _, c in wanted):
                raise ICLError("zero-shot scoring of a query needs a BOS token or a context")
            seqs = [j[1] for j in batch]
            if cache is not None and self._packing_ok and self._base is not None:
                lp = self._forward_packed(seqs, cache, P, wanted)
            elif cache is not None:
                lp = self._forward_batch(seqs, self._expand(cache, len(batch)), P, wanted)
                if self._packing_ok is None:  # first cached batch: does this model honour a block mask?
                    self._packing_ok = (self.packing and self._base is not None and croppable(cache)
                                        and self._check_packing(seqs, cache, P, wanted, lp))
            else:
                lp = self._forward_batch([prep.prefix + j[1] for j in batch], None, 0, wanted)
            for r, (i, _, targets) in enumerate(batch):
                for c, pos, tok in targets:
                    scores[i, c] += float(lp[(r, off + pos)][tok])
        return scores

    def predict_proba(self, context_texts: Sequence[str], context_labels: Sequence[int],
                      query_texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        """P(label = 1) for each query (two label words: softmax over their scores), or (q, C)
        P(label = c) for C > 2 words."""
        return scores_to_proba(self.label_scores(context_texts, context_labels, query_texts, use_cache=use_cache))

    def calibrated_proba(self, context_texts: Sequence[str], context_labels: Sequence[int],
                         query_texts: Sequence[str], content_free: Sequence[str] = CONTENT_FREE,
                         use_cache: bool = True) -> np.ndarray:
        """`predict_proba` after contextual calibration with the `content_free` inputs (`calibrate`)."""
        s, cf = self.episode_scores(context_texts, context_labels, query_texts, content_free, use_cache=use_cache)
        return calibrated_output(s, cf)


def calibrated_output(scores: np.ndarray, cf_scores: np.ndarray) -> np.ndarray:
    """The calibrated probabilities in `predict_proba`'s shape: (q,) P(label=1) for two labels, else (q, C)."""
    p = calibrate(scores, content_free_vector(cf_scores))
    return p[:, 1] if scores.shape[1] == 2 else p


def score_group(dataset: str, options: dict, backbone: str, dtype: str, episodes: Sequence[tuple],
                batch_size: int = 8, skip: Optional[Callable[[int], bool]] = None,
                max_chars: Optional[int] = None) -> Iterator[Optional[dict]]:
    """ICL on the `episodes` of one dataset with one causal backbone, loaded once.

    episodes: (k, seed, method) triples, method icl or icl_calibrated (its registry entry's
    `calibrate` option decides), or (k, seed) pairs (icl). Yields per episode, in order, {probs,
    runtime_s, labels, ids} (the test split's), or None for episode i where `skip(i)` (finished by
    a concurrent run). Adjacent episodes of one (k, seed) share one scoring of the prompt (the
    content-free queries only when a calibrated one is among them); each records the time of that
    scoring plus its own. The context set of (k, seed) is drawn from the train pool exactly as the
    embedding methods' (`context_sets`). `max_chars`: every example cut to that many characters
    first (`icl_budget.truncate`; the grid's icl_max_chars, recorded in the cells).
    """
    from .methods import get_method

    pool = load_examples(dataset, "train", **options)
    test = load_examples(dataset, "test", **options)
    # the GPU a Ray task was given (gpus_per_icl_task > 0), or a local one; else CPU
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok, model = load_causal_lm(backbone, device=device, dtype=dtype)
    scorer = ICLScorer(tok, model, label_words=pool.label_names, batch_size=batch_size)
    eps = [(int(e[0]), int(e[1]), e[2] if len(e) > 2 else "icl") for e in episodes]
    calibrated = {m: bool(get_method(m).options.get("calibrate")) for m in {e[2] for e in eps}}
    queries = truncate(test.texts, max_chars)
    shared: dict = {}  # (k, seed) -> (scores, content-free scores or None, seconds)
    for i, (k, seed, method) in enumerate(eps):
        if skip is not None and skip(i):
            yield None
            continue
        if (k, seed) not in shared:
            shared.clear()  # episodes of one (k, seed) are adjacent: keep one
            t0 = time.time()
            ctx = context_sets(pool.labels, [k], seed, n_classes=pool.n_classes)[k]
            # the content-free queries only if a calibrated cell of this (k, seed) is still to do
            rest = range(i, len(eps))
            need = any(calibrated[eps[j][2]] for j in rest if eps[j][:2] == (k, seed))
            s, cf = scorer.episode_scores(truncate([pool.texts[j] for j in ctx], max_chars), pool.labels[ctx],
                                          queries, CONTENT_FREE if need else ())
            shared[(k, seed)] = (s, cf if need else None, time.time() - t0)
        s, cf, seconds = shared[(k, seed)]
        t0 = time.time()
        p = calibrated_output(s, cf) if calibrated[method] else scores_to_proba(s)
        yield {"probs": np.asarray(p, dtype=np.float32), "runtime_s": seconds + time.time() - t0,
               "labels": test.labels, "ids": test.ids}
