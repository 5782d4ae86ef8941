"""``bow``: "Drop your Decoder" (Ma et al., 2024): bag-of-words prediction from [CLS], no decoder.

The sentence embedding goes through the encoder's own MLM head (tied to the word embeddings) and
its softmax over the vocabulary is trained to predict the bag of the input's tokens (cross
entropy against the uniform distribution over its distinct tokens). Added to the encoder MLM; no extra parameters. Its
weight decays over training with a cosine, from the spec weight at the start to 0 at the end
(``bow_decay="none"`` keeps it constant); ``PretrainModel.set_progress(fraction)`` sets the point.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from retromem.pretrain.objective_base import EncoderPass, Objective, register


@register
class BagOfWords(Objective):
    """Predict the bag of input tokens from the [CLS] state through the MLM head."""

    name = "bow"
    includes_mlm = True
    has_bottleneck = True
    default_encoder_mask_ratio = 0.30

    def losses(self, encoded: EncoderPass, head: nn.Module | None) -> dict[str, tuple[torch.Tensor, float]]:
        loss = self.bottleneck_loss(encoded.sentence_embedding, encoded, head)
        return {self.name: (loss, self.weight * self.bottleneck_scale())}

    def bottleneck_loss(self, embedding: torch.Tensor, encoded: EncoderPass, head: nn.Module | None) -> torch.Tensor:
        return bag_of_words_loss(encoded.mlm_head.float32_logits(embedding), encoded.original_ids, encoded.ordinary)

    def bottleneck_scale(self) -> float:
        if self.options.bow_decay == "none":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * self.plan.progress))


def bag_of_words_loss(logits: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the cross entropy between softmax(logits) (N, V) and each row's bag of words.

    The bag is the set of distinct ids at ``positions`` (bool (N, T)), each weighing the same, as
    both reference implementations build it (DupMAE's collator and Drop-your-Decoder's BoW weights):
    a word is predicted once however often it occurs, so frequent function words do not dominate the
    target. The loss is the average of -log p(token) over the row's distinct tokens; no (N, V)
    target is built.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    ids, _ = token_ids.masked_fill(~positions, -1).sort(dim=1)  # the row's tokens, equal ids side by side
    first = ids >= 0
    first[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    picked = log_probs.gather(1, ids.clamp(min=0))
    weights = first.float()
    per_row = -(picked * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return per_row.mean()
