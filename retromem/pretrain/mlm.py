"""``mlm``: masked language modelling on the encoder alone (the baseline), whole-word masking.

The masking itself (15% of the ordinary tokens by default, whole words, 80/10/10 replacement) is
done by the collator for every spec; this objective adds the encoder's MLM loss.

:func:`masked_lm_loss` (used by every reconstruction loss) computes vocabulary logits only at the
labelled positions, and never all of them at once: :func:`linear_cross_entropy` projects a chunk
of rows onto the vocabulary, takes its cross entropy and its gradients while the chunk is in cache,
and keeps only the (rows x hidden) and (vocabulary x hidden) gradients. The (rows x vocabulary)
logits, their log-softmax and its gradient, which dominate the memory and much of the time of a
RetroMAE step (every token is reconstructed), are never materialised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from retromem.pretrain.masking import IGNORE_INDEX
from retromem.pretrain.objective_base import EncoderPass, Objective, register

#: Logits computed at once by linear_cross_entropy (elements). Smaller chunks re-read the (V, H)
#: matrix more often; about 270 rows of a 30k vocabulary measured best on CPU.
CE_CHUNK_ELEMENTS = 1 << 23
#: The labelled rows are padded to a multiple of this, and chunks hold a multiple of it, so that the
#: matrix products see a handful of shapes instead of a new one every step: oneDNN (CPU) keeps a
#: compiled primitive, and its memory, for each shape it meets (up to 1,024 of them), which made a
#: CPU pretraining process grow by about 14 MB a step. Padding rows cost at most ROW_BUCKET - 1 rows.
ROW_BUCKET = 32


@register
class MLM(Objective):
    """Encoder MLM loss (cross entropy over the masked positions)."""

    name = "mlm"
    default_encoder_mask_ratio = 0.15

    def losses(self, encoded: EncoderPass, head: nn.Module | None) -> dict[str, tuple[torch.Tensor, float]]:
        return {"mlm": (masked_lm_loss(encoded.hidden, encoded.labels, encoded.mlm_head), self.weight)}


def masked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, mlm_head: nn.Module) -> torch.Tensor:
    """Mean cross entropy of ``mlm_head`` at the labelled positions only (labels != -100).

    The selected rows are padded with zero rows to a multiple of :data:`ROW_BUCKET` (see there); the
    padding takes no part in the loss or the gradients.
    """
    selected = labels != IGNORE_INDEX
    rows = hidden[selected]
    padding = -rows.shape[0] % ROW_BUCKET
    if padding:
        rows = torch.cat([rows, rows.new_zeros(padding, rows.shape[1])])
    transformed = mlm_head.transform(rows)
    return linear_cross_entropy(transformed, mlm_head.vocab_weight, mlm_head.bias, labels[selected])


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """``F.cross_entropy(F.linear(hidden[:n], weight, bias), targets)`` for (M, H) rows, chunked and fused.

    ``targets`` has n <= M entries: the rows after the first n are padding (zero loss, zero
    gradient). Matrix products run in the autocast dtype (or the inputs' dtype), the softmax in
    float32. The gradients are computed in the forward pass, chunk by chunk, when any input needs them.
    """
    if targets.shape[0] > hidden.shape[0]:
        raise ValueError(f"{targets.shape[0]} targets for {hidden.shape[0]} rows")
    if not torch.is_grad_enabled():  # the function would see inputs that require grad and compute gradients
        hidden, weight = hidden.detach(), weight.detach()
        bias = bias.detach() if bias is not None else None
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        rows, vocab, labelled = hidden.shape[0], weight.shape[0], targets.shape[0]
        if labelled < rows:  # padding rows: any valid index, masked out below
            targets = torch.cat([targets, targets.new_zeros(rows - labelled)])
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        h, w = hidden.to(dtype), cast_weight(weight, dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        softmax_dtype = torch.promote_types(dtype, torch.float32)
        grad_h = torch.empty(h.shape, dtype=softmax_dtype, device=h.device) if need_h else None
        grad_w = None
        grad_b = torch.zeros(vocab, dtype=softmax_dtype, device=w.device) if need_b else None
        total = torch.zeros((), dtype=softmax_dtype, device=h.device)
        step = max(ROW_BUCKET, CE_CHUNK_ELEMENTS // vocab // ROW_BUCKET * ROW_BUCKET)
        scale = 1.0 / max(labelled, 1)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, rows, step):
                stop = min(start + step, rows)
                chunk = h[start:stop]
                logits = torch.matmul(chunk, w.t()).to(softmax_dtype)
                if bias is not None:
                    logits += bias.to(softmax_dtype)
                index = targets[start:stop, None]
                picked = logits.gather(1, index)
                row_max = logits.amax(1, keepdim=True)
                exps = logits.sub_(row_max).exp_()  # in place: the chunk's only (rows x vocab) buffer
                sums = exps.sum(1, keepdim=True)
                real = max(0, min(stop, labelled) - start)  # the chunk's labelled rows; the rest is padding
                total += (row_max + sums.log() - picked)[:real].sum()
                if not (need_h or need_w or need_b):
                    continue
                # d(summed loss)/d logits = softmax - one-hot, in [-1, 1]; the 1/rows of the mean is
                # applied to the products in float32, so that fp16 does not flush small entries to zero
                grad = exps.div_(sums)
                grad.scatter_add_(1, index, torch.full_like(index, -1.0, dtype=grad.dtype))
                grad[real:] = 0
                if need_b:
                    grad_b += grad.sum(0)
                g = grad.to(dtype)
                if need_h:
                    grad_h[start:stop] = torch.matmul(g, w).to(softmax_dtype).mul_(scale)
                if need_w:
                    part = torch.matmul(g.t(), chunk)
                    grad_w = part.to(softmax_dtype) if grad_w is None else grad_w.add_(part)
        if need_w and grad_w is None:  # no rows
            grad_w = torch.zeros(w.shape, dtype=softmax_dtype, device=w.device)
        if need_w:
            grad_w.mul_(scale)
        if need_b:
            grad_b.mul_(scale)
        # kept on ctx, not saved: backward scales these buffers in place, once
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy computes its gradients once: backward through it a second "
                               "time (retain_graph=True) is not supported")
        grads, ctx.grads = ctx.grads, None
        out = []
        for grad, dtype in zip(grads, ctx.dtypes):
            out.append(None if grad is None else grad.mul_(grad_loss.to(grad.dtype)).to(dtype))
        return (*out, None)


def cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight.to(dtype)`` (detached), converted once per forward pass inside :func:`shared_casts`.

    Every vocabulary loss of a step (encoder MLM, decoder reconstruction, DupMAE's bag of words)
    projects onto the same (V, H) word-embedding matrix: within one ``shared_casts()`` block (a
    ``PretrainModel`` forward) it is converted to the autocast dtype once instead of once per loss.
    The cast lives only as long as the block: an optimizer may change the weight in place without
    any sign a cache could see (fused AdamW leaves the version counter alone), so nothing is
    reused across steps. Outside a block every call casts.
    """
    if weight.dtype == dtype:
        return weight.detach()
    if not _CAST_SCOPES:
        return weight.detach().to(dtype)
    scope = _CAST_SCOPES[-1]
    entry = scope.get((id(weight), dtype))
    if entry is None or entry[0] is not weight:
        entry = scope[(id(weight), dtype)] = (weight, weight.detach().to(dtype))
    return entry[1]


@contextlib.contextmanager
def shared_casts() -> Iterator[None]:
    """Within the block (one forward pass, over which the weights do not change), :func:`cast_weight`
    converts each weight once."""
    _CAST_SCOPES.append({})
    try:
        yield
    finally:
        _CAST_SCOPES.pop()


#: open shared_casts() blocks, innermost last: (id(weight), dtype) -> (weight, its cast)
_CAST_SCOPES: list[dict[tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor]]] = []
