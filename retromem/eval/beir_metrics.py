"""BEIR retrieval metrics (NDCG@k, MAP@k, Recall@k, P@k, MRR@k) computed by pytrec_eval.

Conventions, and where they come from:

* **Metric names** are spelled as BEIR prints them: ``NDCG@10``, ``MAP@10``, ``Recall@100``,
  ``P@10``, ``MRR@10``; they are pytrec_eval's ``ndcg_cut``, ``map_cut``, ``recall``, ``P``.
* **Own id never a hit** (BEIR's ``ignore_identical_ids=True``): a document whose id equals the query
  id is removed from that query's ranking before scoring. This matters on data sets whose query
  and document ids share one namespace (SciFact uses integers for both, ArguAna and Quora contain
  the query itself in the corpus).
* **Relevance** is grade >= 1 (trec_eval's and pytrec_eval's default ``relevance_level``); judged
  zero- and negative-grade documents are kept in the qrels and count as non-relevant. NDCG uses
  the grades as gains, as trec_eval does.
* **MRR@k** is BEIR's definition: the reciprocal rank of the first relevant document among the top
  ``k``, 0 when there is none. It is computed as pytrec_eval's ``recip_rank`` over each ranking cut
  to its top ``k``, cut in trec_eval's own order (score descending, ties by doc id descending, see
  :func:`retromem.retrieve.runfile.ranked_docs`). BEIR itself sorts ties by dict insertion order,
  which is not reproducible from a run file; with no ties the two agree.
* **Which queries count**: every query with at least one judgment in the qrels. A judged query
  absent from the run, or whose ranking is empty (possibly after removing its own id), scores 0 on
  every metric and is counted in the mean (trec_eval ``-c``); their number and ids are reported.
  BEIR's MRR already divides by all qrels queries; its other metrics divide by the queries present
  in the run, so on a run that misses queries BEIR reports higher numbers than these. With a
  complete run (every dense or BM25 search) the two are the same. Queries in the run that have no
  judgments are ignored and counted.

Means are not rounded (BEIR rounds to 5 decimals when it prints).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytrec_eval

from retromem.errors import ConfigError, DataError
from retromem.retrieve.runfile import Qrels, Run, ranked_docs

logger = logging.getLogger(__name__)

DEFAULT_K_VALUES: tuple[int, ...] = (1, 3, 5, 10, 100, 1000)

# BEIR name prefix -> pytrec_eval measure family. MRR is handled on its own (see the module docstring).
_TREC_MEASURES = {"NDCG": "ndcg_cut", "MAP": "map_cut", "Recall": "recall", "P": "P"}
METRIC_FAMILIES: tuple[str, ...] = ("NDCG", "MAP", "Recall", "P", "MRR")


@dataclass
class BeirScores:
    """Scores of one run against one set of qrels.

    ``mean`` maps metric names (``"NDCG@10"``...) to the average over the ``num_queries`` judged
    queries; ``per_query`` holds the same metrics for each of them (zeros for missing queries), so
    that the mean of a ``per_query`` column equals ``mean``.
    """

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]
    k_values: tuple[int, ...]
    num_queries: int
    """Judged queries scored: every query with at least one judgment in the qrels."""
    num_missing: int
    """Judged queries with no ranking in the run (absent, or empty); each scored 0."""
    num_ignored: int
    """Queries in the run without judgments in the qrels; not scored."""
    num_identical_removed: int
    """Documents removed because their id equals the query id (0 when that rule is off)."""
    ignore_identical_ids: bool
    missing_query_ids: list[str] = field(default_factory=list)

    @property
    def metric_names(self) -> list[str]:
        return list(self.mean)

    def counts(self) -> dict[str, int]:
        """The query counts, as a plain dict for reports."""
        return {
            "num_queries": self.num_queries,
            "num_missing": self.num_missing,
            "num_ignored": self.num_ignored,
            "num_identical_removed": self.num_identical_removed,
        }


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
             k_values: Iterable[int] = DEFAULT_K_VALUES, ignore_identical_ids: bool = True) -> BeirScores:
    """Score ``run`` against ``qrels`` with BEIR's metrics and conventions (see the module docstring).

    ``qrels``: query id -> doc id -> integer grade. ``run``: query id -> doc id -> score (the order of
    the dicts does not matter; rankings are recomputed as trec_eval does). Neither is modified.
    Raises ValueError on an empty ``k_values``, a k < 1, or a grade that is not an integer.
    """
    ks = _check_k_values(k_values)
    judged = _clean_qrels(qrels)
    if not judged:
        raise DataError("the qrels hold no judgments: nothing to evaluate against",
                        fix="check the qrels file of the split")

    rankings, removed = _rankings_to_score(judged, run, ignore_identical_ids)
    missing = [qid for qid in judged if qid not in rankings]
    ignored = sum(1 for qid in run if str(qid) not in judged)
    if missing:
        logger.warning("%d of %d judged queries have no results in the run; each counts as 0",
                       len(missing), len(judged))
    if ignored:
        logger.info("%d queries of the run have no judgments and are ignored", ignored)

    trec = _trec_scores(judged, rankings, ks)
    mrr = _mrr_scores(judged, rankings, ks)
    names = [f"{family}@{k}" for family in METRIC_FAMILIES for k in ks]
    per_query: dict[str, dict[str, float]] = {}
    for qid in judged:
        if qid in rankings:
            merged = {**trec[qid], **mrr[qid]}
            per_query[qid] = {name: merged[name] for name in names}
        else:
            per_query[qid] = dict.fromkeys(names, 0.0)
    mean = {name: sum(scores[name] for scores in per_query.values()) / len(per_query) for name in names}
    return BeirScores(
        mean=mean, per_query=per_query, k_values=ks, num_queries=len(judged), num_missing=len(missing),
        num_ignored=ignored, num_identical_removed=removed, ignore_identical_ids=ignore_identical_ids,
        missing_query_ids=missing,
    )


def _check_k_values(k_values: Iterable[int]) -> tuple[int, ...]:
    ks = sorted({int(k) for k in k_values})
    if not ks:
        raise ConfigError("k_values is empty: give at least one cut-off, e.g. (10, 100)")
    if ks[0] < 1:
        raise ConfigError(f"every k must be >= 1, got {ks[0]}")
    return tuple(ks)


def _clean_qrels(qrels: Mapping[str, Mapping[str, int]]) -> Qrels:
    """Copy the qrels as pytrec_eval wants them (str -> str -> int), dropping queries with no judgment."""
    clean: Qrels = {}
    for qid, judgments in qrels.items():
        if not judgments:
            continue
        row = {}
        for docid, grade in judgments.items():
            try:
                integral = not isinstance(grade, (bool, str)) and int(grade) == grade
            except (TypeError, ValueError, OverflowError):
                integral = False
            if not integral:
                raise DataError(f"qrels grade for query {qid!r}, document {docid!r} must be an integer, got {grade!r}")
            row[str(docid)] = int(grade)
        clean[str(qid)] = row
    return clean


def _rankings_to_score(judged: Qrels, run: Mapping[str, Mapping[str, float]],
                       ignore_identical_ids: bool) -> tuple[Run, int]:
    """Judged queries' non-empty rankings (own id removed when asked), and how many ids were removed."""
    rankings: Run = {}
    removed = 0
    for qid, doc_scores in run.items():
        qid = str(qid)
        if qid not in judged:
            continue
        ranking = {str(docid): float(score) for docid, score in doc_scores.items()}
        if ignore_identical_ids and qid in ranking:
            del ranking[qid]
            removed += 1
        if ranking:
            rankings[qid] = ranking
    return rankings, removed


def _trec_scores(judged: Qrels, rankings: Run, ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    if not rankings:
        return {}
    cutoffs = ",".join(str(k) for k in ks)
    measures = {f"{measure}.{cutoffs}" for measure in _TREC_MEASURES.values()}
    raw = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(rankings)
    return {
        qid: {f"{family}@{k}": values[f"{measure}_{k}"] for family, measure in _TREC_MEASURES.items() for k in ks}
        for qid, values in raw.items()
    }


def _mrr_scores(judged: Qrels, rankings: Run, ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """MRR@k per query: pytrec_eval's recip_rank over each ranking cut to its top k in trec_eval order."""
    if not rankings:
        return {}
    evaluator = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"})
    ordered = {qid: ranked_docs(ranking) for qid, ranking in rankings.items()}
    scores: dict[str, dict[str, float]] = {qid: {} for qid in rankings}
    for k in ks:
        cut = {qid: dict(pairs[:k]) for qid, pairs in ordered.items()}
        for qid, values in evaluator.evaluate(cut).items():
            scores[qid][f"MRR@{k}"] = values["recip_rank"]
    return scores
