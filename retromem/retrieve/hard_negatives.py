"""Hard-negative mining as a function over any :class:`retromem.retrieve.searcher.Searcher`.

As in sentence-transformers' ``util.mine_hard_negatives``, mining is a search: each query's ranking
(:func:`mine_candidates`, by a dense searcher, BM25, or a fusion of both) with the documents it must
never return removed (its positives, and the query's own twin in the corpus, see :func:`never_negatives`),
the first ``skip`` of the rest passed over (the likeliest false negatives), and ranks up to ``top_k`` kept.
:func:`pick_negatives` then takes a pair's negatives from them: the highest ranked or a seeded random
sample, leaving out, with ``max_score_ratio``, candidates that score above that share of the pair's
positive (NV-Retriever's "TopK-PercPos" false-negative filter). The positives' scores come from a
:class:`PositiveScorer` when one is given (a dense index scores any document), else from the ranking
itself (a positive ranked beyond the search depth then has no score, and the ratio does not apply to it).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from retromem.data.passage import Passage
from retromem.retrieve.searcher import Searcher

SAMPLINGS = ("top", "random")


@dataclass
class MiningConfig:
    """How hard negatives are picked from a ranking (see the module docstring)."""

    negatives: int = 1
    top_k: int = 30
    skip: int = 0
    sampling: str = "top"
    max_score_ratio: float | None = None
    seed: int = 42


@dataclass
class Candidates:
    """A query's mined negatives: ranked doc ids (excluded documents removed, ranks [skip, top_k)), their scores,
    and the scores of the excluded documents that have one (the pair's positive's among them)."""

    doc_ids: list[str]
    scores: list[float]
    positive_scores: dict[str, float]


class PositiveScorer(Protocol):
    def score(self, queries: Mapping[str, str], docs: Mapping[str, Iterable[str]]) -> dict[str, dict[str, float]]:
        """The score of each of ``docs[qid]`` for query ``qid``, as the searcher would give it."""
        ...


def mine_candidates(searcher: Searcher, queries: Mapping[str, str], exclude: Mapping[str, Iterable[str]],
                    config: MiningConfig, scorer: PositiveScorer | None = None,
                    show_progress: bool = False) -> dict[str, Candidates]:
    """Each query's :class:`Candidates`: ``searcher``'s ranking with ``exclude[qid]`` removed, ranks
    ``[config.skip, config.top_k)`` of what is left, and the excluded documents' scores (by ``scorer``, or the
    ranking's own where it holds them)."""
    excluded = {qid: set(exclude[qid]) for qid in queries}
    depth = config.top_k + max((len(docs) for docs in excluded.values()), default=0)
    run = searcher.search(dict(queries), k=depth, show_progress=show_progress)
    scored = scorer.score(queries, excluded) if scorer is not None else {}
    result = {}
    for qid in queries:
        # best first, ties in the searcher's own order (a dense search's is FAISS's, as before)
        ranking = sorted(run.get(qid, {}).items(), key=lambda item: -item[1])
        kept = [(doc, score) for doc, score in ranking if doc not in excluded[qid]][config.skip:config.top_k]
        positive_scores = scored.get(qid) if scorer is not None else {
            doc: score for doc, score in ranking if doc in excluded[qid]}
        result[qid] = Candidates([d for d, _ in kept], [s for _, s in kept], dict(positive_scores or {}))
    return result


def pick_negatives(candidates: Candidates, positive: str, config: MiningConfig, rng: random.Random,
                   count: int | None = None) -> list[str] | None:
    """``count`` (default ``config.negatives``) negatives for the pair (query, ``positive``), or ``None`` if too few.

    ``top`` takes the highest-ranked candidates; ``random`` samples uniformly among them. With
    ``max_score_ratio`` candidates scoring above ``ratio * score(query, positive)`` are left out.
    """
    count = config.negatives if count is None else count
    eligible = candidates.doc_ids
    if config.max_score_ratio is not None and positive in candidates.positive_scores:
        limit = config.max_score_ratio * candidates.positive_scores[positive]
        eligible = [d for d, s in zip(candidates.doc_ids, candidates.scores) if s <= limit]
    if len(eligible) < count:
        return None
    if config.sampling == "random":
        picked = set(rng.sample(range(len(eligible)), count))
        return [d for i, d in enumerate(eligible) if i in picked]
    return list(eligible[:count])


def never_negatives(queries: Mapping[str, str], positives: Mapping[str, Iterable[str]],
                    passages: Callable[[], Iterator[Passage]]) -> dict[str, set[str]]:
    """Per query id, the documents mining must not return as its negatives.

    They are the positives of every query with the same text (SciFact train holds one claim under
    several ids, each judged against some of its documents) and the query's own twin in the corpus:
    a document with the query's id (BEIR's "identical ids", as in Quora, ArguAna, CQADupStack) or with
    its text (compared without case and spacing; ``passages()`` is streamed once for it).
    """
    by_text: dict[str, set[str]] = {}
    for qid, text in queries.items():
        by_text.setdefault(_normalized(text), set()).update(positives.get(qid, ()))
    twins: dict[str, set[str]] = {}
    for passage in passages():
        for text in {_normalized(passage.text), _normalized(passage.full_text())}:
            if text in by_text:
                twins.setdefault(text, set()).add(passage.id)
    return {qid: by_text[_normalized(text)] | twins.get(_normalized(text), set()) | {qid}
            for qid, text in queries.items()}


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())
