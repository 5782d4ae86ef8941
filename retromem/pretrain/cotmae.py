"""``cotmae``: CoT-MAE (Wu et al., 2022), contextual masked auto-encoding over neighbouring spans.

Every example (one contiguous segment of one document, up to ``2 * (max_length - 2)`` tokens) is
cut at its middle into two neighbouring spans A and B, which become separate rows of the batch
(rows 0..N-1 the A spans, rows N..2N-1 the B spans). Self-supervision: encoder MLM on each span,
masked at 30% (the ``mlm`` component). Context supervision: a two-layer decoder reconstructs B,
masked again at 45% (``decoder_mask_ratio``), with A's [CLS] state in place of B's [CLS], and A
from B's; reported as ``loss_cotmae``.
"""

from __future__ import annotations

import torch
from torch import nn

from retromem.pretrain.objective_base import EncoderPass, register
from retromem.pretrain.retromae import DecoderObjective, decoding_loss


@register
class CoTMAE(DecoderObjective):
    """Reconstruct each span from its neighbour's sentence embedding (basic decoding)."""

    name = "cotmae"
    uses_pairs = True

    def arrange(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_neighbouring_spans(tokens, lengths)

    def bottleneck_loss(self, embedding: torch.Tensor, encoded: EncoderPass, head: nn.Module | None) -> torch.Tensor:
        return decoding_loss(neighbour(embedding), encoded, head)


def neighbour(rows: torch.Tensor) -> torch.Tensor:
    """Swap the halves of the batch: row r gets row (r + N) mod 2N, its span's neighbour."""
    half = rows.shape[0] // 2
    return torch.roll(rows, shifts=half, dims=0)


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
