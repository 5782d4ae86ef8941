"""Memory reranking (GLIMMER's free access to memory): rerank a first-stage run by late interaction over the
token vectors stored in a token memory, decoded on the fly.

For a query with token states ``q_1..q_m`` (the same encoder at the memory's layer, L2-normalised) and a
passage with stored vectors ``d_1..d_n`` (decoded from any codec, L2-normalised), the MaxSim score is
``(1/m) * sum_i max_j q_i . d_j`` (ColBERT's late interaction, divided by the query length so that it is
a mean cosine in [-1, 1]). The top ``depth`` passages of each query are scored, optionally
interpolated with the first-stage score, ``maxsim + weight * first_stage``, and put first in the new
order; the first stage's passages below ``depth`` follow in their order, below every reranked one.
The weight is chosen on training queries (:mod:`retromem.eval.beir_memory`), never on test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from retromem.index.memory_store import MemoryStore, require_memory
from retromem.index.token_states import text_layer_states
from retromem.options import check_options, option
from retromem.retrieve.runfile import Run


@dataclass
class RerankConfig:
    """How a first-stage run is reranked from a token memory."""

    rerank_depth: int = option(100, min=1, help="documents of each query reranked from the memory (the rest keep "
                               "their first-stage order below them)")
    rerank_weight: float = option(0.0, min=0, help="final score = MaxSim + this x the first-stage score (0: MaxSim "
                                  "alone); choose it on training queries")

    def __post_init__(self) -> None:
        check_options(self)


class MemoryReranker:
    """Reranks runs by MaxSim between ``encoder``'s query token states and ``store``'s passage token vectors.

    The store must have been made by this encoder (its layer is the one queries are read at); anything
    else is refused (:func:`retromem.index.memory_store.require_memory`)."""

    def __init__(self, store: MemoryStore, encoder, config: RerankConfig | None = None):
        require_memory(store, encoder.metadata())
        self.store = store
        self.encoder = encoder
        self.config = config or RerankConfig()

    def query_states(self, queries: Mapping[str, str]) -> dict[str, np.ndarray]:
        """Each query's token states at the memory's layer, L2-normalised, float32 ``[m, d]``."""
        qids = list(queries)
        states = text_layer_states(self.encoder, [self.encoder.query_prefix + queries[q] for q in qids],
                                   self.store.layer, desc="query tokens")
        return {q: _normalised(s) for q, s in zip(qids, states.states)}

    def maxsim(self, run: Run, queries: Mapping[str, str], show_progress: bool = False,
               query_states: Mapping[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
        """MaxSim of each query's top ``rerank_depth`` documents of ``run`` (by first-stage score)."""
        depth = self.config.rerank_depth
        todo = [q for q in run if q in queries]
        states = query_states if query_states is not None else self.query_states({q: queries[q] for q in todo})
        out: dict[str, dict[str, float]] = {}
        for qid in tqdm(todo, desc="memory rerank", unit="query", disable=not show_progress, leave=False):
            docs = _top(run[qid], depth)
            out[qid] = dict(zip(docs, maxsim_scores(states[qid], self.store, docs)))
        return out

    def rerank(self, run: Run, queries: Mapping[str, str], show_progress: bool = False,
               query_states: Mapping[str, np.ndarray] | None = None) -> Run:
        """``run`` with each query's top ``rerank_depth`` reordered by MaxSim (+ weight x first stage)."""
        return combine(run, self.maxsim(run, queries, show_progress, query_states), self.config.rerank_weight)


def maxsim_scores(query: np.ndarray, store: MemoryStore, doc_ids: list[str]) -> list[float]:
    """MaxSim of one (normalised) query's token states against each of ``doc_ids``' memories, decoded in one batch."""
    if not doc_ids:
        return []
    memories = store.gather(doc_ids)
    lengths = np.array([len(m) for m in memories])
    if lengths.sum() == 0:
        return [0.0] * len(doc_ids)
    vectors = _normalised(np.concatenate([m.vectors for m in memories]))
    sims = query @ vectors.T  # [m, T]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nonempty = lengths > 0
    best = np.zeros((len(query), len(doc_ids)), dtype=np.float32)
    best[:, nonempty] = np.maximum.reduceat(sims, starts[nonempty], axis=1)
    return [float(s) for s in best.mean(0)]


def combine(run: Run, maxsim: Mapping[str, Mapping[str, float]], weight: float) -> Run:
    """Reranked documents first (by ``maxsim + weight * first_stage``), then the rest of the run in its order."""
    out: Run = {}
    for qid, ranking in run.items():
        scores = maxsim.get(qid)
        if not scores:
            out[qid] = dict(ranking)
            continue
        new = {doc: s + weight * ranking[doc] for doc, s in scores.items()}
        ordered = sorted(new.items(), key=lambda kv: -kv[1])
        floor = min(new.values())
        rest = [d for d in _top(ranking, len(ranking)) if d not in new]
        merged = dict(ordered)
        for i, doc in enumerate(rest):  # below every reranked document, keeping the first stage's order
            merged[doc] = floor - 1.0 - i * 1e-6
        out[qid] = merged
    return out


def brute_force_maxsim(query: np.ndarray, docs: list[np.ndarray]) -> list[float]:
    """The definition, one passage at a time (what :func:`maxsim_scores` computes in batches)."""
    q = _normalised(query)
    return [float(np.mean([max(float(np.dot(qi, dj)) for dj in _normalised(d)) for qi in q])) if len(d) else 0.0
            for d in docs]


def _top(ranking: Mapping[str, float], k: int) -> list[str]:
    return [d for d, _ in sorted(ranking.items(), key=lambda kv: -kv[1])[:k]]


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
