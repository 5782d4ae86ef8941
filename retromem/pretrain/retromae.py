"""``retromae``: RetroMAE (Xiao et al., 2022), a masked auto-encoder with a one-layer decoder.

The encoder reads its input masked at 30% (``encoder_mask_ratio``) and is trained with MLM; its
last-layer [CLS] state is the sentence embedding, from which a shallow decoder reconstructs the
text.

Enhanced decoding (default): the decoder's query stream is the sentence embedding plus position
embeddings; its content stream is the sentence embedding in place of [CLS], then the embeddings of
the ORIGINAL unmasked tokens (with positions). Row i of a position-specific attention mask sees a
random ``1 - decoder_mask_ratio`` share (default 50%) of the positions, always the sentence
embedding (position 0), never itself; every ordinary token is reconstructed. The mask is drawn on
the model's device with batched tensor operations (:func:`enhanced_decoding_mask`).

Basic decoding (``enhanced_decoding=False``): the decoder input is the sentence embedding followed
by the tokens masked again at ``decoder_mask_ratio`` (default 50%), with plain self-attention; the
masked tokens are reconstructed.
"""

from __future__ import annotations

import torch
from torch import nn

from retromem.options import named
from retromem.pretrain.decoder import ShallowDecoder, padding_mask
from retromem.pretrain.masking import IGNORE_INDEX, TokenMasker
from retromem.pretrain.mlm import masked_lm_loss
from retromem.pretrain.objective_base import EncoderPass, Objective, register
from retromem.pretrain.objective_options import ObjectiveError


class DecoderObjective(Objective):
    """What the decoder objectives (RetroMAE, DupMAE, CoT-MAE) share: the encoder MLM at 30%, a shallow
    decoder as their head, and one loss, the decoder's reconstruction from the sentence embedding
    (:meth:`bottleneck_loss`). With basic decoding the batches also carry the decoder's own masked
    copy of the input (``decoder_input_ids``, ``decoder_labels``)."""

    includes_mlm = True
    has_decoder = True
    has_bottleneck = True
    default_encoder_mask_ratio = 0.30

    def build_heads(self, config) -> nn.Module:
        layers = int(config.num_hidden_layers)
        if self.options.decoder_layers > layers:
            raise ObjectiveError(f"{named(self.options, 'decoder_layers')} {self.options.decoder_layers} is more than "
                                 f"the encoder's {layers} layers: the decoder is a shallow one, give at most {layers}")
        return ShallowDecoder(config, self.options.decoder_layers)

    def basic_decoding(self) -> bool:
        """Whether the decoder reads the input masked again at ``decoder_mask_ratio`` (:func:`decoding_loss`)."""
        return True

    def collate(self, batch: dict[str, torch.Tensor], original_ids: torch.Tensor, masker: TokenMasker,
                generator: torch.Generator | None = None) -> None:
        if self.basic_decoding():
            batch["decoder_input_ids"], batch["decoder_labels"] = masker.mask(
                original_ids, batch["attention_mask"], self.plan.decoder_masking(), generator
            )

    def losses(self, encoded: EncoderPass, head: nn.Module | None) -> dict[str, tuple[torch.Tensor, float]]:
        return {self.name: (self.bottleneck_loss(encoded.sentence_embedding, encoded, head), self.weight)}


@register
class RetroMAE(DecoderObjective):
    """Decoder reconstruction from the sentence embedding (+ the encoder MLM, a separate component)."""

    name = "retromae"

    def basic_decoding(self) -> bool:
        return not self.options.enhanced_decoding

    def build_heads(self, config) -> nn.Module:
        if self.options.enhanced_decoding and not has_absolute_positions(config):
            raise ObjectiveError(
                f"{self.name}'s enhanced decoding tells its query rows apart only by absolute position embeddings, "
                f"which this {getattr(config, 'model_type', 'encoder')} does not add to its input (relative or "
                "rotary positions): every row would decode the same bag of words. Use basic decoding "
                "(--basic-decoding / enhanced_decoding=False) or an encoder with absolute positions (BERT, RoBERTa)"
            )
        return super().build_heads(config)

    def bottleneck_loss(self, embedding: torch.Tensor, encoded: EncoderPass, head: nn.Module | None) -> torch.Tensor:
        if self.options.enhanced_decoding:
            return enhanced_decoding_loss(embedding, encoded, head, self.options.decoder_mask_ratio)
        return decoding_loss(embedding, encoded, head)


def has_absolute_positions(config) -> bool:
    """Whether the encoder's embedding layer adds absolute position embeddings to its input (BERT-like)."""
    return (getattr(config, "position_embedding_type", "absolute") == "absolute"
            and getattr(config, "position_biased_input", True)
            and bool(getattr(config, "max_position_embeddings", 0)))


def enhanced_decoding_loss(
    embedding: torch.Tensor, encoded: EncoderPass, decoder: nn.Module, mask_ratio: float
) -> torch.Tensor:
    """Reconstruct every ordinary token from ``embedding`` with two-stream, position-masked decoding."""
    original = encoded.original_ids
    n, t = original.shape
    sentence = embedding[:, None, :]
    content = encoded.embeddings(input_ids=original)
    content = torch.cat([sentence.to(content.dtype), content[:, 1:]], dim=1)
    query = encoded.embeddings(inputs_embeds=sentence.expand(n, t, -1))
    if "enhanced_mask" not in encoded.cache:
        encoded.cache["enhanced_mask"] = enhanced_decoding_mask(encoded.attention_mask, mask_ratio)
    decoded = decoder(query, content, encoded.cache["enhanced_mask"][:, None])
    labels = original.masked_fill(~encoded.ordinary, IGNORE_INDEX)
    return masked_lm_loss(decoded, labels, encoded.mlm_head)


def decoding_loss(embedding: torch.Tensor, encoded: EncoderPass, decoder: nn.Module) -> torch.Tensor:
    """Reconstruct the masked tokens of ``decoder_input_ids`` from ``embedding`` put in place of [CLS].

    Shared by basic RetroMAE decoding (own sentence embedding) and CoT-MAE (the neighbour's).
    """
    decoder_ids = encoded.batch["decoder_input_ids"]
    tokens = encoded.embeddings(input_ids=decoder_ids)
    hidden = torch.cat([embedding[:, None, :].to(tokens.dtype), tokens[:, 1:]], dim=1)
    decoded = decoder(hidden, None, padding_mask(encoded.attention_mask))
    return masked_lm_loss(decoded, encoded.batch["decoder_labels"], encoded.mlm_head)


def enhanced_decoding_mask(
    attention_mask: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Position-specific attention matrix of enhanced decoding, bool (N, T, T), True = row may see column.

    For each row i (a position to reconstruct) the candidates are the real positions j >= 1 with
    j != i; a random ``round((1 - mask_ratio) * #candidates)`` of them are visible, and column 0
    (the sentence embedding) is always visible. Row 0 ([CLS], never reconstructed) and padding rows
    see column 0 too, so no softmax row is empty. Drawn with one ``torch.rand`` and a sort over
    the batch, on the mask's device.
    """
    valid = attention_mask.bool()
    n, t = valid.shape
    positions = torch.arange(t, device=valid.device)
    not_self = positions[None, :, None] != positions[None, None, :]
    candidate = valid[:, None, :] & not_self & (positions > 0)[None, None, :]
    n_visible = ((1.0 - mask_ratio) * candidate.sum(-1).float()).round().long()
    scores = torch.rand((n, t, t), device=valid.device, generator=generator).masked_fill_(~candidate, 2.0)
    threshold = scores.sort(dim=-1).values.gather(-1, (n_visible - 1).clamp(min=0)[..., None])
    visible = (scores <= threshold) & candidate & (n_visible > 0)[..., None]
    visible[:, :, 0] = True
    return visible
