"""Does an ICL prompt fit its model? Counted from the tokenizer and config alone, before any work.

An ICL cell's prompt is its k context blocks plus one query block plus the label tokens
after the first (`pipeline.icl`). The reference truncated prompts on the left at 2,048
tokens without saying so, dropping context at large k; here a prompt that does not fit is
a validation problem of the grid, reported with the others before anything is embedded,
and the grid says explicitly what it wants instead:

- `icl_max_chars: N` cuts every example (context and query) to its first N characters
  before the prompt is built; the cells record N (`Cell.prompt_max_chars`, part of the id);
- `method_ks: {icl: [...]}` runs icl at fewer ks than the other methods.

`prompt_length` is the count `ICLScorer.prepare` checks, so validation and the run agree
(tests/test_icl.py pins that). Nothing here imports torch or loads weights: the limit comes
from config.json (`config_max_length`), the tokens from the backbone's tokenizer files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .prompts import block

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptLength:
    total: int  # context + longest query + label tokens after the first
    context: int  # the shared prefix, with the tokenizer's special tokens
    query: int  # the longest query block
    query_index: int  # which query that is (-1: none)
    label_extra: int


def truncate(texts: Sequence[str], max_chars: Optional[int]) -> list[str]:
    """Each text cut to its first `max_chars` characters (None: as it is)."""
    if max_chars is None:
        return list(texts)
    return [t[:max_chars] for t in texts]


def context_prompt(texts: Sequence[str], labels: Sequence[int], label_words: Sequence[str]) -> str:
    """The shared prefix: one 'Sentence: ...\\nLabel: <word>\\n' block per context example."""
    return "".join(block(t, label_words[int(y)]) for t, y in zip(texts, labels))


def query_prompt(text: str) -> str:
    return block(text)


def token_ids(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def label_word_ids(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """Token ids of " <word>" per label (the tokens scored after "Label:")."""
    return [token_ids(tokenizer, " " + str(w).strip()) for w in words]


def prompt_length(tokenizer: Any, context_texts: Sequence[str], context_labels: Sequence[int],
                  label_words: Sequence[str], query_texts: Sequence[str],
                  query_lengths: Optional[Sequence[int]] = None) -> PromptLength:
    """The tokens an ICL prompt needs (`query_lengths`: the query blocks' counts, if known)."""
    ctx = list(context_texts)
    prefix = len(token_ids(tokenizer, context_prompt(ctx, context_labels, label_words), special=True)) if ctx else 0
    if not prefix:  # zero-shot: the model's BOS, if it has one
        prefix = int(getattr(tokenizer, "bos_token_id", None) is not None)
    if query_lengths is None:
        query_lengths = [len(token_ids(tokenizer, query_prompt(t))) for t in query_texts]
    worst = max(query_lengths, default=0)
    index = max(range(len(query_lengths)), key=lambda i: query_lengths[i]) if len(query_lengths) else -1
    extra = max(len(w) for w in label_word_ids(tokenizer, label_words)) - 1
    return PromptLength(prefix + worst + extra, prefix, worst, index, extra)


def config_max_length(config: Any) -> Optional[int]:
    """The model's context limit from its config (a dict or a transformers config); None if unstated."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    limits = [get("max_position_embeddings"), get("n_positions")]
    limits = [int(x) for x in limits if x and x < 1_000_000]
    return min(limits) if limits else None


def load_tokenizer_and_limit(backbone: str) -> tuple[Any, Optional[int]]:
    """(tokenizer, context limit) of a causal backbone, without its weights (BackboneError if unavailable)."""
    from .backbones import BackboneError
    from .backbones.resolve import raw_config, resolve

    res = resolve(backbone)
    cfg, _ = raw_config(res)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(res.location)
    except Exception as e:  # offline and not cached, unknown id: the caller says it was not checked
        raise BackboneError(f"tokenizer of {backbone!r}: {type(e).__name__}: {e}") from None
    return tok, config_max_length(cfg)


def grid_prompt_problems(dataset: str, options: dict, backbone: str, ks: Sequence[int], seeds: Sequence[int],
                         max_chars: Optional[int], method: str = "icl",
                         tokenizers: Optional[dict[str, Any]] = None) -> list[str]:
    """The (k, seeds) of one dataset x causal backbone whose ICL prompts do not fit, as problem lines
    (`method`: the prompted method they are for, as the lines name it). `tokenizers`: a dict the
    caller keeps across calls, so a grid loads each backbone's tokenizer once (gemma3's takes seconds)."""
    from .backbones import BackboneError
    from .datasets import context_sets, load_examples

    tokenizers = {} if tokenizers is None else tokenizers
    if backbone not in tokenizers:
        try:
            tokenizers[backbone] = load_tokenizer_and_limit(backbone)
        except BackboneError as e:
            tokenizers[backbone] = e
    if isinstance(tokenizers[backbone], BackboneError):
        logger.warning(f"[grid] icl prompt lengths of {dataset} x {backbone} not checked ({tokenizers[backbone]})")
        return []
    tok, limit = tokenizers[backbone]
    if limit is None:
        return [f"{method} on {dataset} x {backbone}: the model's config states no context limit "
                f"(max_position_embeddings); cannot check the prompts"]
    pool = load_examples(dataset, "train", **options)
    test = load_examples(dataset, "test", **options)
    texts = truncate(pool.texts, max_chars)
    queries = truncate(test.texts, max_chars)
    q_lengths = [len(token_ids(tok, query_prompt(t))) for t in queries]
    problems = []
    for k in ks:
        over = []
        for seed in seeds:
            ctx = context_sets(pool.labels, [k], seed, n_classes=pool.n_classes)[k]
            n = prompt_length(tok, [texts[i] for i in ctx], pool.labels[ctx], pool.label_names, queries, q_lengths)
            if n.total > limit:
                over.append((seed, n))
        if over:
            worst = max(over, key=lambda s: s[1].total)[1]
            cut = f" (examples cut to {max_chars} characters)" if max_chars is not None else ""
            problems.append(
                f"{method} on {dataset} x {backbone} at k={k}: the prompts of seed(s) {', '.join(str(s) for s, _ in over)} "
                f"do not fit{cut}: up to {worst.total} tokens (context {worst.context} + longest query {worst.query} "
                f"+ {worst.label_extra} label tokens), the model's limit is {limit}. Say what to run instead: "
                f"icl_max_chars=N (cut every example to N characters; recorded in the cells) or fewer ks for icl "
                f"(method_ks: {{{method}: [...]}})")
    return problems
