"""The options of the pretraining objectives: one flat set, shared by the objectives of a spec.

Each field is declared with :func:`retromem.options.option` (its ``retromem pretrain`` flag and help
beside it). ``None`` means "the objective's default", which :class:`retromem.pretrain.objective.ObjectivePlan`
resolves; :data:`OPTION_OBJECTIVES` says which objectives each option acts on, so that an option
given for none of a run's objectives is refused instead of doing nothing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from retromem.errors import RetromemError
from retromem.options import option


class ObjectiveError(RetromemError, ValueError):
    """A bad objective spec or option: unknown name, bad weight, incompatible combination, bad value."""


def parse_submodels(text: str) -> list[tuple[int, int]]:
    """Parse ``"3:384,6:128"`` into [(3, 384), (6, 128)] ((layer, dim) pairs)."""
    pairs = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)[:x](\d+)", part)
        if not match:
            raise ObjectiveError(f"bad matryoshka sub-model {part!r}: write layer:dim pairs, e.g. '3:384,6:128'")
        pairs.append((int(match.group(1)), int(match.group(2))))
    if not pairs:
        raise ObjectiveError("matryoshka_submodels is empty: write layer:dim pairs, e.g. '3:384,6:128'")
    return pairs


@dataclass
class ObjectiveOptions:
    """Options of the objectives; ``None`` means "the objective's default", resolved by ``ObjectivePlan``."""

    encoder_mask_ratio: float | None = option(
        None, gt=0, max=1, help="share of encoder tokens masked (0.30 with a bottleneck objective, 0.15 for mlm alone)")
    whole_word_mask: bool = option(True, flag="--no-whole-word-mask", help="mask word pieces independently "
                                   "(by default all word pieces of a word are masked or none, encoder and decoders)")
    mask_token_prob: float = option(0.8, min=0, max=1, cli=False,
                                    help="of the masked tokens, the share replaced by [MASK] (BERT: 0.8)")
    random_token_prob: float = option(0.1, min=0, max=1, cli=False,
                                      help="of the masked tokens, the share replaced by a random token (BERT: 0.1)")
    decoder_mask_ratio: float | None = option(
        None, gt=0, max=1, help="retromae/dupmae: share of positions each decoder row cannot see (0.5; with "
        "--basic-decoding the share of the decoder input masked); cotmae: share of the other span masked for its "
        "decoder (0.45)")
    enhanced_decoding: bool = option(True, flag="--basic-decoding", help="retromae/dupmae: plain masked decoding "
                                     "instead of enhanced (two-stream, position-specific attention) decoding")
    decoder_layers: int | None = option(None, min=1, help="decoder depth (1 for retromae/dupmae, 2 for cotmae)")
    dupmae_bow_weight: float = option(1.0, min=0, help="dupmae: weight of its bag-of-words loss relative to its "
                                      "decoder loss (1.0)")
    bow_decay: str = option("cosine", choices=("cosine", "none"),
                            help="bow: its weight's schedule over training (cosine: from its weight to 0)")
    matryoshka_submodels: list[tuple[int, int]] | None = option(
        None, parse=parse_submodels, metavar="LAYER:DIM,...", help="matryoshka: layer:dim sub-models that also get "
        "the bottleneck loss, e.g. 3:128,6:192 (1-based layers; default: a list from the encoder's size)")
    matryoshka_samples: int = option(1, min=0, help="matryoshka: sub-models drawn at random each step (1; 0 = all, "
                                     "every step)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ObjectiveOptions:
        """Build options from keyword values, refusing unknown names (with the closest known one).

        A value of None means "not given" (the default), so a CLI can pass every flag as it parsed it.
        """
        values = {k: v for k, v in values.items() if v is not None}
        known = {f.name for f in fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ObjectiveError(f"unknown objective option(s) {', '.join(hints)}; known: {', '.join(sorted(known))}")
        options = cls(**dict(values))
        if isinstance(options.matryoshka_submodels, str):
            options.matryoshka_submodels = parse_submodels(options.matryoshka_submodels)
        elif options.matryoshka_submodels is not None:
            options.matryoshka_submodels = [tuple(int(x) for x in pair) for pair in options.matryoshka_submodels]
        return options

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["matryoshka_submodels"] is not None:
            data["matryoshka_submodels"] = [list(pair) for pair in data["matryoshka_submodels"]]
        return data


#: The objectives each option acts on; options not listed (masking) act on all of them.
OPTION_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "decoder_mask_ratio": ("retromae", "dupmae", "cotmae"),
    "enhanced_decoding": ("retromae", "dupmae"),
    "decoder_layers": ("retromae", "dupmae", "cotmae"),
    "dupmae_bow_weight": ("dupmae",),
    "bow_decay": ("bow",),
    "matryoshka_submodels": ("matryoshka",),
    "matryoshka_samples": ("matryoshka",),
}
