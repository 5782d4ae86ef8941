"""Fusion of ranked runs: reciprocal rank fusion and normalised score interpolation, as plain functions over
runs (so TREC files of any system fuse too), and :class:`HybridSearcher`, two searchers fused behind the
:class:`~retromem.retrieve.searcher.Searcher` interface.

- :func:`rrf`: ``score(d) = sum over runs of 1 / (k + rank(d))`` with ``k = 60`` (Cormack et al. 2009), ranks
  from 1 in each run's order (:func:`retromem.retrieve.runfile.ranked_docs`: score descending, ties by doc id
  as trec_eval breaks them); a document absent from a run adds nothing.
- :func:`interpolate`: each run's scores normalised per query (``minmax`` to [0, 1], or ``zscore``), then
  ``alpha * first + (1 - alpha) * second``; a document absent from a run takes that run's lowest normalised score
  of the query (0 for min-max), so it is neither rewarded nor dropped.

Both return each query's top ``k``. With ``known`` (the corpus's ids), documents a run holds that the corpus does
not are dropped and counted (:class:`FusionReport`) instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from retromem.errors import ConfigError
from retromem.retrieve.runfile import Run, ranked_docs
from retromem.retrieve.searcher import Searcher

METHODS = ("rrf", "interpolate")
NORMALIZATIONS = ("minmax", "zscore")
RRF_K = 60


@dataclass
class FusionReport:
    """What fusing dropped: per run, how many (query, document) pairs named a document not in ``known``."""

    unknown: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return sum(self.unknown)


def rrf(runs: Sequence[Mapping[str, Mapping[str, float]]], k: int = 1000, rrf_k: int = RRF_K,
        known: Collection[str] | None = None, report: FusionReport | None = None) -> Run:
    """Reciprocal rank fusion of ``runs``; each query's top ``k`` (see the module docstring)."""
    _check(runs, k)
    if rrf_k < 0:
        raise ConfigError(f"the RRF constant (--rrf-k) must be >= 0, got {rrf_k}")
    runs = _known_only(runs, known, report)
    fused: Run = {}
    for qid in _query_ids(runs):
        scores: dict[str, float] = {}
        for run in runs:
            for rank, (doc, _) in enumerate(ranked_docs(run.get(qid, {})), start=1):
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (rrf_k + rank)
        fused[qid] = dict(ranked_docs(scores, k))
    return fused


def interpolate(runs: Sequence[Mapping[str, Mapping[str, float]]], alpha: float | Sequence[float] = 0.5,
                k: int = 1000, normalization: str = "minmax", known: Collection[str] | None = None,
                report: FusionReport | None = None) -> Run:
    """Normalised score interpolation; ``alpha`` weighs the first of two runs (``1 - alpha`` the second), or is a
    list of one weight per run. Each query's top ``k`` (see the module docstring)."""
    _check(runs, k)
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization (--normalization) must be one of {', '.join(NORMALIZATIONS)}, "
                          f"got {normalization!r}")
    weights = _weights(alpha, len(runs))
    runs = _known_only(runs, known, report)
    fused: Run = {}
    for qid in _query_ids(runs):
        normalised = [_normalise(run.get(qid, {}), normalization) for run in runs]
        docs = {doc for scores in normalised for doc in scores}
        floors = [min(scores.values(), default=0.0) for scores in normalised]
        fused[qid] = dict(ranked_docs({doc: sum(w * scores.get(doc, floor)
                                                for w, scores, floor in zip(weights, normalised, floors))
                                       for doc in docs}, k))
    return fused


def fuse(runs: Sequence[Mapping[str, Mapping[str, float]]], method: str = "rrf", k: int = 1000,
         alpha: float | Sequence[float] = 0.5, normalization: str = "minmax", rrf_k: int = RRF_K,
         known: Collection[str] | None = None, report: FusionReport | None = None) -> Run:
    """:func:`rrf` or :func:`interpolate` by name."""
    if method == "rrf":
        return rrf(runs, k=k, rrf_k=rrf_k, known=known, report=report)
    if method == "interpolate":
        return interpolate(runs, alpha=alpha, k=k, normalization=normalization, known=known, report=report)
    raise ConfigError(f"fusion method (--fusion) must be one of {', '.join(METHODS)}, got {method!r}")


class HybridSearcher:
    """Two searchers (any :class:`Searcher`: BM25, dense...) fused: each searches ``depth`` documents per query,
    and the runs are fused by ``method`` (``rrf``, or ``interpolate`` with ``alpha`` weighing the first)."""

    def __init__(self, first: Searcher, second: Searcher, method: str = "rrf", alpha: float = 0.5,
                 normalization: str = "minmax", rrf_k: int = RRF_K, depth: int = 1000):
        if method not in METHODS:
            raise ConfigError(f"fusion method (--fusion) must be one of {', '.join(METHODS)}, got {method!r}")
        if depth < 1:
            raise ConfigError(f"the fusion depth (--fusion-depth) must be >= 1, got {depth}")
        _weights(alpha, 2)
        self.searchers = (first, second)
        self.method, self.alpha, self.normalization, self.rrf_k, self.depth = method, alpha, normalization, rrf_k, depth

    def search(self, queries: dict[str, str], k: int = 100, show_progress: bool = False) -> Run:
        """The top ``k`` of each query of the fused ranking (each searcher searched to ``max(k, depth)``)."""
        depth = max(k, self.depth)
        runs = [searcher.search(queries, k=depth, show_progress=show_progress) for searcher in self.searchers]
        return self.fuse(runs, k)

    def fuse(self, runs: Sequence[Run], k: int) -> Run:
        return fuse(runs, self.method, k=k, alpha=self.alpha, normalization=self.normalization, rrf_k=self.rrf_k)


def _check(runs: Sequence, k: int) -> None:
    if not runs:
        raise ConfigError("fusion needs at least one run")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")


def _weights(alpha: float | Sequence[float], count: int) -> list[float]:
    if isinstance(alpha, (int, float)):
        if count != 2:
            raise ConfigError(f"one alpha weighs two runs; give one weight per run for {count} runs")
        weights = [float(alpha), 1.0 - float(alpha)]
    else:
        weights = [float(a) for a in alpha]
        if len(weights) != count:
            raise ConfigError(f"give one weight per run: {len(weights)} weights for {count} runs")
    if any(not math.isfinite(w) or w < 0 or w > 1 for w in weights):
        raise ConfigError(f"interpolation weights (--alpha) must be in [0, 1], got {alpha}")
    return weights


def _query_ids(runs: Sequence[Mapping[str, Mapping[str, float]]]) -> list[str]:
    """Query ids in first-seen order over the runs."""
    return list(dict.fromkeys(qid for run in runs for qid in run))


def _known_only(runs, known: Collection[str] | None, report: FusionReport | None):
    if known is None:
        return runs
    kept = []
    for run in runs:
        dropped = 0
        filtered = {}
        for qid, docs in run.items():
            filtered[qid] = {d: s for d, s in docs.items() if d in known}
            missing = len(docs) - len(filtered[qid])
            if missing and report is not None and len(report.examples) < 5:
                report.examples.extend(d for d in docs if d not in known)
                del report.examples[5:]
            dropped += missing
        if report is not None:
            report.unknown.append(dropped)
        kept.append(filtered)
    return kept


def _normalise(scores: Mapping[str, float], normalization: str) -> dict[str, float]:
    if not scores:
        return {}
    values = [float(s) for s in scores.values()]
    if normalization == "minmax":
        low, high = min(values), max(values)
        span = high - low
        return {d: (float(s) - low) / span if span > 0 else 1.0 for d, s in scores.items()}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {d: (float(s) - mean) / std if std > 0 else 0.0 for d, s in scores.items()}
