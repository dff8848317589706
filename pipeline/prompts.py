"""The prompt template of the project, and the KV-cache continuation helpers built on it.

Template (one block per example; the reference's, with the label words of the task)::

    Sentence: <text>\\nLabel: <word>\\n

A query block is `Sentence: <query>\\nLabel:` (no word); `block(text, word)` builds either.
Two users: the context-dependent embedding protocols (vanilla, LOO: `build_prompt`, which
whitespace-normalises each text first, runs of spaces/newlines -> one space, so that a text
cannot break the template's line structure) and the ICL baseline (`pipeline.icl`, which
puts texts in as they are: its scores, and the results already computed with them, were
made that way). `TEMPLATE_VERSION` is part of the embedding cache key.

Where each example sits in the token sequence is found from the tokenizer's offset
mapping (character span of the example's *text* -> the tokens that overlap it), never
by searching the token stream for label words (the reference did that and broke when
a text contained a label word). A prompt longer than the backbone's context limit is
an error (`PromptTooLongError`, naming both lengths): nothing is ever truncated.

`continuation_batch` / `packed_continuation` lay out token suffixes that continue one
cached prompt prefix, and `cache_argument(module)` names a model's KV-cache argument;
both ICL scoring and the vanilla/loo query embeddings use them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

TEMPLATE_VERSION = "sentence-label-v1"  # part of the embedding cache key
PREFIX = "Sentence: "
MIDDLE = "\nLabel:"
SEP = "\n"


class PromptError(ValueError):
    """A prompt cannot be built or tokenised as required; the message says why."""


class PromptTooLongError(PromptError):
    """The prompt needs more tokens than the backbone's context allows."""


def normalise_text(text: str) -> str:
    if not isinstance(text, str):
        raise PromptError(f"expected a text, got {type(text).__name__}: {text!r}")
    out = " ".join(text.split())
    if not out:
        raise PromptError(f"text {text!r} is empty after whitespace normalisation")
    return out


def block(text: str, word: str | None = None) -> str:
    """One block of the template, `text` as given: an example's (with its label `word`) or a query's (None)."""
    return PREFIX + text + MIDDLE + ("" if word is None else f" {word}{SEP}")


@dataclass(frozen=True)
class PromptLayout:
    """A prompt string and the character span [start, end) of every example's text in it."""

    text: str
    char_spans: tuple[tuple[int, int], ...]


def build_prompt(texts: Sequence[str], label_words: Sequence[str | None]) -> PromptLayout:
    """One prompt holding `texts` in order; `label_words[i]` None = a query block (no word)."""
    if len(texts) != len(label_words):
        raise PromptError(f"{len(texts)} texts but {len(label_words)} label words")
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for t, w in zip(texts, label_words):
        t = normalise_text(t)
        spans.append((pos + len(PREFIX), pos + len(PREFIX) + len(t)))
        text = block(t, w)
        parts.append(text)
        pos += len(text)
    return PromptLayout("".join(parts), tuple(spans))


@dataclass(frozen=True)
class TokenizedPrompt:
    input_ids: list[int]
    spans: tuple[tuple[int, int], ...]  # token index span [start, end) of each example's text
    layout: PromptLayout


def tokenize_prompt(tokenizer: Any, layout: PromptLayout, max_length: int | None, what: str = "prompt") -> TokenizedPrompt:
    """Token ids + each example's token span from the offset mapping.

    A token belongs to an example when its character range overlaps the example's text
    (a leading-space token such as " Hello" overlaps; template tokens do not). Raises
    PromptTooLongError when the ids exceed `max_length`, PromptError when the tokenizer
    gives no offsets (slow tokenizers) or an example gets no token.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise PromptError("vanilla/loo protocols need a fast tokenizer (offset mappings); this one is slow")
    enc = tokenizer(layout.text, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
    ids = list(enc["input_ids"])
    if max_length is not None and len(ids) > max_length:
        raise PromptTooLongError(
            f"{what} is {len(ids)} tokens, over the backbone's context limit of {max_length} tokens "
            f"({len(layout.char_spans)} examples, {len(layout.text)} characters); use a smaller k or a "
            "backbone with a longer context (prompts are never truncated)"
        )
    offsets = enc["offset_mapping"]
    spans = []
    for n, (cs, ce) in enumerate(layout.char_spans):
        hit = [j for j, (a, b) in enumerate(offsets) if b > a and a < ce and b > cs]
        if not hit:
            raise PromptError(f"{what}: example {n} (chars {cs}..{ce}) got no tokens")
        if hit != list(range(hit[0], hit[-1] + 1)):
            raise PromptError(f"{what}: example {n} tokens are not contiguous: {hit}")
        spans.append((hit[0], hit[-1] + 1))
    for (s0, e0), (s1, _) in zip(spans, spans[1:]):
        if e0 > s1:
            raise PromptError(f"{what}: token spans of neighbouring examples overlap ({spans})")
    return TokenizedPrompt(ids, tuple(spans), layout)


def cache_argument(module: Any) -> str:
    """The name of `module.forward`'s KV-cache argument: transformers >= 5.2x calls it `cache`
    (the old `past_key_values` warns, then goes)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def continuation_batch(seqs: Sequence[Sequence[int]], past_len: int, pad_id: int | None) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, position_ids) tensors for token suffixes that all continue one
    cached prefix of `past_len` tokens: right-padded (padding after every real token, so under a
    causal mask no real position attends to it), the mask covering prefix + real tokens, positions
    continuing after the prefix. Used by the icl scorer and the vanilla/loo query embeddings."""
    import torch  # here only: the embed stage reads TEMPLATE_VERSION (cache keys) without torch

    n, width = len(seqs), max(len(x) for x in seqs)
    ids = torch.full((n, width), pad_id if pad_id is not None else 0, dtype=torch.long)
    mask = torch.zeros((n, past_len + width), dtype=torch.long)
    mask[:, :past_len] = 1
    for r, x in enumerate(seqs):
        ids[r, : len(x)] = torch.tensor(list(x), dtype=torch.long)
        mask[r, past_len : past_len + len(x)] = 1
    positions = (torch.arange(width) + past_len).unsqueeze(0).expand(n, -1)
    return ids, mask, positions


def packed_continuation(seqs: Sequence[Sequence[int]], past_len: int) -> tuple[Any, Any, Any, list[int]]:
    """(input_ids (1, T), 4-D boolean attention mask (1, 1, T, past_len + T), position_ids (1, T),
    start of each sequence) for token suffixes that all continue one cached prefix, PACKED into a
    single row: each suffix sees the whole prefix and its own earlier tokens, never another
    suffix, and its positions continue after the prefix. Unlike `continuation_batch` the prefix's
    keys and values are not copied once per suffix, and no token is padding."""
    import torch  # as in continuation_batch

    lens = [len(x) for x in seqs]
    total = sum(lens)
    starts = [0]
    for n in lens[:-1]:
        starts.append(starts[-1] + n)
    ids = torch.tensor([[t for x in seqs for t in x]], dtype=torch.long)
    positions = torch.tensor([[past_len + j for n in lens for j in range(n)]], dtype=torch.long)
    mask = torch.zeros((1, 1, total, past_len + total), dtype=torch.bool)
    mask[..., :past_len] = True
    for s, n in zip(starts, lens):
        mask[0, 0, s:s + n, past_len + s:past_len + s + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
    return ids, mask, positions, starts
