"""GLIMMER-style memory reranking before reading (``--rerank memory``): each question's top ``rerank_depth``
passages of the first-stage run are rescored by MaxSim between the question's token states and the passages'
stored token vectors (:class:`retromem.retrieve.memory_rerank.MemoryReranker`, over a token-memory store), and
the reader then reads the top ``passages`` of the new order; the predictions' provenance follows it too.

The memory is the reader's own (``--memory``: it holds layer N - k, in the reader's codec) or another store
of the reader's encoder (``--rerank-memory``: any layer, any codec, e.g. a binary memory). The questions are
encoded at the store's layer by the encoder the store records (loaded as ``retromem search --rerank memory``
loads it, at the precision the store records; the reranker checks its fingerprint against the store's). A full
re-encoding reader (k = N) reads no memory, so it reranks only from ``--rerank-memory``. A memory held in RAM
(:class:`retromem.read.memory.LiveMemory`, what ``eval kilt --reader`` computes when given no ``--memory``) is
reranked from through :class:`MemoryView`, as a store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retromem.device import PRECISIONS
from retromem.errors import ConfigError, DataError, MissingDataError
from retromem.read.read_options import ReadRerankOptions
from retromem.retrieve.runfile import Run, ranked_docs

log = logging.getLogger(__name__)
_NAMED = 5


@dataclass
class RerankOutcome:
    """The reranked run (every question of the first stage; the reranked ones reordered), the seconds the
    reranking took (question token states + MaxSim over the gathered memories; loading the encoder not
    included) and what was reranked from (for results' metadata)."""

    run: Run
    seconds: float
    questions: int
    info: dict[str, Any] = field(default_factory=dict)


def rerank_for_reading(options: ReadRerankOptions, spec: Any, run: Run, questions: Mapping[str, str],
                       memory: Any = None, device: str | None = None, show_progress: bool = False,
                       trust_remote_code: bool = False) -> RerankOutcome:
    """``run`` with the top ``options.rerank_depth`` passages of each of ``questions`` (id -> text) reranked by
    MaxSim over ``options.rerank_memory``, else ``memory`` (the reader's memory folder, or a memory object such
    as :class:`retromem.read.memory.LiveMemory`); ``spec``: the reader's
    :class:`retromem.read.reader_config.ReaderSpec` (whose encoder the rerank memory must have been made by)."""
    from retromem.index.encoder import Encoder, EncoderConfig
    from retromem.index.memory_store import MemoryStore, require_memory
    from retromem.retrieve.memory_rerank import MemoryReranker, RerankConfig

    if memory is not None and not options.rerank_memory and not isinstance(memory, (str, Path)):
        store, flag = MemoryView(memory), "the memory"
    else:
        path, flag = rerank_memory_path(options, spec, memory)
        if not Path(path).is_dir():
            raise MissingDataError(f"{flag} {path}: no such folder (build a token memory of the run's passages with "
                                   "`retromem read memory` or `retromem index memory`)")
        store = MemoryStore.open(path)
    if spec.memory is not None:
        require_memory(store, spec.memory.encoder, fix="rerank from a memory of the reader's encoder (`retromem read "
                       "memory` or `retromem index memory` with the reader's encoder)")
    depth = options.rerank_depth
    todo = {qid: text for qid, text in questions.items() if qid in run}
    require_passages(store, {qid: run[qid] for qid in todo}, depth, flag)
    recorded = store.meta.encoder
    # the questions at the precision the memory was made in
    encoder = Encoder(EncoderConfig(model=recorded.model_path or recorded.model, max_length=recorded.max_length,
                                    precision=recorded.precision if recorded.precision in PRECISIONS else "auto",
                                    device=device, trust_remote_code=trust_remote_code))
    reranker = MemoryReranker(store, encoder, RerankConfig(rerank_depth=depth, rerank_weight=options.rerank_weight))
    clock = time.perf_counter()
    reranked = reranker.rerank({qid: run[qid] for qid in todo}, todo, show_progress=show_progress)
    seconds = time.perf_counter() - clock
    log.info("reranked the top %d passages of %d questions from %s (layer %d, %s) in %.2fs", depth, len(todo),
             store.path, store.layer, store.codec.label, seconds)
    info = {"memory": str(store.path), "layer": store.layer, "codec": store.codec.label, "depth": depth,
            "weight": options.rerank_weight, "seconds": seconds}
    return RerankOutcome({**run, **reranked}, seconds, len(todo), info)


class MemoryView:
    """A memory object (``ids()``, ``gather(ids)``, ``info()`` and ``codec``, as
    :class:`retromem.read.memory.LiveMemory`) seen as the store :class:`MemoryReranker` reads: ``meta`` (its
    encoder), ``path`` (a name for messages), ``layer``, ``codec``, and ``gather`` giving ``PassageMemory``."""

    def __init__(self, memory: Any, name: str = "the memory computed for the retrieved passages"):
        from retromem.artifacts import ArtifactMeta, EncoderInfo

        encoder, layer, codec = memory.info()
        self.memory = memory
        self.path = name
        self.layer = int(layer)
        self.codec = memory.codec
        self.meta = ArtifactMeta(kind="token_memories", encoder=EncoderInfo.from_dict(encoder),
                                 details={"layer": self.layer, "codec": dict(codec)})

    def ids(self) -> list[str]:
        return list(self.memory.ids())

    def gather(self, ids: Any) -> list[Any]:
        from retromem.index.memory_store import PassageMemory

        return [PassageMemory(m.passage_id, m.vectors, m.token_ids, m.spans) for m in self.memory.gather(list(ids))]


def rerank_memory_path(options: ReadRerankOptions, spec: Any, memory: str | Path | None) -> tuple[Path, str]:
    """The memory folder to rerank from, and the flag that named it: ``--rerank-memory``, else the reader's
    ``--memory``; a full re-encoding reader, or a reader over a memory with no folder, needs ``--rerank-memory``."""
    if options.rerank_memory:
        return Path(options.rerank_memory), "--rerank-memory"
    if spec.full:
        raise ConfigError(f"the reader re-encodes the passage text (k = {spec.live_layers} = N) and reads no token "
                          "memory to rerank from: give --rerank-memory DIR (a token memory of the run's passages by "
                          "the reader's encoder, from `retromem index memory` or `retromem read memory`)")
    if not memory:
        raise ConfigError("--rerank memory reranks from a token memory folder: give --memory (the reader's memory, "
                          "holding the top --rerank-depth passages of each question) or --rerank-memory DIR")
    return Path(memory), "--memory"


def require_passages(store: Any, run: Run, depth: int, flag: str) -> None:
    """Refuse (:class:`DataError`, counted, the first named) passages among the top ``depth`` of ``run`` that
    the store does not hold."""
    have = set(store.ids())
    missing = sorted({doc for ranking in run.values() for doc, _ in ranked_docs(ranking, depth)} - have)
    if missing:
        raise DataError(f"{len(missing)} passages to rerank are not in {flag} {store.path} (e.g. "
                        f"{', '.join(missing[:_NAMED])})", None,
                        fix=f"build the memory of the top --rerank-depth {depth} passages of each question "
                            f"(`retromem read memory --passages {depth}` over the same run), or rerank fewer")
