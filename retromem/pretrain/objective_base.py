"""The common interface of the pretraining objectives and their registry.

Each objective implements :class:`Objective`: ``build_heads`` (its trainable modules, given the
encoder config), ``arrange``/``collate`` (its part of batching) and ``losses`` (its losses from the
shared :class:`EncoderPass`), and registers itself under its name with :func:`register`. Specs and
the plan that composes objectives are in :mod:`retromem.pretrain.objective`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from retromem.pretrain.masking import IGNORE_INDEX, TokenMasker, ordinary_positions
from retromem.pretrain.objective_options import ObjectiveOptions

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: name -> objective class; filled by :func:`register` when the objective modules are imported.
REGISTRY: dict[str, type[Objective]] = {}

#: Objectives that bring a decoder (at most one per spec).
DECODER_OBJECTIVES = ("retromae", "dupmae", "cotmae")


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available to specs under ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


@dataclass
class EncoderPass:
    """What the objectives share: the batch, the one encoder pass over it, and the shared modules.

    ``embeddings`` is the encoder's embedding module (decoders embed tokens with it, as in the
    papers); ``mlm_head`` maps hidden states to vocabulary logits (tied to the word embeddings).
    """

    batch: dict[str, torch.Tensor]
    hidden: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    embeddings: nn.Module
    mlm_head: nn.Module
    config: Any
    heads: Mapping[str, nn.Module]
    objectives: list[Objective]
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.batch["input_ids"]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.batch["attention_mask"]

    @property
    def labels(self) -> torch.Tensor:
        return self.batch["labels"]

    @property
    def sentence_embedding(self) -> torch.Tensor:
        """The bottleneck: the last layer's state at position 0 ([CLS]), (N, H)."""
        return self.hidden[:, 0]

    @property
    def ordinary(self) -> torch.Tensor:
        """Bool (N, T): text positions (not [CLS], [SEP] or padding)."""
        if "ordinary" not in self.cache:
            self.cache["ordinary"] = ordinary_positions(self.attention_mask)
        return self.cache["ordinary"]

    @property
    def original_ids(self) -> torch.Tensor:
        """The unmasked input: the labels hold the original token wherever the input was changed."""
        if "original_ids" not in self.cache:
            self.cache["original_ids"] = torch.where(self.labels != IGNORE_INDEX, self.labels, self.input_ids)
        return self.cache["original_ids"]

    def head_of(self, objective: Objective) -> nn.Module | None:
        """The objective's own head (None when it has none)."""
        return self.heads.get(objective.name)

    def layer_cls(self, layer: int) -> torch.Tensor:
        """[CLS] state after encoder layer ``layer`` (1-based; the last layer without hidden_states)."""
        if layer == self.config.num_hidden_layers:
            return self.hidden[:, 0]
        if self.hidden_states is None:
            raise RuntimeError("hidden states of intermediate layers were not requested from the encoder")
        return self.hidden_states[layer][:, 0]


class Objective:
    """One pretraining objective: its heads, its part of batching, its losses.

    Class attributes describe it to the planner; an instance holds the resolved options and the
    spec weight. Subclasses override what they need.
    """

    name: ClassVar[str]
    #: Includes the encoder MLM loss (adds the ``mlm`` component unless the spec names it).
    includes_mlm: ClassVar[bool] = False
    #: Brings a decoder (at most one per spec).
    has_decoder: ClassVar[bool] = False
    #: Has a loss on the sentence embedding that matryoshka can apply to sub-models.
    has_bottleneck: ClassVar[bool] = False
    #: Cuts every example into a pair of neighbouring spans (batches carry 2N rows).
    uses_pairs: ClassVar[bool] = False
    #: Default encoder mask ratio when this objective is in the spec (the largest default wins).
    default_encoder_mask_ratio: ClassVar[float] = 0.15

    def __init__(self, options: ObjectiveOptions, weight: float, plan: Any):
        # plan: the retromem.pretrain.objective.ObjectivePlan that made it (its progress, its decoder masking)
        self.options = options
        self.weight = weight
        self.plan = plan

    def build_heads(self, config: PretrainedConfig) -> nn.Module | None:
        """The objective's own trainable modules (None: it only uses the encoder and MLM head)."""
        return None

    def arrange(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rearrange the padded ordinary tokens (N, L) before framing; default: unchanged."""
        return tokens, lengths

    def collate(self, batch: dict[str, torch.Tensor], original_ids: torch.Tensor, masker: TokenMasker,
                generator: torch.Generator | None = None) -> None:
        """Add this objective's tensors to a batch that already has the masked encoder input."""

    def losses(self, encoded: EncoderPass, head: nn.Module | None) -> dict[str, tuple[torch.Tensor, float]]:
        """Return {component name: (unweighted loss, weight)}; the model reports ``loss_<name>``."""
        raise NotImplementedError

    def bottleneck_loss(self, embedding: torch.Tensor, encoded: EncoderPass, head: nn.Module | None) -> torch.Tensor:
        """The objective's loss with ``embedding`` (N, H) in place of the sentence embedding."""
        raise NotImplementedError(f"{self.name} has no bottleneck loss")

    def bottleneck_scale(self) -> float:
        """Schedule factor of the bottleneck loss at the current progress (bow decays; others 1)."""
        return 1.0
