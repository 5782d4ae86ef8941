"""What a reader is (:class:`ReaderSpec`): its encoder split, its head and the memory it reads, as the
reader folder's metadata records it. Light (no torch), so the command builds its parsers quickly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from retromem.errors import ConfigError

HEADS = ("classification", "span", "generative")


@dataclass
class MemoryInfo:
    """The token memory a reader reads: the encoder that made it, the layer it holds and its codec.

    ``encoder`` is the flat encoder metadata (``Encoder.metadata()``), ``codec`` the codec's JSON
    (``{"name": ..., ...params}``; for reading, only the name and parameters matter, not trained codebooks).
    ``tuned_codebook``: for a reader trained with ``--tune-codebook`` (:mod:`retromem.read.codebook`), the digest
    of the memory's pq codebook its own tuned one started from (it decodes only codes assigned by that codebook);
    None: the reader reads the memory decoded by its codec.
    """

    encoder: dict[str, Any]
    layer: int
    codec: dict[str, Any]
    tuned_codebook: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any] | None) -> MemoryInfo | None:
        return None if values is None else cls(encoder=dict(values["encoder"]), layer=int(values["layer"]),
                                                codec=dict(values["codec"]),
                                                tuned_codebook=values.get("tuned_codebook"))


@dataclass
class ReaderSpec:
    """A reader's architecture.

    ``num_layers`` (N) layers of the encoder; the top ``live_layers`` (k) run live over [question ; memory],
    the lower N - k make the memory (``memory.layer`` = N - k). ``k = N`` re-encodes the passage text through
    every layer (no memory is read); ``k = 0`` reads the memory with no live layer.

    ``tune_question_encoder``: whether training fine-tunes the lower N - k layers (and the embeddings) for the
    question, as LUMEN fine-tunes its question encoder. They encode only the question: the memory was made by
    the encoder itself, and stays what it is; False keeps the question in the memory's own space (frozen).
    """

    encoder: str
    num_layers: int
    live_layers: int
    head: str
    labels: list[str] = field(default_factory=list)
    max_question_length: int = 64
    max_passage_length: int = 192
    max_answer_length: int = 32
    max_answer_tokens: int = 30
    decoder_layers: int = 2
    decoder_model: str | None = None
    passage_prefix: str = ""
    memory: MemoryInfo | None = None
    tune_question_encoder: bool = True

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r} (--head): use one of {', '.join(HEADS)}")
        if not 0 <= self.live_layers <= self.num_layers:
            raise ConfigError(f"--k {self.live_layers}: the encoder {self.encoder} has {self.num_layers} layers, so "
                              f"give 0 (pure memory) to {self.num_layers} (full re-encoding)")
        if self.head == "classification" and len(self.labels) < 2:
            raise ConfigError(f"a classification reader needs at least two labels, got {self.labels}")

    @property
    def memory_layer(self) -> int:
        """The encoder layer whose output the memory holds (0 = the embedding output)."""
        return self.num_layers - self.live_layers

    @property
    def tuned_codebook(self) -> bool:
        """Whether the reader decodes its pq memory's codes with its own tuned codebook (``--tune-codebook``)."""
        return self.memory is not None and self.memory.tuned_codebook is not None

    @property
    def full(self) -> bool:
        """Whether the reader re-encodes passage text through every layer (k = N), reading no memory."""
        return self.live_layers == self.num_layers

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["memory"] = self.memory.to_json() if self.memory else None
        return out

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ReaderSpec:
        values = dict(values)
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in names}
        values["memory"] = MemoryInfo.from_json(values.get("memory"))
        values.setdefault("tune_question_encoder", False)  # readers saved before the option froze the question
        return cls(**values)
