"""Whole-word masking on padded id tensors: the per-tokenizer tables and the batched masking operations.

An example is ``{"input_ids": [...]}``: the token ids of one contiguous segment of one document,
*without* special tokens. :class:`TokenMasker` pads a batch into one tensor, adds ``[CLS]``/``[SEP]``,
and masks with torch operations on the whole batch (no per-token Python loops), so it stays a
small fraction of a training step (:class:`retromem.pretrain.collators.PretrainCollator` runs it).

transformers' ``DataCollatorForLanguageModeling(whole_word_mask=True)`` needs the offset mapping
of the original text, which pretokenised segments no longer have; whole words are found here from
the vocabulary instead: a boolean "continues the previous token" table computed once per tokenizer
(WordPiece ``##``; SentencePiece ``▁`` and byte-level BPE ``Ġ`` mark word *starts*).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from retromem.errors import RetromemError

logger = logging.getLogger(__name__)

#: Label value ignored by the losses (the convention of torch's cross entropy and of transformers).
IGNORE_INDEX = -100


class TokenizerError(RetromemError, ValueError):
    """The tokenizer lacks something masking needs (a mask token, [CLS]/[SEP], a padding id)."""


class MaskingError(RetromemError, ValueError):
    """A masking option out of range (a ratio outside (0, 1), replacement shares above 1)."""


def check_ratio(name: str, value: float, examples: str = "e.g. 0.15 for MLM, 0.3 for RetroMAE") -> float:
    """Return ``value`` if it is a ratio strictly inside (0, 1); raise a ValueError naming the option."""
    try:
        ratio = float(value)
    except (TypeError, ValueError) as err:
        raise MaskingError(f"{name} must be a number in (0, 1), got {value!r}") from err
    if not 0.0 < ratio < 1.0:
        raise MaskingError(f"{name} must be strictly between 0 and 1, got {value!r} ({examples})")
    return ratio


@dataclass(frozen=True)
class MaskingConfig:
    """How to mask one view of a batch.

    ratio: fraction of the ordinary (non-special) tokens of each row to select.
    whole_word: select whole words (all word pieces of a word or none).
    mask_token_prob / random_token_prob: of the selected tokens, the share replaced by the mask
    token and by a random token; the rest stay as they were (BERT's 80/10/10).
    """

    ratio: float
    whole_word: bool = True
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1

    def __post_init__(self) -> None:
        check_ratio("mask ratio", self.ratio)
        for name in ("mask_token_prob", "random_token_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise MaskingError(f"{name} must be in [0, 1], got {value}")
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-9:
            raise MaskingError(
                f"mask_token_prob + random_token_prob must be at most 1, got "
                f"{self.mask_token_prob} + {self.random_token_prob}"
            )


class TokenMasker:
    """Per-tokenizer tables (word continuation, special ids) and the batched masking operations.

    Build it once per tokenizer (``TokenMasker.from_tokenizer``); it holds only small tensors and
    ints, so it pickles cheaply into DataLoader workers.
    """

    def __init__(
        self,
        *,
        is_continuation: torch.Tensor,
        random_candidates: torch.Tensor,
        cls_id: int,
        sep_id: int,
        pad_id: int,
        mask_id: int,
        word_scheme: str,
    ):
        self.is_continuation = is_continuation
        self.random_candidates = random_candidates
        self.cls_id = cls_id
        self.sep_id = sep_id
        self.pad_id = pad_id
        self.mask_id = mask_id
        self.word_scheme = word_scheme

    @property
    def vocab_size(self) -> int:
        return int(self.is_continuation.numel())

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenMasker:
        """Read the mask/[CLS]/[SEP]/pad ids and the word-continuation table from ``tokenizer``."""
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        mask_id = tokenizer.mask_token_id if getattr(tokenizer, "mask_token", None) is not None else None
        if mask_id is None:
            raise TokenizerError(
                f"tokenizer {name!r} has no mask token: masked pretraining needs one "
                "(use a BERT-like tokenizer, or add one with tokenizer.add_special_tokens({'mask_token': '[MASK]'}) "
                "and resize the model's embeddings)"
            )
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if cls_id is None or sep_id is None:
            raise TokenizerError(
                f"tokenizer {name!r} has no [CLS]/[SEP] (or bos/eos) tokens: the sentence embedding is the "
                "first position's state, so inputs must be framed as [CLS] text [SEP]"
            )
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            raise TokenizerError(f"tokenizer {name!r} has no padding token: set tokenizer.pad_token first")
        vocab_size = len(tokenizer)
        tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        tokens = ["" if t is None else str(t) for t in tokens]
        scheme, is_continuation = _continuation_table(tokens)
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[[i for i in tokenizer.all_special_ids if 0 <= i < vocab_size]] = True
        is_continuation &= ~special
        random_candidates = torch.nonzero(~special).flatten()
        if scheme == "none":
            logger.warning(
                "tokenizer %r marks no word boundaries this module knows (WordPiece '##', SentencePiece '▁', "
                "byte-level BPE 'Ġ'): whole-word masking falls back to single tokens", name,
            )
        return cls(
            is_continuation=is_continuation,
            random_candidates=random_candidates,
            cls_id=int(cls_id),
            sep_id=int(sep_id),
            pad_id=int(pad_id),
            mask_id=int(mask_id),
            word_scheme=scheme,
        )

    # -- building the padded batch -------------------------------------------------------------

    def pad(self, sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack 1-D id tensors into a (N, L) tensor padded with the pad id; return it and the lengths."""
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        width = int(lengths.max()) if len(sequences) else 0
        tokens = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        if width:
            valid = torch.arange(width)[None, :] < lengths[:, None]
            tokens[valid] = torch.cat(list(sequences))
        return tokens, lengths

    def frame(
        self, tokens: torch.Tensor, lengths: torch.Tensor, pad_to_multiple_of: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn (N, L) ordinary tokens into ``[CLS] tokens [SEP] pad...``; return input_ids and attention_mask."""
        n, width = tokens.shape
        total = width + 2
        if pad_to_multiple_of:
            total = -(-total // pad_to_multiple_of) * pad_to_multiple_of
        positions = torch.arange(total)[None, :]
        input_ids = torch.full((n, total), self.pad_id, dtype=torch.long)
        input_ids[:, 0] = self.cls_id
        body = positions[:, 1 : width + 1] <= lengths[:, None]
        input_ids[:, 1 : width + 1] = torch.where(body, tokens, self.pad_id)
        input_ids.scatter_(1, (lengths + 1)[:, None], self.sep_id)
        attention_mask = (positions < (lengths + 2)[:, None]).long()
        return input_ids, attention_mask

    # -- masking --------------------------------------------------------------------------------

    def select(
        self,
        input_ids: torch.Tensor,
        maskable: torch.Tensor,
        ratio: float,
        whole_word: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Choose the positions to mask: about ``ratio`` of each row's maskable tokens, whole words.

        Per row, words are visited in a random order and each is taken if it still fits the budget
        round(ratio * maskable tokens), a word that would overrun it being skipped (transformers'
        whole-word rule; at least one word, so every row has a label). It is computed over the padded
        batch with sorting and cumulative sums instead of Python loops: a pass takes the longest run of
        words (in the random order) that fits among those no longer than the room left, and passes
        repeat until no word fits, which takes exactly the words the sequential rule takes.
        """
        n, width = input_ids.shape
        if whole_word:
            continuation = self.is_continuation[input_ids] & maskable
            previous = torch.nn.functional.pad(maskable[:, :-1], (1, 0), value=False)
            starts = maskable & (~continuation | ~previous)
        else:
            starts = maskable
        word_id = starts.long().cumsum(1) - 1
        n_words = starts.sum(1)
        max_words = max(int(n_words.max()) if n else 0, 1)
        # word index per token; non-maskable positions go to a spare slot that is dropped
        slot = torch.where(maskable, word_id.clamp(min=0), max_words)
        word_len = torch.zeros(n, max_words + 1, dtype=torch.long).scatter_add_(1, slot, maskable.long())[:, :max_words]
        word_exists = torch.arange(max_words)[None, :] < n_words[:, None]
        scores = torch.rand(n, max_words, generator=generator).masked_fill_(~word_exists, 2.0)
        order = scores.argsort(dim=1)
        length = word_len.gather(1, order)  # in the random order
        exists = word_exists.gather(1, order)
        budget = (maskable.sum(1).float() * ratio).round().long().clamp(min=1)
        take = length.cumsum(1) <= budget[:, None]
        take[:, 0] = True
        take &= exists
        used = (length * take).sum(1)
        while True:  # the words skipped so far, and the ones after them that still fit
            room = (budget - used)[:, None]
            candidate = exists & ~take & (length <= room)
            if not candidate.any():
                break
            add = candidate & ((length * candidate).cumsum(1) <= room)
            take |= add
            used += (length * add).sum(1)
        chosen = torch.zeros(n, max_words, dtype=torch.bool).scatter_(1, order, take)
        chosen = torch.cat([chosen, torch.zeros(n, 1, dtype=torch.bool)], dim=1)
        return chosen.gather(1, slot) & maskable

    def corrupt(
        self,
        input_ids: torch.Tensor,
        selected: torch.Tensor,
        config: MaskingConfig,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the mask/random/keep replacement to ``selected`` positions; return (inputs, labels)."""
        draw = torch.rand(input_ids.shape, generator=generator)
        to_mask = selected & (draw < config.mask_token_prob)
        random_limit = config.mask_token_prob + config.random_token_prob
        to_random = selected & (draw >= config.mask_token_prob) & (draw < random_limit)
        corrupted = input_ids.masked_fill(to_mask, self.mask_id)
        if config.random_token_prob > 0:
            pick = torch.randint(len(self.random_candidates), input_ids.shape, generator=generator)
            corrupted = torch.where(to_random, self.random_candidates[pick], corrupted)
        labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
        return corrupted, labels

    def mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        config: MaskingConfig,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a framed batch (``[CLS] ... [SEP]``): only ordinary tokens are ever selected."""
        maskable = ordinary_positions(attention_mask)
        selected = self.select(input_ids, maskable, config.ratio, config.whole_word, generator)
        return self.corrupt(input_ids, selected, config, generator)


def ordinary_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool (N, T): the text tokens of framed rows, i.e. not [CLS] (position 0), not [SEP], not padding."""
    lengths = attention_mask.sum(1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :]
    return (positions > 0) & (positions < lengths - 1)


def _continuation_table(tokens: list[str]) -> tuple[str, torch.Tensor]:
    """Return (scheme, bool table) with True for tokens that continue the previous token's word."""
    counts = {
        "wordpiece": sum(t.startswith("##") for t in tokens),
        "sentencepiece": sum(t.startswith("\u2581") for t in tokens),
        "bytelevel": sum(t.startswith("\u0120") for t in tokens),
    }
    scheme = max(counts, key=counts.get)
    if counts[scheme] < max(10, len(tokens) // 100):
        return "none", torch.zeros(len(tokens), dtype=torch.bool)
    if scheme == "wordpiece":
        table = [t.startswith("##") for t in tokens]
    else:
        marker = "\u2581" if scheme == "sentencepiece" else "\u0120"
        # a piece continues a word unless it starts one; punctuation-only pieces are words of their own
        table = [bool(t) and not t.startswith(marker) and any(c.isalnum() for c in t) for t in tokens]
    return scheme, torch.tensor(table, dtype=torch.bool)
