"""The pretraining batch collator: segments -> padded, framed, masked batches for an :class:`ObjectivePlan`.

The masking itself is :class:`retromem.pretrain.masking.TokenMasker`'s; the objective-specific parts
(which extra tensors a batch carries, pairs of spans for CoT-MAE) are hooks of the objectives, which
:class:`PretrainCollator` runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from retromem.errors import DataError
from retromem.pretrain.masking import TokenMasker

if TYPE_CHECKING:
    from retromem.pretrain.objective import ObjectivePlan

logger = logging.getLogger(__name__)


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
