"""Objective specs and the plan that composes the objectives of one spec.

A spec names objectives joined by ``+``, each with an optional weight: ``"retromae"``,
``"retromae+bow"``, ``"mlm:1.0+bow:0.5"``. The objectives of one spec share ONE encoder pass over
one masked input and add their losses with their weights:

- ``mlm``: the encoder's masked-language-modelling loss (whole-word masking).
- ``retromae``, ``dupmae``, ``cotmae`` and ``bow`` include the encoder MLM loss, as in their papers;
  name ``mlm`` explicitly to change its weight (``retromae+mlm:0.5``; ``mlm:0`` drops it).
- ``matryoshka`` applies the bottleneck losses of the other objectives to (layer, dim) sub-models.

Allowed combinations, and why the others are refused:

- at most one *decoder* objective (``retromae``, ``dupmae``, ``cotmae``): the decoder options
  (``decoder_mask_ratio``, ``decoder_layers``) configure the one decoder, and each of them
  reconstructs something different from the same [CLS] (its own span for RetroMAE/DupMAE, the
  neighbouring span for CoT-MAE); ``dupmae`` already is ``retromae`` plus its bag-of-words loss;
- ``bow`` and ``mlm`` combine with any of them (e.g. ``retromae+bow``, ``cotmae+bow``);
- ``matryoshka`` needs a bottleneck objective (``retromae``, ``dupmae``, ``cotmae`` or ``bow``):
  plain MLM has no sentence-embedding loss to apply to sub-models;
- with ``cotmae`` every example is cut into two neighbouring spans, and the other objectives then
  work on the spans.

Each objective implements :class:`retromem.pretrain.objective_base.Objective` (its heads, its part
of batching, its losses); its options are :class:`retromem.pretrain.objective_options.ObjectiveOptions`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from retromem.options import flag, named

# the built-in objectives register themselves (retromem.pretrain.objective_base.register) on import
from retromem.pretrain import bow, cotmae, dupmae, matryoshka, mlm, retromae  # noqa: F401
from retromem.pretrain.masking import MaskingConfig, TokenMasker, check_ratio
from retromem.pretrain.objective_base import REGISTRY, EncoderPass, Objective
from retromem.pretrain.objective_options import OPTION_OBJECTIVES, ObjectiveError, ObjectiveOptions

if TYPE_CHECKING:
    from transformers import PretrainedConfig

class ObjectivePlan:
    """A parsed, validated spec with resolved options: what the collator and the model run.

    Build it with ``ObjectivePlan(spec, **options)`` or ``ObjectivePlan(spec, ObjectiveOptions(...))``.
    """

    def __init__(self, spec: str, options: ObjectiveOptions | None = None, **option_values: Any):
        if options is not None and option_values:
            raise TypeError("give either an ObjectiveOptions or keyword options, not both")
        # a copy: the defaults resolved below must not leak into the caller's object
        self.options = replace(options) if options is not None else ObjectiveOptions.from_dict(option_values)
        parts = parse_objective_spec(spec)
        names = [name for name, _ in parts]
        weights = {name: (1.0 if weight is None else weight) for name, weight in parts}
        if "mlm" not in weights and any(REGISTRY[n].includes_mlm for n in names):
            weights = {"mlm": 1.0, **weights}
        # what trains must fit together and sets the defaults; a weight-0 part only keeps its place in the spec
        active = [name for name, weight in weights.items() if weight > 0]
        if not active:
            raise ObjectiveError(f"every weight of {spec!r} is 0: nothing to train")
        _check_combination(spec, active)
        self.progress = 0.0
        self._resolve_defaults(active)
        self.objectives: list[Objective] = [REGISTRY[name](self.options, weights[name], self) for name in active]
        # zero weights stay in the canonical spec, so that "retromae+mlm:0" does not regain its implied mlm on reload
        self.spec = "+".join(f"{name}:{_format_weight(weight)}" for name, weight in weights.items())
        self.encoder_masking = MaskingConfig(
            ratio=self.options.encoder_mask_ratio,
            whole_word=self.options.whole_word_mask,
            mask_token_prob=self.options.mask_token_prob,
            random_token_prob=self.options.random_token_prob,
        )

    # -- what batching needs --------------------------------------------------------------------

    @property
    def uses_pairs(self) -> bool:
        return any(o.uses_pairs for o in self.objectives)

    @property
    def min_tokens(self) -> int:
        """Fewest ordinary tokens one example needs (2 per span: one to mask and one to see)."""
        return 4 if self.uses_pairs else 2

    def segment_length(self, max_length: int) -> int:
        """Ordinary tokens per example: max_length minus [CLS]/[SEP], twice that for pairs of spans."""
        max_length = int(max_length)
        span = max_length - 2
        if span < 2:
            raise ObjectiveError(
                f"max_length {max_length} is too short: it must leave at least 2 tokens besides [CLS] and [SEP]"
            )
        return 2 * span if self.uses_pairs else span

    def decoder_masking(self) -> MaskingConfig:
        return MaskingConfig(
            ratio=self.options.decoder_mask_ratio,
            whole_word=self.options.whole_word_mask,
            mask_token_prob=self.options.mask_token_prob,
            random_token_prob=self.options.random_token_prob,
        )

    def arrange(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for objective in self.objectives:
            tokens, lengths = objective.arrange(tokens, lengths)
        return tokens, lengths

    def collate(self, batch: dict[str, torch.Tensor], original_ids: torch.Tensor, masker: TokenMasker,
                generator: torch.Generator | None = None) -> None:
        for objective in self.objectives:
            objective.collate(batch, original_ids, masker, generator)

    # -- what the model needs -------------------------------------------------------------------

    def build_heads(self, config: PretrainedConfig) -> dict[str, nn.Module]:
        heads = {}
        for objective in self.objectives:
            head = objective.build_heads(config)
            if head is not None:
                heads[objective.name] = head
        return heads

    def hidden_layers_needed(self, num_layers: int) -> bool:
        """True when some objective reads an intermediate layer (matryoshka sub-models)."""
        submodels = self.options.matryoshka_submodels or []
        uses_matryoshka = any(o.name == "matryoshka" for o in self.objectives)
        return uses_matryoshka and any(layer != num_layers for layer, _ in submodels)

    def losses(self, encoded: EncoderPass) -> dict[str, tuple[torch.Tensor, float]]:
        out: dict[str, tuple[torch.Tensor, float]] = {}
        for objective in self.objectives:
            out.update(objective.losses(encoded, encoded.head_of(objective)))
        return out

    def set_progress(self, fraction: float) -> None:
        fraction = float(fraction)
        if not math.isfinite(fraction):
            raise ValueError(f"training progress must be a number in [0, 1], got {fraction}")
        self.progress = min(max(fraction, 0.0), 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.spec, "options": self.options.to_dict()}

    # -- helpers --------------------------------------------------------------------------------

    def _resolve_defaults(self, names: list[str]) -> None:
        o = self.options
        if o.encoder_mask_ratio is None:
            o.encoder_mask_ratio = max(REGISTRY[n].default_encoder_mask_ratio for n in names)
        check_ratio(named(ObjectiveOptions, "encoder_mask_ratio"), o.encoder_mask_ratio,
                    "the defaults: 0.15 for mlm alone, 0.3 with a bottleneck objective")
        decoder = next((n for n in names if REGISTRY[n].has_decoder), None)
        if o.decoder_mask_ratio is None:
            o.decoder_mask_ratio = 0.45 if decoder == "cotmae" else 0.5
        check_ratio(named(ObjectiveOptions, "decoder_mask_ratio"), o.decoder_mask_ratio,
                    "the defaults: 0.5 for retromae and dupmae, 0.45 for cotmae")
        if o.decoder_layers is None:
            o.decoder_layers = 2 if decoder == "cotmae" else 1
        if int(o.decoder_layers) != o.decoder_layers or o.decoder_layers < 1:
            raise ObjectiveError(f"{named(o, 'decoder_layers')} must be a whole number >= 1, got {o.decoder_layers}")
        o.decoder_layers = int(o.decoder_layers)
        if o.bow_decay not in ("cosine", "none"):
            raise ObjectiveError(f"{named(o, 'bow_decay')} must be 'cosine' or 'none', got {o.bow_decay!r}")
        if not math.isfinite(o.dupmae_bow_weight) or o.dupmae_bow_weight < 0:
            raise ObjectiveError(f"{named(o, 'dupmae_bow_weight')} must be a finite number >= 0, "
                                 f"got {o.dupmae_bow_weight}")
        if int(o.matryoshka_samples) != o.matryoshka_samples or o.matryoshka_samples < 0:
            raise ObjectiveError(
                f"{named(o, 'matryoshka_samples')} must be a whole number >= 0 (0 = all), got {o.matryoshka_samples}"
            )
        # the replacement probabilities are checked by MaskingConfig


def parse_objective_spec(spec: str) -> list[tuple[str, float | None]]:
    """Split ``"mlm:1.0+bow:0.5"`` into [("mlm", 1.0), ("bow", 0.5)]; weight None when not given.

    Raises :class:`ObjectiveError` for an empty spec, an unknown name (with the closest known
    name), a weight that is not a plain finite number >= 0 (``1``, ``0.5``, ``1e-3``), an empty
    weight after ``:``, or a name given twice.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ObjectiveError(f"empty objective: name one or more of {', '.join(sorted(REGISTRY))} joined by '+'")
    parts: list[tuple[str, float | None]] = []
    for raw in spec.split("+"):
        item = raw.strip()
        if not item:
            raise ObjectiveError(
                f"objective {spec!r} has an empty part: write e.g. 'retromae+bow' or 'mlm:1.0+bow:0.5'"
            )
        name, sep, weight_text = item.partition(":")
        name = name.strip().lower()
        if name not in REGISTRY:
            close = difflib.get_close_matches(name, sorted(REGISTRY), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ObjectiveError(f"unknown objective {name!r} in {spec!r}{hint}; known: {', '.join(sorted(REGISTRY))}")
        weight: float | None = None
        if sep:
            weight = _parse_weight(weight_text, name, spec)
        if any(name == other for other, _ in parts):
            raise ObjectiveError(f"objective {name!r} appears twice in {spec!r}: give it once, with its weight")
        parts.append((name, weight))
    return parts


def check_options_apply(plan: ObjectivePlan, given: Mapping[str, Any]) -> None:
    """Refuse options, given explicitly, that no objective of ``plan`` acts on (they would do nothing)."""
    names = {o.name for o in plan.objectives}
    idle = [k for k, v in given.items() if v is not None and k in OPTION_OBJECTIVES
            and not names & set(OPTION_OBJECTIVES[k])]
    if idle:
        described = "; ".join(f"{flag(ObjectiveOptions, k)} ({k}) acts on "
                              f"{' or '.join(OPTION_OBJECTIVES[k])} only" for k in idle)
        raise ObjectiveError(f"{described}, and the objective is {plan.spec}: drop the option, or add the "
                             "objective it belongs to")


_WEIGHT = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?")


def _parse_weight(text: str, name: str, spec: str) -> float:
    """A loss weight written as a plain decimal number (no sign, no underscores, no inf/nan)."""
    text = text.strip()
    if not _WEIGHT.fullmatch(text):
        raise ObjectiveError(f"weight of {name!r} in {spec!r} must be a plain number >= 0 such as 1, 0.5 or 1e-3, "
                             f"got {text!r}" + (" (or leave out the ':' for the default)" if not text else ""))
    weight = float(text)
    if not math.isfinite(weight):
        raise ObjectiveError(f"weight of {name!r} in {spec!r} is too large: {text!r}")
    if weight == 0 and any(ch in "123456789" for ch in text.lower().split("e")[0]):
        raise ObjectiveError(f"weight of {name!r} in {spec!r} is too small to represent: {text!r} (use 0 to turn "
                             "the loss off)")
    return weight


def _check_combination(spec: str, names: list[str]) -> None:
    decoders = [n for n in names if REGISTRY[n].has_decoder]
    if "dupmae" in decoders and "retromae" in decoders:
        raise ObjectiveError(
            f"{spec!r}: dupmae already is retromae plus a bag-of-words loss on the encoder's MLM logits; "
            "use 'dupmae' (its weight: dupmae_bow_weight) or 'retromae+bow'"
        )
    if len(decoders) > 1:
        raise ObjectiveError(
            f"{spec!r} combines {' and '.join(decoders)}: at most one decoder objective (retromae, dupmae, cotmae) "
            "per run, since decoder_mask_ratio/decoder_layers configure the one decoder and each reconstructs "
            "something different from the same [CLS]; combine a decoder objective with mlm, bow or matryoshka"
        )
    if "matryoshka" in names and not any(REGISTRY[n].has_bottleneck for n in names):
        raise ObjectiveError(
            f"{spec!r}: matryoshka applies the bottleneck loss to (layer, dim) sub-models, so it needs a "
            "bottleneck objective: add retromae, dupmae, cotmae or bow (e.g. 'retromae+matryoshka')"
        )


def _format_weight(weight: float) -> str:
    return f"{weight:g}"
