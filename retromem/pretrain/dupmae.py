"""``dupmae``: DupMAE (Xiao et al., 2022): RetroMAE plus a bag-of-words loss on the ordinary tokens.

Besides RetroMAE's decoder loss (reported as ``loss_dupmae``) and the encoder MLM, the encoder's
MLM logits are max-pooled over every non-[CLS] position into one vocabulary-sized vector per text,
log-softmaxed, and scored by cross entropy against the input's token distribution, uniform over its
distinct tokens as the reference collator builds it (:func:`bag_of_words_loss`; reported as
``loss_dupmae_bow``, weight ``dupmae_bow_weight`` times the spec weight). This trains the token
states to summarise the text lexically, the "second" embedding of the duplex model.

The pooled logits need the vocabulary head at every position; :func:`vocab_max_pool` computes them
a chunk of rows at a time in the autocast dtype and never keeps the (N, T, V) logits: the
backward pass of a max only reaches one position per (row, word), so it is computed with sparse
products instead of the dense (N, T, V) gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from retromem.pretrain.bow import bag_of_words_loss
from retromem.pretrain.mlm import cast_weight
from retromem.pretrain.objective_base import EncoderPass, register
from retromem.pretrain.retromae import RetroMAE

#: Upper bound on the number of logits materialised at once by vocab_max_pool (elements).
POOL_CHUNK_ELEMENTS = 1 << 25


@register
class DupMAE(RetroMAE):
    """RetroMAE's decoder + the bag-of-words loss on max-pooled encoder MLM logits."""

    name = "dupmae"

    def losses(self, encoded: EncoderPass, head: nn.Module | None) -> dict[str, tuple[torch.Tensor, float]]:
        decoder_loss = self.bottleneck_loss(encoded.sentence_embedding, encoded, head)
        out = {self.name: (decoder_loss, self.weight)}
        if self.options.dupmae_bow_weight > 0:
            out["dupmae_bow"] = (token_bag_loss(encoded), self.weight * self.options.dupmae_bow_weight)
        return out


def token_bag_loss(encoded: EncoderPass) -> torch.Tensor:
    """Cross entropy of the max-pooled MLM logits (non-[CLS] positions) against the input's distinct tokens."""
    head = encoded.mlm_head
    pool_positions = encoded.attention_mask.bool().clone()
    pool_positions[:, 0] = False
    pooled = vocab_max_pool(head.transform(encoded.hidden), head.vocab_weight, pool_positions) + head.bias
    return bag_of_words_loss(pooled, encoded.original_ids, encoded.ordinary)


def vocab_max_pool(hidden: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """max over the positions of (hidden @ weight.T): (N, T, H), (V, H), bool (N, T) -> (N, V).

    Equal to ``(hidden @ weight.T).masked_fill(~positions[..., None], -inf).amax(1)`` but with
    memory bounded by :data:`POOL_CHUNK_ELEMENTS` logits and a cheap backward.
    """
    return _VocabMaxPool.apply(hidden, weight, positions)


class _VocabMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        n, t, _ = hidden.shape
        vocab = weight.shape[0]
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        h = hidden.to(dtype)
        w = cast_weight(weight, dtype)
        pooled = torch.empty(n, vocab, dtype=dtype, device=hidden.device)
        argmax = torch.empty(n, vocab, dtype=torch.long, device=hidden.device)
        rows = max(1, POOL_CHUNK_ELEMENTS // max(1, t * vocab))
        blocked = ~positions
        with torch.autocast(device_type, enabled=False):
            for start in range(0, n, rows):
                stop = min(start + rows, n)
                logits = torch.matmul(h[start:stop], w.t())
                logits.masked_fill_(blocked[start:stop, :, None], float("-inf"))
                values, indices = logits.max(dim=1)
                pooled[start:stop] = values
                argmax[start:stop] = indices
        ctx.save_for_backward(hidden, weight, argmax)
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled: torch.Tensor):
        hidden, weight, argmax = ctx.saved_tensors
        n, t, h = hidden.shape
        vocab = weight.shape[0]
        # d pooled[b, v] / d logits[b, t, v] is 1 at t = argmax[b, v] only: a sparse (N*T, V) matrix S with
        # N*V entries, so grad_hidden = S @ W and grad_weight = S.T @ hidden, without the dense (N, T, V).
        rows = (torch.arange(n, device=hidden.device)[:, None] * t + argmax).flatten()
        cols = torch.arange(vocab, device=hidden.device).repeat(n)
        values = grad_pooled.float().flatten()
        grad_hidden = grad_weight = None
        with torch.autocast(hidden.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                sparse = torch.sparse_coo_tensor(
                    torch.stack([rows, cols]), values, (n * t, vocab), check_invariants=False
                )
                grad_hidden = torch.sparse.mm(sparse, weight.float()).view(n, t, h).to(hidden.dtype)
            if ctx.needs_input_grad[1]:
                sparse_t = torch.sparse_coo_tensor(
                    torch.stack([cols, rows]), values, (vocab, n * t), check_invariants=False
                )
                grad_weight = torch.sparse.mm(sparse_t, hidden.reshape(n * t, h).float()).to(weight.dtype)
        return grad_hidden, grad_weight, None
