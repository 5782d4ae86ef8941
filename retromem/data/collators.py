"""Vectorised masking collators for pretraining: whole-word masking on padded id tensors.

An example is ``{"input_ids": [...]}``: the token ids of one contiguous segment of one document,
*without* special tokens. The collator pads a batch into one tensor, adds ``[CLS]``/``[SEP]``,
and masks with torch operations on the whole batch (no per-token Python loops), so it stays a
small fraction of a training step.

transformers' ``DataCollatorForLanguageModeling(whole_word_mask=True)`` needs the offset mapping
of the original text, which pretokenised segments no longer have; whole words are found here from
the vocabulary instead: a boolean "continues the previous token" table computed once per tokenizer
(WordPiece ``##``; SentencePiece ``▁`` and byte-level BPE ``Ġ`` mark word *starts*).

The objective-specific parts (which extra tensors a batch carries, pairs of spans for CoT-MAE) are
hooks of the objectives in ``retromem.pretrain``; :class:`PretrainCollator` runs them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from retromem.errors import DataError, RetromemError

if TYPE_CHECKING:
    from retromem.pretrain.objective import ObjectivePlan

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


class PretrainCollator:
    """callable(list[dict]) -> dict[str, Tensor] for the objectives of an :class:`ObjectivePlan`.

    Steps: validate and pad the segments (dropping too-short ones with a warning; an error if
    none is left), let the objectives rearrange rows (CoT-MAE: pairs of spans), frame with
    [CLS]/[SEP], mask the encoder input, then let each objective add its tensors
    (e.g. the decoder's masked input).
    """

    def __init__(
        self,
        plan: ObjectivePlan,
        masker: TokenMasker,
        max_length: int,
        pad_to_multiple_of: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ):
        self.plan = plan
        self.masker = masker
        self.max_length = int(max_length)
        self.segment_length = plan.segment_length(self.max_length)
        self.min_tokens = plan.min_tokens
        self.pad_to_multiple_of = pad_to_multiple_of
        self.generator = generator
        self.seed = seed
        self.skipped_examples = 0

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = self._sequences(examples)
        generator = self.generator if self.generator is not None else self._batch_generator(sequences)
        tokens, lengths = self.masker.pad(sequences)
        tokens, lengths = self.plan.arrange(tokens, lengths)
        input_ids, attention_mask = self.masker.frame(tokens, lengths, self.pad_to_multiple_of)
        masked, labels = self.masker.mask(input_ids, attention_mask, self.plan.encoder_masking, generator)
        batch = {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}
        self.plan.collate(batch, input_ids, self.masker, generator)
        return batch

    def _batch_generator(self, sequences: Sequence[torch.Tensor]) -> torch.Generator | None:
        """With a ``seed``: a generator seeded by it and the batch's tokens, else None (torch's global one).

        The masks of a batch are then a function of the seed and the batch alone: the same whichever
        data-loader worker collates it and however much else drew random numbers before, so that a run
        resumed from a checkpoint masks as the uninterrupted run did (the trainer restores the global
        generator only after it has fetched the next batches).
        """
        if self.seed is None:
            return None
        digest = hashlib.blake2b(str(self.seed).encode(), digest_size=8)
        for ids in sequences:
            digest.update(len(ids).to_bytes(4, "little"))
            digest.update(ids.numpy().tobytes())
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))

    def _sequences(self, examples: Sequence[dict[str, Any]]) -> list[torch.Tensor]:
        if len(examples) == 0:
            raise DataError(
                "empty batch: the pretraining data yielded no examples", fix="check that the corpus is not empty"
            )
        kept: list[torch.Tensor] = []
        short = 0
        for example in examples:
            try:
                ids = example["input_ids"]
            except (KeyError, TypeError) as err:
                raise DataError(
                    f"a pretraining example must be a dict with 'input_ids', got {type(example).__name__}",
                    fix="tokenise the corpus into {'input_ids': [...]} segments without special tokens",
                ) from err
            ids = torch.as_tensor(ids, dtype=torch.long).flatten()[: self.segment_length]
            if ids.numel() < self.min_tokens:
                short += 1
                continue
            kept.append(ids)
        if short:
            self.skipped_examples += short
            log = logger.warning if self.skipped_examples == short else logger.debug
            log(
                "skipped %d example(s) with fewer than %d tokens (too short for %s); %d skipped so far",
                short, self.min_tokens, self.plan.spec, self.skipped_examples,
            )
        if not kept:
            raise DataError(
                f"every example of the batch has fewer than {self.min_tokens} tokens, the least that "
                f"objective {self.plan.spec!r} can mask",
                fix="drop empty or very short texts from the corpus (or use longer segments)",
            )
        flat_min = min(int(s.min()) for s in kept)
        flat_max = max(int(s.max()) for s in kept)
        if flat_min < 0 or flat_max >= self.masker.vocab_size:
            raise DataError(
                f"token id {flat_max if flat_max >= self.masker.vocab_size else flat_min} is outside the "
                f"tokenizer's vocabulary (size {self.masker.vocab_size})",
                fix="the data was tokenised with another tokenizer: delete the tokenised cache and rebuild it",
            )
        return kept


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


def split_neighbouring_spans(tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each row in two neighbouring spans at its middle; return (2N, ceil(L/2)) spans and lengths.

    Rows 0..N-1 are the first spans (A), rows N..2N-1 the second spans (B) of the same rows, so the
    partner of row r is row (r + N) mod 2N.
    """
    first = lengths // 2
    second = lengths - first
    width = int(second.max()) if len(lengths) else 0  # never more than tokens.shape[1]
    positions = torch.arange(width)[None, :]
    a = tokens[:, :width].masked_fill(positions >= first[:, None], 0)
    index = (first[:, None] + positions).clamp(max=max(tokens.shape[1] - 1, 0))
    b = tokens.gather(1, index).masked_fill(positions >= second[:, None], 0)
    return torch.cat([a, b], dim=0), torch.cat([first, second], dim=0)


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
