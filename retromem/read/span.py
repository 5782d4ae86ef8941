"""Extractive answers between text and memory tokens: where an answer lies in a passage's memory tokens
(:func:`find_answer_span`, for training targets), and the text a predicted span of memory tokens stands for
(:func:`span_text`), through the stored token ids and the original-token spans of merged tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from retromem.read.batch import ReadPassage


def token_offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """The character ``(start, end)`` of each original token of ``text`` as the tokenizer cuts it ([CLS] and
    [SEP] included, as ``(0, 0)``): original token positions index this list."""
    return [tuple(pair) for pair in tokenizer(text, return_offsets_mapping=True, truncation=False)["offset_mapping"]]


def find_answer_span(passage: ReadPassage, answers: Sequence[str], tokenizer: Any) -> tuple[int, int] | None:
    """The first and last memory token of the first occurrence of any of ``answers`` in ``passage``'s text
    (exact case first, then ignoring case), or None where none occurs within the memory's tokens."""
    if passage.text is None:
        return None
    offsets = token_offsets(tokenizer, passage.text)
    lowered = passage.text.lower()
    for haystack, transform in ((passage.text, str), (lowered, str.lower)):
        for answer in answers:
            answer = transform(answer.strip())
            if not answer:
                continue
            start = haystack.find(answer)
            while start >= 0:
                found = _chars_to_memory(passage, offsets, start, start + len(answer))
                if found is not None:
                    return found
                start = haystack.find(answer, start + 1)
    return None


def span_text(passage: ReadPassage, first: int, last: int, tokenizer: Any,
              offsets: list[tuple[int, int]] | None = None) -> str:
    """The text memory tokens ``first..last`` stand for: the characters of the original tokens their spans
    cover (a merged token covers several), or, with no passage text, those tokens' ids decoded."""
    begin, end = int(passage.spans[first][0]), int(passage.spans[last][1])
    if passage.text is not None:
        offsets = offsets if offsets is not None else token_offsets(tokenizer, passage.text)
        covered = [offsets[i] for i in range(begin, min(end, len(offsets))) if offsets[i][1] > offsets[i][0]]
        if covered:
            return passage.text[covered[0][0]:covered[-1][1]]
    return tokenizer.decode([int(t) for t in passage.token_ids[first:last + 1]], skip_special_tokens=True).strip()


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, max_tokens: int
               ) -> list[tuple[int, int, int, float]]:
    """For each question, the best (passage, first, last live position, score) with first <= last < first +
    ``max_tokens`` within one passage, from logits [B, P, L] (masked positions very negative)."""
    b, p, length = start_logits.shape
    start, end = start_logits.float(), end_logits.float()
    scores = start.unsqueeze(-1) + end.unsqueeze(-2)  # [B, P, L, L]
    allowed = torch.ones(length, length, dtype=torch.bool, device=scores.device).triu()
    allowed &= ~torch.ones(length, length, dtype=torch.bool, device=scores.device).triu(max_tokens)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    flat = scores.view(b, -1)
    best = flat.argmax(-1)
    out = []
    for i, index in enumerate(best.tolist()):
        j, rest = divmod(index, length * length)
        first, last = divmod(rest, length)
        out.append((j, first, last, float(flat[i, index])))
    return out


def _chars_to_memory(passage: ReadPassage, offsets: list[tuple[int, int]], start: int, end: int
                     ) -> tuple[int, int] | None:
    """The memory tokens covering characters ``[start, end)``: from the original tokens overlapping them to the
    kept vectors whose spans hold those tokens."""
    tokens = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not tokens:
        return None
    spans = np.asarray(passage.spans)
    first = np.nonzero((spans[:, 0] <= tokens[0]) & (spans[:, 1] > tokens[0]))[0]
    last = np.nonzero((spans[:, 0] <= tokens[-1]) & (spans[:, 1] > tokens[-1]))[0]
    if not len(first) or not len(last):
        return None  # beyond the memory's tokens (truncated)
    return int(first[0]), int(last[0])
