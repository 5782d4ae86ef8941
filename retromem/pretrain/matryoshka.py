"""``matryoshka``: 2D-Matryoshka bottlenecks (after Li et al., 2024, "2D Matryoshka Sentence Embeddings").

The bottleneck losses of the other objectives of the spec (RetroMAE's/DupMAE's/CoT-MAE's decoder
loss, bow's bag-of-words loss) are also applied to sub-models: the [CLS] state after encoder layer
``layer`` (1-based), keeping only its first ``dim`` dimensions (the rest set to 0, which is what a
dot product over the truncated vector sees). One pretraining then gives usable smaller and
shallower embeddings: at inference take layer ``layer``'s [CLS] and its first ``dim`` values.

``matryoshka_submodels`` lists the (layer, dim) pairs (default: half and quarter width at full
depth, full and half width at half depth); ``matryoshka_samples`` draws that many of them at random
each step (default 1, so a step costs one extra bottleneck pass; 0 = all of them).
``loss_matryoshka`` is the mean over the drawn sub-models of the bottleneck losses, mixed with the
spec weights of their objectives.
"""

from __future__ import annotations

import torch
from torch import nn

from retromem.options import named
from retromem.pretrain.objective_base import EncoderPass, Objective, register
from retromem.pretrain.objective_options import ObjectiveError


@register
class Matryoshka(Objective):
    """Bottleneck losses on (layer, dim) sub-models of the encoder."""

    name = "matryoshka"

    def build_heads(self, config) -> nn.Module | None:
        submodels = resolve_submodels(self.options.matryoshka_submodels, int(config.num_hidden_layers),
                                      int(config.hidden_size))
        self.options.matryoshka_submodels = submodels
        if self.options.matryoshka_samples > len(submodels):
            raise ObjectiveError(f"{named(self.options, 'matryoshka_samples')} {self.options.matryoshka_samples} is "
                                 f"more than the {len(submodels)} sub-models: give at most {len(submodels)} (0 = all)")
        return None

    def losses(self, encoded: EncoderPass, head: nn.Module | None) -> dict[str, tuple[torch.Tensor, float]]:
        submodels = self.options.matryoshka_submodels
        if not submodels:
            raise RuntimeError("matryoshka sub-models are resolved when the heads are built (PretrainModel does it)")
        samples = self.options.matryoshka_samples
        if samples and samples < len(submodels):
            chosen = [submodels[i] for i in torch.randperm(len(submodels))[:samples].tolist()]
        else:
            chosen = list(submodels)
        bottlenecks = [o for o in encoded.objectives if o.has_bottleneck]
        total_weight = sum(o.weight for o in bottlenecks)
        loss = 0.0
        for layer, dim in chosen:
            cls = encoded.layer_cls(layer)
            keep = torch.arange(cls.shape[-1], device=cls.device) < dim
            embedding = cls * keep.to(cls.dtype)
            for objective in bottlenecks:
                part = objective.bottleneck_loss(embedding, encoded, encoded.head_of(objective))
                loss = loss + part * (objective.weight * objective.bottleneck_scale() / total_weight)
        return {self.name: (loss / len(chosen), self.weight)}


def resolve_submodels(submodels: list[tuple[int, int]] | None, layers: int, hidden: int) -> list[tuple[int, int]]:
    """Validate (layer, dim) pairs against the encoder, or build the default list."""
    if submodels is None:
        half_depth = max(1, layers // 2)
        candidates = [(layers, hidden // 2), (layers, hidden // 4), (half_depth, hidden), (half_depth, hidden // 2)]
        submodels = []
        for layer, dim in candidates:
            if dim >= 1 and (layer, dim) != (layers, hidden) and (layer, dim) not in submodels:
                submodels.append((layer, dim))
        if not submodels:
            raise ObjectiveError(f"no default matryoshka sub-models for a {layers}-layer, {hidden}-wide encoder")
        return submodels
    checked = []
    for layer, dim in submodels:
        if not 1 <= layer <= layers:
            raise ObjectiveError(f"matryoshka sub-model ({layer}, {dim}): layer must be in 1..{layers} (1-based)")
        if not 1 <= dim <= hidden:
            raise ObjectiveError(f"matryoshka sub-model ({layer}, {dim}): dim must be in 1..{hidden}")
        if (layer, dim) == (layers, hidden):
            raise ObjectiveError(
                f"matryoshka sub-model ({layer}, {dim}) is the full model, already trained by the main loss: "
                "leave it out"
            )
        checked.append((int(layer), int(dim)))
    return checked
