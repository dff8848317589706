"""The vanilla and loo protocols (causal LMs only): examples embedded inside k-example prompts.

Prompts are "Sentence: <text>\\nLabel: <word>\\n" of the k context examples of
`datasets.context_sets(train labels, ks, seed)`; each example's vector pools its own token
span (from tokenizer offsets, `prompts.py`).

- vanilla: one pass over the k-example prompt gives the k context vectors; each query is
  embedded after the full prompt (the prompt's KV cache is computed once and reused by every
  query, 8 queries per pass).
- loo: context example i is embedded in a prompt with the other k-1 first and i last (k
  passes); queries as in vanilla.

Execution (`run_context_jobs`): `executor=ray` runs one Ray task per seed (its (k) prompts
in order; `cpus_per_actor` / `gpus_per_actor` each, the model loaded once per worker
process) and yields each task's results as it ends, so the driver writes entries as they
come; `local` runs the same code in this process. Rows of a "train" entry are the k context
examples in prompt order; rows of a "test" entry are the queries.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Iterator, Sequence

import numpy as np

from ..prompts import build_prompt, cache_argument, continuation_batch, tokenize_prompt
from ..runtime import init_ray
from .config import CONTEXT_PROTOCOLS, EmbedConfig, EmbedError
from .stream import warm_embedder


def _hidden(bb: Any, ids: Sequence[int], past: Any = None) -> tuple[Any, Any]:
    """(L, dim) float hidden states at the backbone's layer for `ids` (after `past`), and the new cache."""
    import torch

    x = torch.tensor([list(ids)], dtype=torch.long, device=bb.device)
    kw = {cache_argument(bb.model): past} if past is not None else {}
    with torch.inference_mode():
        out = bb.model(input_ids=x, use_cache=True, output_hidden_states=bb.layer != -1, return_dict=True, **kw)
    bb.forward_count += 1
    h = out.last_hidden_state if bb.layer == -1 else out.hidden_states[bb.layer]
    new = getattr(out, "cache", None)
    return h[0].float(), new if new is not None else getattr(out, "past_key_values", None)


def _hidden_batch(bb: Any, suffixes: list[list[int]], past: Any, past_len: int) -> Any:
    """(B, L, dim) float hidden states of right-padded `suffixes`, each continuing the batch-1 KV
    cache `past` (`past_len` tokens), in one forward pass. Padding sits after every real token,
    so under the causal mask no real position sees it; positions continue after the prompt."""
    import torch

    n = len(suffixes)
    ids, mask, pos = continuation_batch(suffixes, past_len, bb.tokenizer.pad_token_id)
    with torch.inference_mode():
        cache = copy.deepcopy(past)  # the forward appends to it; the prompt's own cache stays intact
        if n > 1:
            cache.batch_repeat_interleave(n)
        out = bb.model(input_ids=ids.to(bb.device), attention_mask=mask.to(bb.device), position_ids=pos.to(bb.device),
                       use_cache=True, output_hidden_states=bb.layer != -1, return_dict=True,
                       **{cache_argument(bb.model): cache})
    bb.forward_count += 1
    h = out.last_hidden_state if bb.layer == -1 else out.hidden_states[bb.layer]
    return h.float()


def _pool(bb: Any, h: Any, span: tuple[int, int]) -> np.ndarray:
    s, e = span
    v = h[s:e].mean(0) if bb.pooling == "mean" else h[e - 1]
    return v.cpu().numpy().astype(np.float32)


def context_embeddings(bb: Any, ctx_texts: Sequence[str], ctx_words: Sequence[str], query_texts: Sequence[str],
                       protocol: str, what: str = "", use_kv_cache: bool = True,
                       query_batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(context vectors (k, dim), query vectors (n, dim)) under `protocol` (vanilla | loo).

    Every prompt is tokenised (and length-checked) before the first forward pass, so an
    over-long prompt fails fast. Queries reuse the context prompt's KV cache when the
    full prompt's tokens start with the context prompt's tokens (checked per query), in
    batches of `query_batch` on a copy of that cache (one pass per batch, not per query;
    the copy holds `query_batch` x the prompt's keys and values, hence a small default).
    """
    if protocol not in CONTEXT_PROTOCOLS:
        raise EmbedError(f"protocol {protocol!r}: expected vanilla or loo")
    tok, limit = bb.tokenizer, bb.max_length
    k = len(ctx_texts)
    ctx = tokenize_prompt(tok, build_prompt(ctx_texts, ctx_words), limit, f"{protocol} context prompt{what}")
    queries = [tokenize_prompt(tok, build_prompt(list(ctx_texts) + [q], list(ctx_words) + [None]), limit,
                               f"{protocol} prompt for query {j}{what}") for j, q in enumerate(query_texts)]
    loo = []
    if protocol == "loo":
        for i in range(k):
            order = [j for j in range(k) if j != i] + [i]
            loo.append(tokenize_prompt(tok, build_prompt([ctx_texts[j] for j in order], [ctx_words[j] for j in order]),
                                       limit, f"loo prompt for context example {i}{what}"))
    Xc = np.zeros((k, bb.dim), np.float32)
    h, cache = _hidden(bb, ctx.input_ids)
    if protocol == "vanilla":
        for i, span in enumerate(ctx.spans):
            Xc[i] = _pool(bb, h, span)
    else:
        for i, tp in enumerate(loo):
            hi, _ = _hidden(bb, tp.input_ids)
            Xc[i] = _pool(bb, hi, tp.spans[-1])
    return Xc, _query_vectors(bb, ctx.input_ids, cache, queries, use_kv_cache, query_batch)


def _query_vectors(bb: Any, ctx_ids: list[int], cache: Any, queries: list, use_kv_cache: bool,
                   query_batch: int) -> np.ndarray:
    """(n, dim) vectors of the queries' own spans: on the context prompt's KV `cache` where a
    query's prompt continues the context prompt's tokens, else from a pass over its whole prompt."""
    Xq = np.zeros((len(queries), bb.dim), np.float32)
    n_ctx = len(ctx_ids)
    on_cache = [j for j, tq in enumerate(queries)
                if use_kv_cache and tq.input_ids[:n_ctx] == ctx_ids and tq.spans[-1][0] >= n_ctx]
    on_cache.sort(key=lambda j: len(queries[j].input_ids))  # similar lengths together: less padding
    for b in range(0, len(on_cache), query_batch):
        rows = on_cache[b:b + query_batch]
        h = _hidden_batch(bb, [queries[j].input_ids[n_ctx:] for j in rows], cache, n_ctx)
        for r, j in enumerate(rows):
            s, e = queries[j].spans[-1]
            Xq[j] = _pool(bb, h[r], (s - n_ctx, e - n_ctx))
    for j in sorted(set(range(len(queries))) - set(on_cache)):  # the naive path: the whole prompt
        hq, _ = _hidden(bb, queries[j].input_ids)
        Xq[j] = _pool(bb, hq, queries[j].spans[-1])
    return Xq


def context_job(kwargs: dict, protocol: str, jobs: list[tuple]) -> list[tuple]:
    """Context prompts of one seed on one backbone: [(k, seed, Xc, Xq, forward passes, seconds)].

    A Ray task body (or called in-process): the backbone is loaded once per process.
    """
    bb = warm_embedder(kwargs).backbone
    out = []
    for k, seed, ctx_texts, words, queries in jobs:
        before, t = bb.forward_count, time.time()
        Xc, Xq = context_embeddings(bb, ctx_texts, words, queries, protocol, f" (k={k}, seed={seed})")
        out.append((k, seed, Xc, Xq, bb.forward_count - before, round(time.time() - t, 3)))
    return out


def run_context_jobs(cfg: EmbedConfig, executor: str, kwargs: dict, groups: list[list[tuple]]) -> Iterator[tuple]:
    """Yield `context_job` results; on Ray one task per seed (GPU: `gpus_per_actor`), in finish order."""
    if executor != "ray":
        for jobs in groups:
            yield from context_job(kwargs, cfg.protocol, jobs)
        return
    import ray

    init_ray(None, None)
    task = ray.remote(context_job).options(num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor,
                                            max_retries=cfg.max_task_retries)
    pending = [task.remote(kwargs, cfg.protocol, jobs) for jobs in groups]
    while pending:  # write each seed's entries as soon as its task ends: a dead driver loses only the rest
        done, pending = ray.wait(pending, num_returns=1)
        yield from ray.get(done[0])
