"""Where the reader's passages come from: a token-memory store (decoded from its codec), or the passage text
for a full re-encoding reader (k = N) -- :class:`PassageReader` gives :class:`ReadPassage`\\ s by id either way.

:class:`LiveMemory` computes a memory in memory (the encoder's states at a layer, through a codec's encode
and decode): what a store would hold, for tests and for small runs without a store folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retromem.data.passage import Passage
from retromem.errors import DataError, MismatchError
from retromem.read.batch import ReadPassage, text_passage
from retromem.read.codebook import codebook_shape, require_codebook, unpack_codes
from retromem.read.reader_config import ReaderSpec

_NAMED = 5


def memory_text(passage: Passage, prefix: str = "") -> str:
    """The text a memory encoder tokenises for ``passage`` (as ``Encoder.encode_passages`` does)."""
    return prefix + passage.full_text()


class PassageReader:
    """``read(ids)``: the passages ``ids`` as the reader reads them: memory tokens and decoded vectors from
    ``memory`` (anything with ``ids()``, ``gather(ids)`` giving objects with ``vectors``, ``token_ids``,
    ``spans``), or, for k = N, the passage text (``passages``) tokenised. ``passages`` also gives span answers
    their text. For a reader with a tuned pq codebook (``spec.tuned_codebook``) the memory's undecoded codes
    (``gather_codes(ids)``), unpacked to sub-codes, instead of decoded vectors; a memory coded with another
    codebook than the reader's started from is refused, and so is a memory whose tokens are not its passages'
    text as the tokenizer cuts it (a memory of another corpus, or of passages cut otherwise: the ids agree, the
    text does not), checked by :meth:`require` on a sample of the passages, before any reading is timed."""

    #: Passages :meth:`require` checks against their text (a mismatch of corpus or cut shows in every one).
    TEXT_SAMPLE = 32

    def __init__(self, spec: ReaderSpec, tokenizer: Any, passages: Mapping[str, Passage], memory: Any = None,
                 where: str | Path = "the memory", max_length: int = 256):
        self.spec = spec
        self.tokenizer = tokenizer
        self.passages = passages
        self.memory = memory
        self.where = where
        self.max_length = max_length
        self._ids = set(memory.ids()) if memory is not None else None
        self._codebook = None  # (M, nbits) where the reader decodes codes itself
        if spec.tuned_codebook and not spec.full and memory is not None:
            require_codebook(spec.memory.tuned_codebook, memory, where)
            m, nbits, _ = codebook_shape(spec.memory.codec)
            self._codebook = (m, nbits)

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ``ids`` this reader cannot read (absent from the memory, or, for k = N, from the passages)."""
        have = self._ids if not self.spec.full else self.passages
        return sorted({i for i in ids if i not in have})

    def require(self, ids: Iterable[str], what: str = "retrieved passages", path: str | Path | None = None,
                fix: str | None = None) -> None:
        """Refuse (:class:`DataError`, naming them and their count, and ``path``: the run file that names them)
        ``ids`` that cannot be read; and (:class:`MismatchError`) a memory whose tokens are not the text of the
        first :attr:`TEXT_SAMPLE` of them."""
        ids = sorted(set(ids))
        missing = self.missing(ids)
        if missing:
            where = self.where if not self.spec.full else "the knowledge source's passages"
            raise DataError(f"{len(missing)} {what} are not in {where} (e.g. {', '.join(missing[:_NAMED])})", path,
                            fix=fix or "build the memory of these passages with `retromem read memory` over the same "
                                       "run, or search the corpus the memory was built from")
        if not self.spec.full and self.memory is not None:
            sample = [i for i in ids if i in self.passages][:self.TEXT_SAMPLE]
            for i, mem in zip(sample, self.memory.gather(sample)):
                self._require_text(i, mem.token_ids, mem.spans, memory_text(self.passages[i], self.spec.passage_prefix))

    def read(self, ids: Sequence[str]) -> list[ReadPassage]:
        if self.spec.full:
            out = []
            for i in ids:
                passage = self.passages[i]
                out.append(text_passage(i, memory_text(passage, self.spec.passage_prefix), self.tokenizer,
                                        min(self.max_length, self.spec.max_passage_length), passage.page_id))
            return out
        if self._codebook is not None:
            memories = [_Memory(i, None, tokens, spans, codes)
                        for i, (codes, tokens, spans) in zip(ids, self.memory.gather_codes(list(ids)))]
        else:
            memories = self.memory.gather(list(ids))
        out = []
        for i, mem in zip(ids, memories):
            passage = self.passages.get(i)
            n = min(len(mem.token_ids), self.spec.max_passage_length)
            vectors = codes = None
            if self._codebook is not None:
                codes = unpack_codes(np.asarray(mem.codes[:n]), *self._codebook)
            else:
                vectors = np.asarray(mem.vectors[:n], dtype=np.float32)
            text = memory_text(passage, self.spec.passage_prefix) if passage is not None else None
            out.append(ReadPassage(i, np.asarray(mem.token_ids[:n]), np.asarray(mem.spans[:n]), vectors, text,
                                   passage.page_id if passage is not None else None, codes))
        return out

    def _require_text(self, passage_id: str, token_ids: np.ndarray, spans: np.ndarray, text: str) -> None:
        """Each memory token (but special ones) must be one of the text's tokens its span covers (the one a merged
        token kept), or answers would be mapped back to the wrong characters."""
        ids = self.tokenizer(text, truncation=False)["input_ids"]
        special = set(self.tokenizer.all_special_ids)
        for m, (token, (begin, end)) in enumerate(zip(np.asarray(token_ids).tolist(), np.asarray(spans).tolist())):
            if token not in special and token not in ids[begin:end]:
                raise MismatchError(f"{self.where}: the memory of passage {passage_id} is not its text's tokens (token "
                                    f"{m} is {self.tokenizer.convert_ids_to_tokens(token)!r}, the text has "
                                    f"{self.tokenizer.convert_ids_to_tokens(ids[begin:end])} there): the memory was "
                                    "built from another corpus or passage cut; build it from the passages the reader "
                                    "reads (the same --corpus, --passage-words and --passage-stride)")


class _Memory:
    def __init__(self, passage_id, vectors, token_ids, spans, codes=None):
        self.passage_id, self.vectors, self.token_ids, self.spans = passage_id, vectors, token_ids, spans
        self.codes = codes


class LiveMemory:
    """A token memory held in RAM: ``encoder``'s states at ``layer`` over ``passages``, stored through ``codec``
    (trained on them when it needs training) and decoded on ``gather``. ``info()``: (encoder, layer, codec)."""

    def __init__(self, encoder: Any, passages: Sequence[Passage], layer: int, codec: Any):
        from retromem.index.token_states import passage_layer_states

        states = passage_layer_states(encoder, list(passages), layer)
        self._fill(encoder.metadata(), [p.id for p in passages], states.states, states.token_ids, layer, codec)

    @classmethod
    def from_states(cls, encoder_meta: dict, ids: Sequence[str], states: Sequence[np.ndarray],
                    token_ids: Sequence[np.ndarray], layer: int, codec: Any, train_sample: int = 65536
                    ) -> LiveMemory:
        """A memory of states already computed (``states[i]`` [n_i, d] of passage ``ids[i]`` at ``layer``)."""
        memory = cls.__new__(cls)
        memory._fill(encoder_meta, ids, states, token_ids, layer, codec, train_sample)
        return memory

    def _fill(self, encoder_meta, ids, states, token_ids, layer, codec, train_sample: int = 65536) -> None:
        if codec.needs_training and not codec.trained:
            sample = np.concatenate([np.asarray(s, dtype=np.float32) for s in states])
            if len(sample) > train_sample:
                sample = sample[np.random.default_rng(0).choice(len(sample), train_sample, replace=False)]
            codec.train(sample)
        self.codec = codec
        self.layer = layer
        self.encoder_meta = dict(encoder_meta)
        self._codes = {}
        for pid, vectors, tokens in zip(ids, states, token_ids):
            n = len(tokens)
            spans = np.stack([np.arange(n), np.arange(1, n + 1)], axis=1).astype(np.int32)
            self._codes[pid] = (codec.encode(np.asarray(vectors, dtype=np.float32)), np.asarray(tokens), spans)

    def ids(self) -> list[str]:
        return list(self._codes)

    def gather(self, ids: Sequence[str]) -> list[_Memory]:
        return [_Memory(i, self.codec.decode(self._codes[i][0]), self._codes[i][1], self._codes[i][2]) for i in ids]

    def gather_codes(self, ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per id, ``(codes uint8 [n, code_size], token_ids [n], spans [n, 2])``, undecoded (as a store gives)."""
        return [self._codes[i] for i in ids]

    def info(self) -> tuple[dict, int, dict]:
        return self.encoder_meta, self.layer, self.codec.to_json()


def states_at_layers(encoder: Any, passages: Sequence[Passage], layers: Sequence[int], batch_size: int = 32,
                     show_progress: bool = False) -> tuple[dict[int, list[np.ndarray]], list[np.ndarray]]:
    """The states of ``passages`` at each of ``layers`` from one forward pass per batch (as
    :func:`retromem.index.token_states.passage_layer_states` computes each), as float16, with their token ids."""
    import torch
    from tqdm.auto import tqdm

    texts = [memory_text(p, encoder.passage_prefix) for p in passages]
    encoded = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_length, padding=False,
                                return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    out: dict[int, list] = {layer: [None] * len(texts) for layer in layers}
    order = np.argsort([-len(ids) for ids in encoded], kind="stable")
    with tqdm(total=len(texts), desc="memory states", disable=not show_progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = encoder.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            with torch.inference_mode(), encoder._autocast():
                hidden = encoder.model(input_ids=batch["input_ids"].to(encoder.device),
                                       attention_mask=batch["attention_mask"].to(encoder.device),
                                       output_hidden_states=True).hidden_states
            for layer in layers:
                states = hidden[layer].float().cpu().numpy()
                for j, row in enumerate(rows):
                    out[layer][row] = states[j, :len(encoded[row])].astype(np.float16)
            bar.update(len(rows))
    return out, [np.asarray(ids, dtype=np.int32) for ids in encoded]
