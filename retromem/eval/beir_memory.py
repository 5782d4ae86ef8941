"""BEIR evaluation of memory reranking: a first-stage run reranked by MaxSim over a token memory, scored; and the
interpolation weight chosen on another split's queries (SciFact: train), never on the split evaluated."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from retromem.errors import ConfigError
from retromem.eval.beir_metrics import evaluate
from retromem.retrieve.memory_rerank import MemoryReranker, combine
from retromem.retrieve.runfile import Run

#: Weights of the first-stage score tried when the weight is chosen on training queries.
WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def choose_rerank_weight(reranker: MemoryReranker, run: Run, queries: Mapping[str, str],
                         qrels: Mapping[str, Mapping[str, int]], grid: tuple[float, ...] = WEIGHT_GRID
                         ) -> tuple[float, dict[float, float]]:
    """The weight of ``grid`` whose ``maxsim + w * first_stage`` has the best nDCG@10 on these (training) queries
    (ties: the smaller weight), and the nDCG@10 of each weight tried."""
    judged = {q: queries[q] for q in run if q in queries and q in qrels}
    if not judged:
        raise ConfigError("no judged queries to choose the rerank weight on: give --rerank-weight instead")
    maxsim = reranker.maxsim({q: run[q] for q in judged}, judged)
    scores = {w: evaluate(qrels, combine({q: run[q] for q in judged}, maxsim, w), k_values=(10,)).mean["NDCG@10"]
              for w in grid}
    best = max(scores, key=lambda w: (scores[w], -w))
    return best, scores


def reranked_run_path(first_stage: str | Path, store_label: str, depth: int, weight: float) -> Path:
    """Where the reranked run of ``first_stage`` goes: beside it, named by the memory's codec, depth and weight."""
    from retromem.workdir import slug

    first_stage = Path(first_stage)
    stem = first_stage.name.removesuffix(".gz").removesuffix(".trec")
    return first_stage.with_name(f"{stem}-memory-{slug(store_label)}-d{depth}-w{weight:g}.trec")
